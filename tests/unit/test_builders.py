"""Builders: spec → Service, ConfigMap and worker Pods (pure, table-tested)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetrain import api
from kubetrain.api.constants import METRICS_PORT
from kubetrain.controller import names as n
from kubetrain.controller.builders import (
    JobRef,
    build_config_map,
    build_pod,
    build_pod_group,
    build_service,
    rendezvous_endpoint,
    scale_quantity,
    spec_hash,
)

JOB = JobRef(name="demo", namespace="team-a", uid="0b5c-uid")


def spec(**workers: Any) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate({"workers": workers})


def pod(s: api.TrainingJobSpec | None = None, index: int = 0, gen: int = 0, inc: int = 0) -> dict[str, Any]:
    return build_pod(JOB, s or spec(replicas=2), index, gen, inc, default_image="trainer:test")


def env(p: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in p["spec"]["containers"][0]["env"]}


def container(p: dict[str, Any]) -> dict[str, Any]:
    return dict(p["spec"]["containers"][0])


# ------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("job", "index", "gen", "inc", "want"),
    [
        ("demo", 0, 0, 0, "demo-worker-0-0-0"),
        ("demo", 3, 2, 1, "demo-worker-3-2-1"),
        ("a.b", 1, 0, 0, "a.b-worker-1-0-0"),
    ],
)
def test_pod_names_are_deterministic(job: str, index: int, gen: int, inc: int, want: str) -> None:
    assert n.pod_name(job, index, gen, inc) == want


def test_long_names_are_cut_with_a_hash_and_stay_valid() -> None:
    long = "x" * 240
    name = n.pod_name(long, 12, 3, 4)
    assert len(name) <= 253 and name.endswith("-worker-12-3-4")
    assert n.pod_name(long, 12, 3, 4) != n.pod_name("x" * 239 + "y", 12, 3, 4)
    assert len(n.hostname(long, 4095)) <= 63 and n.hostname(long, 4095).endswith("-worker-4095")
    assert len(n.job_label(long)) <= 63
    assert len(n.service_name(long)) <= 63
    assert n.service_name("1b-run")[0].isalpha()
    assert "." not in n.hostname("a.b", 0) and "." not in n.service_name("a.b")


def test_selector_matches_pod_labels() -> None:
    p = pod()
    key, _, value = n.selector("demo").partition("=")
    assert p["metadata"]["labels"][key] == value


# -------------------------------------------------------------------------------- Service


def test_service_is_headless_and_drops_pods_that_are_not_ready() -> None:
    svc = build_service(JOB)
    assert svc["metadata"]["name"] == "demo"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is False
    assert svc["spec"]["selector"] == {n.LABEL_JOB: "demo", n.LABEL_ROLE: "worker"}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    assert pod()["spec"]["subdomain"] == svc["metadata"]["name"]


# ------------------------------------------------------------------------------ ConfigMap


def test_config_map_holds_the_spec_as_written_with_its_hash() -> None:
    raw = {"workers": {"replicas": 2}, "training": {"maxSteps": 5}}
    cm = build_config_map(JOB, raw)
    doc = json.loads(cm["data"]["trainingjob.json"])
    assert doc["spec"] == raw  # no defaults filled in
    assert doc["metadata"] == {"name": "demo", "namespace": "team-a", "uid": JOB.uid}
    assert cm["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH] == spec_hash(doc)
    other = build_config_map(JOB, {"workers": {"replicas": 3}})
    assert other["metadata"]["annotations"] != cm["metadata"]["annotations"]


# ------------------------------------------------------------------------------------ Pod


def test_pod_identity_labels_and_owner() -> None:
    p = pod(index=1, gen=2, inc=3)
    meta = p["metadata"]
    assert meta["name"] == "demo-worker-1-2-3"
    assert meta["namespace"] == "team-a"
    assert meta["labels"][n.LABEL_JOB] == "demo"
    assert meta["labels"][n.LABEL_INDEX] == "1"
    assert meta["labels"][n.LABEL_GENERATION] == "2"
    assert meta["labels"][n.LABEL_INCARNATION] == "3"
    assert meta["ownerReferences"] == [
        {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "name": "demo", "uid": JOB.uid,
         "controller": True}
    ]
    assert p["spec"]["restartPolicy"] == "Never"
    assert p["spec"]["hostname"] == "demo-worker-1"


def test_torchrun_environment() -> None:
    e = env(pod(spec(replicas=3, minReplicas=2, maxReplicas=5, gpusPerWorker=8), index=2))
    assert e["PET_NNODES"] == "2:5"
    assert e["PET_NPROC_PER_NODE"] == "8"
    assert e["PET_RDZV_BACKEND"] == "c10d"
    assert e["PET_RDZV_ENDPOINT"] == "demo-worker-0.demo:29400" == rendezvous_endpoint(JOB)
    assert e["PET_RDZV_ID"] == JOB.uid
    assert e["PET_MAX_RESTARTS"] == "3"
    assert e["KUBETRAIN_SPEC_FILE"] == "/etc/kubetrain/trainingjob.json"
    assert e["KUBETRAIN_WORKER_INDEX"] == "2"
    assert e["KUBETRAIN_METRICS_PORT"] == str(METRICS_PORT)
    # Fast elastic recovery: torch's c10d defaults (keep-alive 5 s x 3, last call 30 s) replaced,
    # the same settings `kubetrain local` uses; the spec's rendezvous timeout is the join timeout.
    conf = dict(item.split("=") for item in e["PET_RDZV_CONF"].split(","))
    assert conf == {"keep_alive_interval": "1", "keep_alive_max_attempt": "3", "last_call_timeout": "3",
                    "close_timeout": "10", "join_timeout": "300"}


@pytest.mark.parametrize(
    ("workers", "nproc", "gpu"),
    [
        ({"gpusPerWorker": 0}, "1", None),
        ({"gpusPerWorker": 4}, "4", 4),
        ({"gpusPerWorker": 8, "procsPerWorker": 2}, "2", 8),
        ({"gpusPerWorker": 0, "procsPerWorker": 3}, "3", None),
    ],
)
def test_gpus_and_processes(workers: dict[str, Any], nproc: str, gpu: int | None) -> None:
    p = pod(spec(**workers))
    assert env(p)["PET_NPROC_PER_NODE"] == nproc
    limits = container(p).get("resources", {}).get("limits", {})
    assert limits.get("nvidia.com/gpu") == gpu


def test_user_resources_are_kept_and_gpu_added() -> None:
    p = pod(spec(gpusPerWorker=2, resources={"limits": {"cpu": 8, "memory": "64Gi"}, "requests": {"cpu": 4}}))
    res = container(p)["resources"]
    assert res["limits"] == {"cpu": 8, "memory": "64Gi", "nvidia.com/gpu": 2}
    assert res["requests"] == {"cpu": 4}


def test_container_process_ports_and_termination_message() -> None:
    c = container(pod())
    assert c["command"] == ["python", "-m", "kubetrain_trainer.launch"]
    assert c["image"] == "trainer:test"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "rendezvous": 29400}
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert container(pod(spec(image="my/trainer:1", imagePullPolicy="Always")))["image"] == "my/trainer:1"
    assert container(pod(spec(image="my/trainer:1", imagePullPolicy="Always")))["imagePullPolicy"] == "Always"


def test_volumes_spec_checkpoint_emptydir_and_shm() -> None:
    p = pod()
    vols = {v["name"]: v for v in p["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(p)["volumeMounts"]}
    assert vols["spec"]["configMap"]["name"] == "demo-spec"
    assert mounts["spec"] == {"name": "spec", "mountPath": "/etc/kubetrain", "readOnly": True}
    assert vols["checkpoints"] == {"name": "checkpoints", "emptyDir": {}}
    assert mounts["checkpoints"] == {"name": "checkpoints", "mountPath": "/checkpoints"}
    assert vols["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert env(p)["KUBETRAIN_RUN_DIR"] == "/checkpoints"


@pytest.mark.parametrize(("sub_path", "want"), [(None, "demo"), ("runs/7", "runs/7"), ("", "")])
def test_checkpoint_claim(sub_path: str | None, want: str) -> None:
    storage: dict[str, Any] = {"claimName": "ckpt", "mountPath": "/ckpt"}
    if sub_path is not None:
        storage["subPath"] = sub_path
    s = api.TrainingJobSpec.model_validate({"checkpoint": {"storage": storage}})
    p = pod(s)
    vols = {v["name"]: v for v in p["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(p)["volumeMounts"]}
    assert vols["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    assert mounts["checkpoints"] == {"name": "checkpoints", "mountPath": "/ckpt", "subPath": want}
    assert env(p)["KUBETRAIN_RUN_DIR"] == "/ckpt"


@pytest.mark.parametrize(("timeout", "grace"), [(None, 150), (5, 35), (600, 630)])
def test_grace_period_covers_the_checkpoint(timeout: int | None, grace: int) -> None:
    ck = {} if timeout is None else {"saveTimeoutSeconds": timeout}
    s = api.TrainingJobSpec.model_validate({"checkpoint": ck})
    assert pod(s)["spec"]["terminationGracePeriodSeconds"] == grace


def test_restricted_security_context() -> None:
    p = pod()
    sc = container(p)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    psc = p["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert p["spec"]["automountServiceAccountToken"] is False


def test_every_pass_through_pod_setting() -> None:
    s = spec(
        env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "PET_NNODES", "value": "9:9"}],
        envFrom=[{"secretRef": {"name": "tokens"}}],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
        imagePullSecrets=[{"name": "regcred"}],
        serviceAccountName="trainer",
        labels={"team": "nlp", n.LABEL_JOB: "spoofed"},
        annotations={"note": "hello"},
        nodeSelector={"gpu": "h100"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        priorityClassName="training-high",
    )
    p = pod(s)
    ps, c = p["spec"], container(p)
    e = env(p)
    assert e["NCCL_DEBUG"] == "INFO"
    assert e["PET_NNODES"] == "1:1"  # ours win: the rendezvous must agree across the gang
    assert [x["name"] for x in c["env"]].count("PET_NNODES") == 1
    assert c["envFrom"] == [{"secretRef": {"name": "tokens"}}]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}} in ps["volumes"]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert ps["imagePullSecrets"] == [{"name": "regcred"}]
    assert ps["serviceAccountName"] == "trainer"
    assert "automountServiceAccountToken" not in ps
    assert p["metadata"]["labels"]["team"] == "nlp"
    assert p["metadata"]["labels"][n.LABEL_JOB] == "demo"  # ours win
    assert p["metadata"]["annotations"]["note"] == "hello"
    assert ps["nodeSelector"] == {"gpu": "h100"}
    assert ps["tolerations"][0] == {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert ps["affinity"]["nodeAffinity"]
    assert ps["priorityClassName"] == "training-high"


def test_gang_shape_annotation() -> None:
    assert pod(spec(replicas=2, minReplicas=1, maxReplicas=4))["metadata"]["annotations"][n.ANNOTATION_NNODES] == "1:4"


def test_builders_are_pure() -> None:
    s = spec(replicas=2, env=[{"name": "A", "value": "1"}])
    assert pod(s) == pod(s)
    before = s.model_dump()
    pod(s)
    assert s.model_dump() == before


# -------------------------------------------------------------------------- gang scheduling


def gang(mode: str, **sched: Any) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate({
        "workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 6, "gpusPerWorker": 8,
                    "resources": {"requests": {"cpu": "12", "memory": "64Gi"}}, "priorityClassName": "high"},
        "runPolicy": {"scheduling": {"gang": mode, **sched}},
    })


def test_volcano_pod_group_and_pods() -> None:
    s = gang("volcano", queue="research", schedulingTimeoutSeconds=120)
    pg = build_pod_group(JOB, s)
    assert pg is not None
    assert pg["apiVersion"] == "scheduling.volcano.sh/v1beta1" and pg["kind"] == "PodGroup"
    assert pg["metadata"]["name"] == "demo" and pg["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    assert pg["spec"] == {"minMember": 2, "queue": "research", "priorityClassName": "high",
                          "minResources": {"cpu": "24", "memory": "128Gi", "nvidia.com/gpu": 16}}
    p = pod(s)
    assert p["spec"]["schedulerName"] == "volcano"
    assert p["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "demo"


def test_scheduler_plugins_pod_group_and_pods() -> None:
    s = gang("scheduler-plugins", schedulingTimeoutSeconds=120, priorityClassName="gang-prio")
    pg = build_pod_group(JOB, s)
    assert pg is not None
    assert pg["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert pg["spec"] == {"minMember": 2, "scheduleTimeoutSeconds": 120,
                          "minResources": {"cpu": "24", "memory": "128Gi", "nvidia.com/gpu": 16}}
    p = pod(s)
    assert p["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    assert p["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "demo"


def test_kubernetes_native_pod_group_and_pods() -> None:
    s = gang("kubernetes")
    pg = build_pod_group(JOB, s)
    assert pg is not None
    assert pg["apiVersion"] == "scheduling.k8s.io/v1alpha2" and pg["kind"] == "PodGroup"
    assert pg["spec"] == {"schedulingPolicy": {"gang": {"minCount": 2}}}
    p = pod(s)
    assert p["spec"]["schedulingGroup"] == {"podGroupName": "demo"}
    assert "schedulerName" not in p["spec"]  # the default scheduler enforces it


def test_no_pod_group_without_a_gang_scheduler() -> None:
    assert build_pod_group(JOB, gang("none")) is None
    assert "schedulerName" not in pod(gang("none"))["spec"] and "schedulingGroup" not in pod(gang("none"))["spec"]
    assert build_pod_group(JOB, spec(replicas=2)) is None


@pytest.mark.parametrize(("q", "times", "want"), [
    (8, 2, 16), ("64Gi", 2, "128Gi"), ("500m", 3, "1500m"), ("0.5", 3, "1.5"), ("1e3", 2, "1e3"),
])
def test_scale_quantity(q: int | str, times: int, want: int | str) -> None:
    assert scale_quantity(q, times) == want


def test_a_changed_gang_changes_the_pod_group_hash() -> None:
    a, b = build_pod_group(JOB, gang("volcano")), build_pod_group(JOB, gang("volcano", queue="other"))
    assert a is not None and b is not None
    assert a["metadata"]["annotations"] != b["metadata"]["annotations"]


def test_node_loss_is_tolerated_briefly_unless_the_user_says_otherwise() -> None:
    """A gang cannot train without a worker on a lost node: it is evicted after 30 s, not 300."""
    ps = pod(spec())["spec"]
    short = {t["key"]: t for t in ps["tolerations"]}
    for taint in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"):
        assert short[taint] == {"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
    mine = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": 600}
    ps = pod(spec(replicas=1, tolerations=[mine]))["spec"]
    assert [t for t in ps["tolerations"] if t["key"] == "node.kubernetes.io/unreachable"] == [mine]


def test_read_only_root_filesystem_with_a_scratch_emptydir() -> None:
    """By default the trainer's root filesystem is read-only: it writes only to its volumes, and the
    scratch and cache directories point into the /tmp emptyDir."""
    p = pod()
    assert container(p)["securityContext"]["readOnlyRootFilesystem"] is True
    vols = {v["name"]: v for v in p["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container(p)["volumeMounts"]}
    assert vols["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert mounts["/tmp"] == {"name": "tmp", "mountPath": "/tmp"}
    e = env(p)
    assert e["TMPDIR"] == "/tmp"
    for name in ("XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert e[name].startswith("/tmp/"), (name, e[name])


def test_read_only_root_respects_the_users_tmp_and_cache_settings() -> None:
    s = spec(replicas=1, env=[{"name": "TRITON_CACHE_DIR", "value": "/cache/triton"}],
             volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
             volumeMounts=[{"name": "scratch", "mountPath": "/tmp/"}])
    p = pod(s)
    mounts = [m for m in container(p)["volumeMounts"] if m["mountPath"].rstrip("/") == "/tmp"]
    assert mounts == [{"name": "scratch", "mountPath": "/tmp/"}]  # theirs, not a second one
    assert "tmp" not in {v["name"] for v in p["spec"]["volumes"]}
    names = [x["name"] for x in container(p)["env"]]
    assert names.count("TRITON_CACHE_DIR") == 1 and env(p)["TRITON_CACHE_DIR"] == "/cache/triton"


def test_read_only_root_can_be_turned_off_for_a_custom_image() -> None:
    p = pod(spec(replicas=1, readOnlyRootFilesystem=False))
    assert container(p)["securityContext"]["readOnlyRootFilesystem"] is False
    assert "tmp" not in {v["name"] for v in p["spec"]["volumes"]}
    assert not {"TMPDIR", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"} & env(p).keys()
