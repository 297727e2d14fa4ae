"""Spec → manifests of a TrainingJob's children: a headless Service, a ConfigMap holding the
spec, and worker Pods. Pure functions of their arguments (no I/O, no clock), table-tested.

The pod is the trainer launcher (`python -m kubetrain_trainer.launch`) under torchrun's
environment (PET_*), with restartPolicy Never: the operator, not the kubelet, decides restarts,
because only it sees the whole gang and the exit-code contract of DESIGN.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from kubetrain import api
from kubetrain.api import constants as k
from kubetrain.api.constants import API_VERSION, KIND
from kubetrain.controller import names as n

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetrain/trainer:0.1.0"
CONTAINER = "trainer"
SPEC_DIR = "/etc/kubetrain"
SPEC_KEY = "trainingjob.json"
SPEC_FILE = f"{SPEC_DIR}/{SPEC_KEY}"
SHM_PATH = "/dev/shm"
# With a read-only root filesystem the trainer writes only to its volumes: the checkpoint volume,
# /dev/shm and this emptyDir, where the caches of Python, Triton and Inductor go too.
TMP_PATH = "/tmp"
SCRATCH_ENV = {
    "TMPDIR": TMP_PATH,
    "XDG_CACHE_HOME": f"{TMP_PATH}/.cache",
    "TRITON_CACHE_DIR": f"{TMP_PATH}/.triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{TMP_PATH}/torchinductor",
}
# The trainer image's user (trainer_image/Dockerfile): numeric, so runAsNonRoot can be checked.
TRAINER_UID = 1000
# SIGTERM → the trainer's preemption checkpoint (saveTimeoutSeconds) → exit; this is the slack
# for process start-up of the checkpoint and torchrun's own shutdown on top of it.
GRACE_SLACK_SECONDS = 30


@dataclass(frozen=True)
class JobRef:
    """What the builders need of a job's metadata."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        # No blockOwnerDeletion: it needs update on trainingjobs/finalizers where the
        # OwnerReferencesPermissionEnforcement admission plugin runs, and background deletion
        # removes the children all the same.
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid, "controller": True}

    def labels(self) -> dict[str, str]:
        return {
            n.LABEL_JOB: n.job_label(self.name),
            "app.kubernetes.io/name": "kubetrain",
            "app.kubernetes.io/instance": n.job_label(self.name),
            "app.kubernetes.io/managed-by": "kubetrain-operator",
        }


def nnodes(spec: api.TrainingJobSpec) -> str:
    """torchrun's --nnodes: the elastic range min:max."""
    return f"{spec.workers.min}:{spec.workers.max}"


# Kubernetes keeps a pod bound to an unreachable node for 300 s by default (DefaultTolerationSeconds);
# a gang cannot train without the worker, so it is evicted, and replaced, after this instead.
NODE_LOSS_TOLERATION_SECONDS = 30
NODE_LOSS_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


