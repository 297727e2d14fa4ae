"""The kopf side: thin handlers that turn watch events into work-queue keys, and the workers
that run one reconcile pass per key: read, decide (`reconcile`), write status, act, tell.

Why a work queue rather than per-object kopf handlers: a job's pass depends on its pods,
which are other objects with their own kopf workers; funnelling job and pod events into one
key per job serialises the passes of a job (never two at once, none lost) while different
jobs proceed in parallel. Each pass reads the job and lists its pods afresh (consistent
reads), so a replayed or missed event, or a restart of the operator, changes nothing.

kopf keeps no per-object state here (only event handlers are registered); its storages are
still pointed at annotations so nothing ever lands in the pruned `status.kopf`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import datetime as dt
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf

from kubetrain.api.constants import GROUP, PLURAL, VERSION
from kubetrain.controller import credentials, kueue
from kubetrain.controller import names as n
from kubetrain.controller.builders import GANG_SCHEDULERS, gang_mode
from kubetrain.controller.conditions import rfc3339
from kubetrain.controller.events import EventRecorder, Pending
from kubetrain.controller.informer import Informer, wait_all
from kubetrain.controller.kubeio import ApiError, Kube, load_client, merge_patch
from kubetrain.controller.memory import IdleTrimmer
from kubetrain.controller.metrics import OperatorMetrics
from kubetrain.controller.observed import Observed, PodView, owned_by, pod_view
from kubetrain.controller.progress import ProgressPoller, target_of
from kubetrain.controller.ratelimit import TokenBucket
from kubetrain.controller.reconcile import (
    Create,
    Decision,
    DeleteChild,
    DeleteJob,
    DeletePod,
    Event,
    Job,
    PatchWorkloadStatus,
    Settings,
    Update,
    reconcile,
    spec_problems,
    workers_created_event,
)
from kubetrain.controller.workqueue import QueueClosed, RetryDelays, WorkQueue

log = logging.getLogger("kubetrain.operator")
Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")
API_THREADS = 32


@dataclass
class Runtime:
    """Everything the handlers share; configured by `kubetrain operator` before kopf starts."""

    settings: Settings = field(default_factory=Settings)
    concurrency: int = 4
    kubeconfig: str | None = None
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    kube: Kube | None = None
    queue: WorkQueue[Key] | None = None
    retries: RetryDelays[Key] = field(default_factory=RetryDelays)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    last_pass: float = field(default_factory=time.monotonic)
    # Test-only fault injection: a pause before every action, so that the cluster tests can
    # kill the operator in the middle of a pass rather than between passes.
    action_delay: float = 0.0
    # API calls block (the kubernetes client is synchronous): a pool of their own, sized for a
    # 64-worker gang's creates in parallel rather than asyncio's default of CPUs + 4.
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(API_THREADS, thread_name_prefix="kube-api"))
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
    progress_seconds: float = 10.0
    poller: ProgressPoller[Key] | None = None
    # Client-side rate limit of API calls (token bucket; qps <= 0: none).
    qps: float = 200.0
    burst: int = 400
    recorder: EventRecorder | None = None
    trimmer: IdleTrimmer | None = None
    # Validation results per job and generation (the spec changes only with the generation).
    problems: dict[Key, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # The jobs as last seen (watch events and our own status writes): a pass reads its job
    # here, not with a GET. Bounded by the live jobs (a DELETED event drops the entry).
    jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # Pods deleted by someone else, as last seen, until a pass has named them (WorkerLost).
    gone: dict[Key, dict[str, PodView]] = field(default_factory=dict)
    own_deletes: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    # Namespaces served (None: all); the children's list-and-watch caches, by kind.
    namespaces: tuple[str, ...] | None = None
    informers: dict[str, list[Informer]] = field(default_factory=dict)


RUNTIME = Runtime()


async def blocking(rt: Runtime, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(rt.executor, fn, *args)


# ------------------------------------------------------------------------------ validation


_VALIDATION = threading.Lock()  # validation runs in the API threads; its checks are not ours to trust


@functools.lru_cache(maxsize=64)
def _problems(document: str) -> tuple[str, ...]:
    with _VALIDATION:
        return spec_problems(json.loads(document))


def problems_of(obj: dict[str, Any]) -> tuple[str, ...]:
    """Validation depends on the spec alone: cached by it (many jobs share a spec, and a
    job's spec changes only with its generation)."""
    document = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": {},
                "spec": obj.get("spec") or {}}
    return _problems(json.dumps(document, sort_keys=True))


