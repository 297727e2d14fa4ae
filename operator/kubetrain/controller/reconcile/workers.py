"""The children and the workers: Service, ConfigMap, PodGroup; losses replaced one by one;
elastic scaling within [min, max]; missing workers created (after any backoff)."""

from __future__ import annotations

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller import names as n
from kubetrain.controller.builders import (
    NATIVE_GANG,
    build_config_map,
    build_pod,
    build_pod_group,
    build_service,
    gang_mode,
    nnodes,
)
from kubetrain.controller.observed import PodView
from kubetrain.controller.reconcile.state import (
    R_SCALED,
    R_WORKER_LOST,
    Create,
    DeleteChild,
    Event,
    PassState,
    Update,
)


def drop_old_generations(s: PassState) -> None:
    """Older generations go, except the pod of the last failure (kept for `kubectl logs`;
    finished, it holds no resources)."""
    keep = s.st.last_failure.pod if s.st.last_failure else None
    for p in s.live():
        if p.generation < s.gen and not (p.name == keep and p.finished):
            s.delete(p)


def children(s: PassState) -> None:
    ref = s.job.ref
    if not s.observed.service:
        s.actions.append(Create(build_service(ref)))
    cm = build_config_map(ref, s.job.raw_spec)
    want = cm["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH]
    if s.observed.config_map_hash is None:
        s.actions.append(Create(cm))
    elif s.observed.config_map_hash != want:
        s.actions.append(Update(cm))
    assert s.job.spec is not None
    group = build_pod_group(ref, s.job.spec)
    if group is not None:
        want = group["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH]
        if s.observed.pod_group_hash is None:
            s.actions.append(Create(group))
        elif s.observed.pod_group_hash != want:
            # Kubernetes' PodGroup policy is immutable: replace it (created again next pass).
            native = gang_mode(s.job.spec) == NATIVE_GANG
            s.actions.append(DeleteChild(group) if native else Update(group))
    drop_old_generations(s)


def replace_lost(s: PassState) -> None:
    """A pod killed from outside (evicted, node lost) is deleted and, below, replaced
    under a new name: never blocked by the old pod stuck Terminating."""
    for p in s.current():
        if p.outcome == "lost":
            detail = ", ".join(x for x in (p.reason, p.message) if x and x not in p.loss_cause)
            what = f"pod {p.name} was lost: {p.loss_cause}" + (f" ({detail})" if detail else "")
            s.lost.append(what)
            s.delete(p, Event("Warning", R_WORKER_LOST, f"{what}; replacing it"))


def _taken(s: PassState, index: int) -> PodView | None:
    """The latest pod of `index` (current generation) that someone other than this operator
    deleted: still Terminating, or already gone from the API. None when there is none, or when
    the job was suspended (its workers were deleted on purpose)."""
    if s.old.phase == "Suspended":
        return None
    listed = {p.name for p in s.observed.pods}
    seen = [*s.observed.pods, *(p for p in s.observed.gone if p.name not in listed)]
    mine = [p for p in seen if p.index == index and p.generation == s.gen]
    latest = max(mine, key=lambda p: p.incarnation, default=None)
    if latest is None or latest.name in s.deleting or latest.phase == "Succeeded":
        return None
    return latest if latest.deleting or latest.name not in listed else None


def scale(s: PassState, desired: int) -> None:
    """Elastic scaling within [min, max]: the highest indices go or come; survivors stay.
    Counted as a rescale restart only when it interrupts training (torchrun re-rendezvous)."""
    before = s.old.workers.desired if s.old.workers else 0
    if before and desired != before and s.old.phase == "Running":
        s.restarts.rescale += 1
        s.restarts.total += 1
        verb = "up" if desired > before else "down"
        s.event("Normal", R_SCALED, f"scaling {verb} from {before} to {desired} workers")
    for p in s.current():
        if p.index >= desired:
            s.delete(p)


def shape_changed(s: PassState, spec: api.TrainingJobSpec) -> bool:
    want = nnodes(spec)
    return any(p.nnodes and p.nnodes != want for p in s.current())


def create_missing(s: PassState, spec: api.TrainingJobSpec, desired: int) -> None:
    until = c.parse_time(s.st.backoff_until)
    if until is not None and s.now < until:
        s.at(until)
        return
    s.st.backoff_until = None
    occupied = {p.index for p in s.current() if not p.finished}
    for index in range(desired):
        if index in occupied:
            continue
        previous = [p.incarnation for p in (*s.observed.pods, *s.observed.gone)
                    if p.index == index and p.generation == s.gen]
        incarnation = max(previous) + 1 if previous else 0
        pod = build_pod(s.job.ref, spec, index, s.gen, incarnation, s.settings.trainer_image)
        event = None
        taken = _taken(s, index)
        if taken is not None:
            what = f"pod {taken.name} was lost: {taken.loss_cause}"
            s.lost.append(what)
            event = Event("Warning", R_WORKER_LOST, f"{what}; replacing it with {pod['metadata']['name']}")
        s.actions.append(Create(pod, event))