def with_node_loss_tolerations(tolerations: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The user's tolerations, plus a short NoExecute toleration of node loss unless they set one."""
    out = list(tolerations or [])
    for taint in NODE_LOSS_TAINTS:
        if not any(t.get("key") == taint for t in out):
            out.append({"key": taint, "operator": "Exists", "effect": "NoExecute",
                        "tolerationSeconds": NODE_LOSS_TOLERATION_SECONDS})
    return out


def rendezvous_endpoint(job: JobRef) -> str:
    """Worker 0's stable DNS name under the headless Service (resolves to its current incarnation)."""
    return f"{n.hostname(job.name, 0)}.{n.service_name(job.name)}:{n.RENDEZVOUS_PORT}"


# ------------------------------------------------------------------------- gang scheduling

# gang mode -> (PodGroup apiVersion, schedulerName of the pods)
GANG_SCHEDULERS = {
    "volcano": ("scheduling.volcano.sh/v1beta1", "volcano"),
    "scheduler-plugins": ("scheduling.x-k8s.io/v1alpha1", "scheduler-plugins-scheduler"),
    # Kubernetes' own gang scheduling (KEP-4671; alpha since 1.35: the GenericWorkload and
    # GangScheduling feature gates and the scheduling.k8s.io/v1alpha2 API), by the default
    # scheduler. Its PodGroup policy is immutable: a change replaces the object.
    "kubernetes": ("scheduling.k8s.io/v1alpha2", "default-scheduler"),
}
NATIVE_GANG = "kubernetes"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
PLUGINS_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def gang_mode(spec: api.TrainingJobSpec) -> str:
    return spec.run_policy.scheduling.gang if spec.run_policy.scheduling else "none"


def scale_quantity(q: int | str, times: int) -> int | str:
    """A resource quantity times `times` ("64Gi" x 2 = "128Gi"); unparseable ones unchanged."""
    if isinstance(q, int):
        return q * times
    m = _QUANTITY.match(q.strip())
    if not m:
        return q
    number = float(m.group(1)) * times
    text = str(int(number)) if number.is_integer() else f"{number:g}"
    return f"{text}{m.group(2)}"


def min_resources(spec: api.TrainingJobSpec) -> dict[str, int | str]:
    """What minReplicas workers request together (requests, else limits, plus the GPUs)."""
    r = spec.workers.resources
    per: dict[str, int | str] = dict((r.limits or {}) if r else {})
    per.update((r.requests or {}) if r else {})
    if spec.workers.gpus_per_worker:
        per["nvidia.com/gpu"] = spec.workers.gpus_per_worker
    return {key: scale_quantity(v, spec.workers.min) for key, v in sorted(per.items())}


def build_pod_group(job: JobRef, spec: api.TrainingJobSpec) -> dict[str, Any] | None:
    """The PodGroup of the gang scheduler (Kubernetes', Volcano's or scheduler-plugins'), or None."""
    mode, sched = gang_mode(spec), spec.run_policy.scheduling
    if mode not in GANG_SCHEDULERS or sched is None:
        return None
    api_version, _ = GANG_SCHEDULERS[mode]
    group_spec: dict[str, Any]
    if mode == NATIVE_GANG:
        group_spec = {"schedulingPolicy": {"gang": {"minCount": spec.workers.min}}}
    else:
        group_spec = {"minMember": spec.workers.min, "minResources": min_resources(spec)}
    if mode == "volcano":
        if sched.queue:
            group_spec["queue"] = sched.queue
        if sched.priority_class_name or spec.workers.priority_class_name:
            group_spec["priorityClassName"] = sched.priority_class_name or spec.workers.priority_class_name
    elif mode == "scheduler-plugins":
        group_spec["scheduleTimeoutSeconds"] = sched.scheduling_timeout_seconds
    return {
        "apiVersion": api_version,
        "kind": "PodGroup",
        "metadata": {
            "name": n.pod_group_name(job.name),
            "namespace": job.namespace,
            "labels": job.labels(),
            # a change of minMember and co. is written through when the hash differs
            "annotations": {n.ANNOTATION_SPEC_HASH: spec_hash(group_spec)},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": group_spec,
    }


# --------------------------------------------------------------------------------- Service


def build_service(job: JobRef) -> dict[str, Any]:
    """Headless Service giving every worker a DNS name `<hostname>.<service>`.

    Not-ready addresses are *not* published: a worker pod has no readiness probe, so it is
    Ready (and resolvable) as soon as its container runs, while a pod being deleted, or one on
    a lost node (marked not Ready by the node lifecycle controller), drops out of DNS at once.
    With publishNotReadyAddresses a dead worker 0 stuck Terminating would keep answering for
    the rendezvous name next to its replacement."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": n.service_name(job.name),
            "namespace": job.namespace,
            "labels": job.labels(),
            "ownerReferences": [job.owner_reference()],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": {n.LABEL_JOB: n.job_label(job.name), n.LABEL_ROLE: "worker"},
            "ports": [{"name": "rendezvous", "port": n.RENDEZVOUS_PORT, "targetPort": n.RENDEZVOUS_PORT}],
        },
    }


# ------------------------------------------------------------------------------- ConfigMap


def spec_document(job: JobRef, raw_spec: dict[str, Any]) -> dict[str, Any]:
    """The TrainingJob as the trainer reads it: the spec exactly as the user wrote it (no
    defaults filled in, so the trainer's DeepSpeed mapping sees what was explicit)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.name, "namespace": job.namespace, "uid": job.uid},
        "spec": raw_spec,
    }


def spec_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def build_config_map(job: JobRef, raw_spec: dict[str, Any]) -> dict[str, Any]:
    document = spec_document(job, raw_spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": n.config_map_name(job.name),
            "namespace": job.namespace,
            "labels": job.labels(),
            "annotations": {n.ANNOTATION_SPEC_HASH: spec_hash(document)},
            "ownerReferences": [job.owner_reference()],
        },
        "data": {SPEC_KEY: json.dumps(document, indent=2, sort_keys=True)},
    }


# ------------------------------------------------------------------------------------- Pod


def rendezvous_conf(**extra: object) -> str:
    """PET_RDZV_CONF: the fast-recovery settings of api.constants.RENDEZVOUS_CONF, plus `extra`."""
    return ",".join(f"{key}={value}" for key, value in {**k.RENDEZVOUS_CONF, **extra}.items())


def _env(job: JobRef, spec: api.TrainingJobSpec, index: int, generation: int) -> list[dict[str, Any]]:
    w = spec.workers
    ours: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": nnodes(spec)},
        {"name": "PET_NPROC_PER_NODE", "value": str(w.procs)},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": rendezvous_endpoint(job)},
        # The uid, not the name: a re-created job of the same name never joins a stale rendezvous.
        {"name": "PET_RDZV_ID", "value": job.uid},
        {"name": "PET_MAX_RESTARTS", "value": str(spec.elastic.max_restarts)},
        {"name": "PET_RDZV_CONF", "value": rendezvous_conf(join_timeout=spec.elastic.rendezvous_timeout_seconds)},
        {"name": k.ENV_SPEC_FILE, "value": SPEC_FILE},
        {"name": k.ENV_METRICS_PORT, "value": str(k.METRICS_PORT)},
        {"name": k.ENV_RUN_DIR, "value": spec.checkpoint.storage.mount_path if spec.checkpoint.storage
         else api.StorageSpec().mount_path},
        {"name": k.ENV_JOB_NAME, "value": job.name},
        {"name": k.ENV_WORKER_INDEX, "value": str(index)},
        {"name": k.ENV_TENSOR_PARALLEL, "value": str(spec.parallelism.tensor_parallel)},
        {"name": k.ENV_RESTART_GENERATION, "value": str(generation)},
        {"name": k.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": k.ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    # Ours win over a user variable of the same name: the rendezvous must agree across the gang.
    taken = {e["name"] for e in ours}
    theirs = [e for e in (w.env or []) if e.get("name") not in taken]
    # Where scratch files go: the user's own setting, if any, wins.
    given = {e.get("name") for e in theirs}
    scratch = [{"name": name, "value": value} for name, value in SCRATCH_ENV.items()
               if w.read_only_root_filesystem and name not in given]
    return theirs + scratch + ours


def _resources(spec: api.TrainingJobSpec) -> dict[str, Any]:
    r = spec.workers.resources
    limits: dict[str, Any] = dict(r.limits or {}) if r else {}
    requests: dict[str, Any] = dict(r.requests or {}) if r else {}
    if spec.workers.gpus_per_worker:
        # Extended resources are limits-only (requests default to them and may not differ).
        limits["nvidia.com/gpu"] = spec.workers.gpus_per_worker
        requests.pop("nvidia.com/gpu", None)
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _volumes(job: JobRef, spec: api.TrainingJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    storage = spec.checkpoint.storage or api.StorageSpec()
    checkpoint: dict[str, Any]
    mount: dict[str, Any] = {"name": "checkpoints", "mountPath": storage.mount_path}
    if storage.claim_name:
        checkpoint = {"name": "checkpoints", "persistentVolumeClaim": {"claimName": storage.claim_name}}
        # One claim serves many jobs: each writes under its own directory.
        mount["subPath"] = storage.sub_path if storage.sub_path is not None else job.name
    else:
        checkpoint = {"name": "checkpoints", "emptyDir": {}}
    volumes = [
        {"name": "spec", "configMap": {"name": n.config_map_name(job.name)}},
        checkpoint,
        # NCCL's shared-memory transport needs far more than the runtime's 64 MB /dev/shm.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        *(spec.workers.volumes or []),
    ]
    mounts = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        mount,
        {"name": "dshm", "mountPath": SHM_PATH},
        *(spec.workers.volume_mounts or []),
    ]
    if spec.workers.read_only_root_filesystem and not any(
            m.get("mountPath", "").rstrip("/") == TMP_PATH for m in spec.workers.volume_mounts or []):
        volumes.append({"name": "tmp", "emptyDir": {}})
        mounts.append({"name": "tmp", "mountPath": TMP_PATH})
    return volumes, mounts


def build_pod(
    job: JobRef,
    spec: api.TrainingJobSpec,
    index: int,
    generation: int,
    incarnation: int,
    default_image: str = DEFAULT_TRAINER_IMAGE,
) -> dict[str, Any]:
    """Worker `index` of restart generation `generation`, its `incarnation`-th pod."""
    w = spec.workers
    labels = {
        **(w.labels or {}),
        **job.labels(),
        n.LABEL_ROLE: "worker",
        n.LABEL_INDEX: str(index),
        n.LABEL_GENERATION: str(generation),
        n.LABEL_INCARNATION: str(incarnation),
    }
    annotations = {**(w.annotations or {}), n.ANNOTATION_NNODES: nnodes(spec)}
    volumes, mounts = _volumes(job, spec)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": w.image or default_image,
        "command": ["python", "-m", "kubetrain_trainer.launch"],
        "env": _env(job, spec, index, generation),
        "ports": [
            {"name": "metrics", "containerPort": k.METRICS_PORT, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": n.RENDEZVOUS_PORT, "protocol": "TCP"},
        ],
        "volumeMounts": mounts,
        # The launcher writes {reason, message, step} here; a crash before it could is still
        # explained by the log tail.
        "terminationMessagePath": k.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": w.read_only_root_filesystem,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if w.env_from:
        container["envFrom"] = list(w.env_from)
    if w.image_pull_policy:
        container["imagePullPolicy"] = w.image_pull_policy
    resources = _resources(spec)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": n.hostname(job.name, index),
        "subdomain": n.service_name(job.name),
        "terminationGracePeriodSeconds": spec.checkpoint.save_timeout_seconds + GRACE_SLACK_SECONDS,
        # Thousands of service variables in a busy namespace slow process start and help no one.
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    mode = gang_mode(spec)
    if mode == NATIVE_GANG:
        pod_spec["schedulingGroup"] = {"podGroupName": n.pod_group_name(job.name)}
    elif mode in GANG_SCHEDULERS:
        pod_spec["schedulerName"] = GANG_SCHEDULERS[mode][1]
        if mode == "volcano":
            annotations[VOLCANO_GROUP_ANNOTATION] = n.pod_group_name(job.name)
        else:
            labels[PLUGINS_GROUP_LABEL] = n.pod_group_name(job.name)
    if w.service_account_name:
        pod_spec["serviceAccountName"] = w.service_account_name
    else:
        # The trainer never talks to the API server: no token unless the user asks for an account.
        pod_spec["automountServiceAccountToken"] = False
    pod_spec["tolerations"] = with_node_loss_tolerations(w.tolerations)
    for key, value in (
        ("imagePullSecrets", w.image_pull_secrets),
        ("nodeSelector", w.node_selector),
        ("affinity", w.affinity),
        ("priorityClassName", w.priority_class_name),
    ):
        if value:
            pod_spec[key] = value

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": n.pod_name(job.name, index, generation, incarnation),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [job.owner_reference()],
        },
        "spec": pod_spec,
    }