# ------------------------------------------------------------------------------------- kopf


@kopf.on.login()
def login(logger: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's credentials: the same as the operator's own calls (credentials.py), read again at
    each login (kopf logs in again on 401: a rotated ServiceAccount token is picked up)."""
    try:
        creds = credentials.load(RUNTIME.kubeconfig)
    except credentials.Unsupported:
        return kopf.login_via_client(logger=logger, **kwargs)
    return kopf.ConnectionInfo(
        server=creds.server, ca_path=creds.ca_file, insecure=creds.insecure, token=creds.bearer(),
        certificate_path=creds.cert_file, private_key_path=creds.key_file, default_namespace=creds.namespace,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # The CRD is installed with the operator: no need to watch CRDs or namespaces (and no RBAC).
    settings.scanning.disabled = True
    # Decisions are posted as Events by the reconciler itself (kubeio.post_event); kopf's own
    # messages stay in the log rather than cluttering `kubectl describe`.
    settings.posting.enabled = False
    # Watches reconnect now and then even when the server keeps them open (lost-event insurance).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330

    rt = RUNTIME
    rt.kube = Kube(load_client(rt.kubeconfig, pool=API_THREADS), TokenBucket(rt.qps, rt.burst))
    rt.recorder = EventRecorder(functools.partial(_post_event, rt))
    rt.recorder.start()
    rt.trimmer = IdleTrimmer(lambda: rt.last_pass)
    rt.trimmer.start()
    # Warm the validator (imports, the DeepSpeed mapping) before the first job waits on it.
    await blocking(rt, problems_of, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "spec": {}})
    rt.queue = WorkQueue()
    _start_informers(rt, asyncio.get_running_loop())
    rt.poller = ProgressPoller(rt.progress_seconds, on_reading=rt.queue.add, clock=rt.clock)
    rt.poller.start()
    rt.workers = [asyncio.create_task(_worker(rt), name=f"reconcile-worker-{i}") for i in range(rt.concurrency)]
    log.info("reconcile workers started", extra={"workers": rt.concurrency})


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Graceful shutdown: no new passes; passes in flight finish (they are short)."""
    rt = RUNTIME
    if rt.poller is not None:
        await rt.poller.stop()
    if rt.queue is not None:
        rt.queue.close()
    if rt.workers:
        _done, still = await asyncio.wait(rt.workers, timeout=20)
        for task in still:
            task.cancel()
    if rt.recorder is not None:
        await rt.recorder.stop()
    if rt.trimmer is not None:
        rt.trimmer.stop()
    for informers in rt.informers.values():
        for informer in informers:
            informer.stop()
    rt.executor.shutdown(wait=False, cancel_futures=True)
    log.info("reconcile workers stopped")


@kopf.on.probe(id="reconciler")
def probe(**_: Any) -> dict[str, Any]:
    """Liveness: the workers are alive. (Idle is fine: a quiet cluster has no passes.)"""
    rt = RUNTIME
    dead = [t.get_name() for t in rt.workers if t.done()]
    if dead and rt.queue is not None and not rt.queue.closed:
        raise RuntimeError(f"reconcile workers died: {dead}")
    return {"queued": len(rt.queue or ()), "secondsSinceLastPass": round(time.monotonic() - rt.last_pass, 1)}


MAX_GONE = 256  # per job: a bound on remembered deleted pods, whatever happens
MAX_OWN_DELETES = 8192


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def cache_job(rt: Runtime, key: Key, obj: dict[str, Any]) -> None:
    """Keep the newest version of a job (a watch event may trail our own status write)."""
    cached = rt.jobs.get(key)
    if cached is None or _rv(obj) >= _rv(cached) or (cached.get("metadata") or {}).get("uid") != (
            obj.get("metadata") or {}).get("uid"):
        rt.jobs[key] = obj


@kopf.on.event(GROUP, VERSION, PLURAL)
def job_event(type: str, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    rt = RUNTIME
    if rt.queue is None or namespace is None:
        return
    key = (namespace, name)
    if type == "DELETED":
        rt.jobs.pop(key, None)
        rt.gone.pop(key, None)
        rt.problems.pop(key, None)
        if rt.recorder is not None:
            rt.recorder.forget(str(body.metadata.get("uid", "")))
        rt.queue.forget(key)
        rt.retries.reset(key)
        rt.metrics.job_phase(key, None)
        if rt.poller is not None:
            rt.poller.forget(key)
        return
    cache_job(rt, key, copy.deepcopy(dict(body)))
    rt.queue.add(key)


CHILD_PATHS = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}
# Watched too where the API server serves Kueue: the Workloads of queued jobs.
KUEUE_PATHS = {"Workload": (f"/apis/{kueue.API_VERSION}", kueue.PLURAL)}


def _paths(rt: Runtime) -> dict[str, tuple[str, str]]:
    """kind -> (API prefix, plural) of every watched child kind."""
    paths = {kind: ("/api/v1", plural) for kind, plural in CHILD_PATHS.items()}
    assert rt.kube is not None
    if rt.kube.served(kueue.API_VERSION):
        paths.update(KUEUE_PATHS)
    return paths


def _start_informers(rt: Runtime, loop: asyncio.AbstractEventLoop) -> None:
    """One list-and-watch cache per child kind (and per namespace, unless all are served),
    selecting kubetrain's objects by label on the server."""
    assert rt.kube is not None
    for kind, (prefix, plural) in _paths(rt).items():
        scopes = [f"{prefix}/namespaces/{ns}" for ns in rt.namespaces] if rt.namespaces else [prefix]

        def changed(type_: str, obj: dict[str, Any], kind: str = kind) -> None:
            loop.call_soon_threadsafe(child_event, rt, kind, type_, obj)

        rt.informers[kind] = [Informer(rt.kube, f"{scope}/{plural}", n.LABEL_JOB, changed, n.LABEL_JOB)
                              for scope in scopes]
        for informer in rt.informers[kind]:
            informer.start()


def _owner(obj: dict[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "TrainingJob" and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


def child_event(rt: Runtime, kind: str, type_: str, obj: dict[str, Any]) -> None:
    """A change of a child (from its informer): a pass for its job; a pod deleted by someone
    else is remembered until a pass has named the loss."""
    owner = _owner(obj)
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if rt.queue is None or owner is None or not namespace:
        return
    key = (str(namespace), owner)
    if kind == "Pod" and type_ == "DELETED":
        job = rt.jobs.get(key)
        live = job is not None and not (job.get("metadata") or {}).get("deletionTimestamp")
        if live and f"{namespace}/{name}" not in rt.own_deletes:
            gone = rt.gone.setdefault(key, {})
            if len(gone) < MAX_GONE:
                gone[str(name)] = pod_view(obj)
    rt.queue.add(key)


def _children(rt: Runtime, kind: str, namespace: str, job: str, uid: str) -> list[dict[str, Any]]:
    label = n.job_label(job)
    return [o for informer in rt.informers.get(kind, ()) for o in informer.get(namespace, label) if owned_by(o, uid)]


def _observe(rt: Runtime, obj: dict[str, Any] | None) -> None:
    """Our own write's answer goes into the cache at once (the watch confirms it later)."""
    if not obj or obj.get("kind") not in rt.informers:
        return
    prefix, plural = {**{k: ("/api/v1", p) for k, p in CHILD_PATHS.items()}, **KUEUE_PATHS}[str(obj["kind"])]
    namespace = (obj.get("metadata") or {}).get("namespace")
    scopes = (f"{prefix}/{plural}", f"{prefix}/namespaces/{namespace}/{plural}")
    for informer in rt.informers[str(obj["kind"])]:
        if informer.path in scopes:
            informer.observe(obj)


# ------------------------------------------------------------------------------------ passes


async def _worker(rt: Runtime) -> None:
    assert rt.queue is not None
    while True:
        try:
            key = await rt.queue.get()
        except QueueClosed:
            return
        try:
            requeue = await reconcile_key(rt, key)
        except ApiError as e:
            if e.status == 409:
                rt.jobs.pop(key, None)  # our copy of the job is stale: read it afresh
            requeue = 0.0 if e.status == 409 else rt.retries.next(key)
            if e.status != 409:
                rt.metrics.reconcile_errors.inc()
                log.warning("reconcile of %s/%s failed: %s; retrying in %.1fs", *key, e, requeue)
        except Exception:
            requeue = rt.retries.next(key)
            rt.metrics.reconcile_errors.inc()
            log.exception("reconcile of %s/%s failed; retrying in %.1fs", *key, requeue)
        else:
            rt.retries.reset(key)
        finally:
            rt.queue.done(key)
            rt.metrics.queue_depth.set(len(rt.queue))
        if requeue is not None:
            rt.queue.add_after(key, requeue)


async def reconcile_key(rt: Runtime, key: Key) -> float | None:
    """One pass for one job. Returns seconds until the next pass is due (None: job gone)."""
    assert rt.kube is not None
    kube, (namespace, name) = rt.kube, key
    started = time.perf_counter()
    obj = rt.jobs.get(key)
    if obj is None:  # not seen yet (or stale after a conflict): read it
        obj = await blocking(rt, kube.get_job, namespace, name)
        if obj is not None:
            cache_job(rt, key, obj)
    if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
        rt.metrics.job_phase(key, None)
        return None  # deletion: owner references take the children with it

    meta = obj.get("metadata") or {}
    version = f"{meta.get('uid')}/{meta.get('generation')}"  # a namesake re-created is another job
    known = rt.problems.get(key)
    if known is None or known[0] != version:
        known = (version, await blocking(rt, problems_of, obj))
        rt.problems[key] = known
    job = Job.from_object(obj, known[1])
    every = [i for informers in rt.informers.values() for i in informers]
    # A partial cache could hide existing workers: wait for the first lists.
    if not all(i.synced.is_set() for i in every) and not await blocking(rt, wait_all, every, 30.0):
        raise RuntimeError("the children's caches have not synced within 30 s")
    pods = _children(rt, "Pod", namespace, name, job.uid)
    service = next((o for o in _children(rt, "Service", namespace, name, job.uid)
                    if o["metadata"]["name"] == n.service_name(name)), None)
    config_map = next((o for o in _children(rt, "ConfigMap", namespace, name, job.uid)
                       if o["metadata"]["name"] == n.config_map_name(name)), None)
    cm_hash = _hash_of(config_map)
    group_hash = None
    if job.spec is not None and gang_mode(job.spec) in GANG_SCHEDULERS:
        api_version = GANG_SCHEDULERS[gang_mode(job.spec)][0]
        group_hash = _hash_of(await blocking(rt, kube.get, "PodGroup", namespace, n.pod_group_name(name), api_version))
    reading = rt.poller.readings.get(key) if rt.poller is not None else None
    gone = dict(rt.gone.get(key) or {})
    queue = await blocking(rt, _queue_state, rt, job) if job.queue is not None else None
    observed = Observed(pods=tuple(pod_view(p) for p in pods), service=service is not None,
                        config_map_hash=cm_hash, pod_group_hash=group_hash, progress=reading,
                        gone=tuple(gone.values()), queue=queue)
    decision = reconcile(job, observed, rt.clock(), rt.settings)

    # Record first, act second: a crash in between replays the same decision, never a different one.
    old_status = obj.get("status") or {}
    new_status = decision.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    if new_status != old_status:
        patch = merge_patch(old_status, new_status)
        written = await blocking(rt, kube.patch_job_status, namespace, name, obj["metadata"]["resourceVersion"],
                                 patch)
        cache_job(rt, key, written)
        before = (old_status.get("restarts") or {})
        rt.metrics.count_restarts(before, new_status.get("restarts") or {})

    events = list(decision.events) + await _act(rt, job, decision)
    _tell(rt, obj, events)
    if gone:  # named by this pass (or never to be: the job moved on)
        left = rt.gone.get(key) or {}
        for pod_name in gone:
            left.pop(pod_name, None)
        if not left:
            rt.gone.pop(key, None)

    rt.metrics.job_status(key, decision.status)
    if rt.poller is not None:
        training = decision.status.phase in ("Running", "Restarting")
        gen = decision.status.restart_generation or 0
        rt.poller.set_target(key, target_of(pods, gen) if training else None)
    rt.metrics.reconcile_seconds.observe(time.perf_counter() - started)
    rt.last_pass = time.monotonic()
    due = decision.requeue_after
    return rt.settings.resync_seconds if due is None else min(due, rt.settings.resync_seconds)


def _queue_state(rt: Runtime, job: Job) -> kueue.QueueState:
    """Kueue's side of a queued job: its Workload (from the watch cache), the LocalQueue's
    ClusterQueue, the admitted flavors' placement, the priority class' value."""
    kube = rt.kube
    assert kube is not None and job.queue is not None
    name = kueue.workload_name(job.ref)
    cached = [o for o in _children(rt, "Workload", job.namespace, job.name, job.uid) if o["metadata"]["name"] == name]
    if "Workload" not in rt.informers:  # Kueue's API is not served
        return kueue.QueueState(None, None)
    wl = kueue.view(cached[0]) if cached else None
    local = kube.get("LocalQueue", job.namespace, job.queue, kueue.API_VERSION)
    cluster_queue = str((local.get("spec") or {}).get("clusterQueue", "")) or None if local else None
    if wl is not None and wl.admitted and wl.flavors:
        flavors = [kube.get_cluster_scoped(kueue.API_VERSION, "resourceflavors", f) for f in wl.flavors]
        wl = dataclasses.replace(wl, placement=kueue.placement([f for f in flavors if f is not None]))
    priority = None
    pc = job.spec.workers.priority_class_name if job.spec is not None else None
    if wl is None and pc:  # needed only to create the Workload
        found = kube.get_cluster_scoped("scheduling.k8s.io/v1", "priorityclasses", pc)
        priority = int(found["value"]) if found is not None and "value" in found else None
    return kueue.QueueState(wl, cluster_queue, priority)


def _hash_of(child: dict[str, Any] | None) -> str | None:
    """The spec-hash annotation of a child ("" if it has none), None if there is no child."""
    if child is None:
        return None
    return str(((child.get("metadata") or {}).get("annotations") or {}).get(n.ANNOTATION_SPEC_HASH, ""))


def _tell(rt: Runtime, obj: dict[str, Any], events: list[Event]) -> None:
    """Log the pass's Events and hand them to the recorder, which posts them off the critical
    path (aggregated); an Event that cannot be posted is logged, never retried: the decision
    it reports is already in the status."""
    meta = obj["metadata"]
    now = rfc3339(rt.clock())
    involved = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta}
    for ev in events:
        log.info("%s/%s %s: %s", meta["namespace"], meta["name"], ev.reason, ev.message,
                 extra={"job": f"{meta['namespace']}/{meta['name']}", "reason": ev.reason, "type": ev.type})
        if rt.recorder is not None:
            rt.recorder.record(involved, ev.type, ev.reason, ev.message, now)


async def _post_event(rt: Runtime, item: Pending, again: tuple[str, str, int] | None) -> tuple[str, str]:
    assert rt.kube is not None
    if again is None:
        return await blocking(rt, rt.kube.post_event, item.obj, item.type, item.reason, item.message, item.now)
    namespace, name, count = again
    await blocking(rt, rt.kube.count_event, namespace, name, count, item.now)
    return namespace, name


async def _act(rt: Runtime, job: Job, decision: Decision) -> list[Event]:
    """Execute the actions (in parallel per kind); return the Events of those that took effect."""
    assert rt.kube is not None
    kube = rt.kube
    events: list[Event] = []

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        if rt.action_delay:
            await asyncio.sleep(rt.action_delay)
        return await blocking(rt, fn, *args)

    async def each(fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        if rt.action_delay:  # one at a time, so that a kill lands between two of them
            return [await run(fn, *a) for a in args]
        return list(await asyncio.gather(*(run(fn, *a) for a in args)))

    for patch in [a for a in decision.actions if isinstance(a, PatchWorkloadStatus)]:
        try:
            await run(kube.patch_status, kueue.KIND, job.namespace, patch.name, kueue.API_VERSION, patch.patch)
        except ApiError as e:
            if e.status not in (404, 409):
                raise
            log.info("Workload %s/%s changed meanwhile (%s): the next pass decides again",
                     job.namespace, patch.name, e.status)

    async def child(action: Create | Update | DeleteChild) -> None:
        fn = kube.create if isinstance(action, Create) else kube.patch if isinstance(action, Update) else kube.delete
        try:
            out = await run(fn, action.manifest)
            if isinstance(action, Create):
                _observe(rt, out)
        except ApiError as e:
            if e.status != 404 or action.manifest["kind"] != "PodGroup":
                raise
            # The gang scheduler's API is not installed: say so; the pods wait for a scheduler
            # that never comes, and the scheduling timeout (if set) ends the attempt.
            events.append(Event("Warning", "PodGroupUnavailable",
                                f"cannot create the PodGroup: {action.manifest['apiVersion']} is not served "
                                "(is the gang scheduler installed?)"))

    # Service, ConfigMap and PodGroup (independent of each other, so concurrently) before
    # pods: a pod must find its spec volume when it starts.
    others = [a for a in decision.actions if isinstance(a, (Update, DeleteChild))
              or (isinstance(a, Create) and a.kind != "Pod")]
    if rt.action_delay:
        for other in others:
            await child(other)
    else:
        await asyncio.gather(*(child(other) for other in others))

    deletes = [a for a in decision.actions if isinstance(a, DeletePod)]
    for a in deletes:  # before the call: its watch event may come before the answer
        rt.own_deletes[f"{job.namespace}/{a.name}"] = None
    while len(rt.own_deletes) > MAX_OWN_DELETES:
        rt.own_deletes.popitem(last=False)
    gone = await each(kube.delete_pod, [(job.namespace, a.name) for a in deletes])
    for pod in gone:
        _observe(rt, pod)
    for a, took in zip(deletes, gone, strict=True):
        if took:
            rt.metrics.pods_deleted.inc()
            if a.event is not None:
                events.append(a.event)

    pods = decision.pods_to_create
    made = await each(kube.create, [(a.manifest,) for a in pods])
    for pod in made:
        _observe(rt, pod)
    created = [a.name for a, ok in zip(pods, made, strict=True) if ok]
    events.extend(a.event for a, ok in zip(pods, made, strict=True) if ok and a.event is not None)
    if created:
        rt.metrics.pods_created.inc(len(created))
        events.append(workers_created_event(created))

    if any(isinstance(a, DeleteJob) for a in decision.actions):
        await run(kube.delete_job, job.namespace, job.name, job.uid)
    return events
