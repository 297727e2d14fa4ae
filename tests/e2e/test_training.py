"""TrainingJobs end to end: the operator (under its own ServiceAccount) on a real control plane,
its worker pods run as real trainer processes by the podrunner, rendezvous and gloo on loopback.

Each job is tiny (2-layer GPT, 2 workers x 1 process, CPU) so that the tier fits its budget."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.helpers import Cluster, wait_for
from tests.e2e.harness import (
    Operator,
    apply,
    committed_step,
    metrics_steps,
    pods,
    restarted_at,
    status,
    tiny_job,
    wait_phase,
)
from tests.e2e.podrunner import PodRunner

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def pod_name(job: str, index: int, generation: int = 0, incarnation: int = 0) -> str:
    return f"{job}-worker-{index}-{generation}-{incarnation}"


def condition(s: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in s.get("conditions") or [] if c["type"] == type_), {})


def wait_exited(runner: PodRunner, name: str, timeout: float = 60) -> int:
    def done() -> int | None:
        p = runner.process(name)
        return None if p is None or p.exit_code is None else p.exit_code + 1000  # 0 is falsy

    return wait_for(done, timeout, f"the process of {name} to exit") - 1000


def test_two_workers_train_to_success(cluster: Cluster, namespace: str, claim: str, podrunner: PodRunner,
                                      operator: Operator) -> None:
    apply(cluster, namespace, tiny_job("tiny", max_steps=30, interval=10, step_sleep=0.15))
    w0, w1 = podrunner.wait_started(pod_name("tiny", 0)), podrunner.wait_started(pod_name("tiny", 1))
    # One rendezvous store, hosted by worker 0, reached through its DNS name.
    assert "is_host=true" in w0.env["PET_RDZV_CONF"] and "is_host=false" in w1.env["PET_RDZV_CONF"]
    assert w0.env["PET_RDZV_ENDPOINT"] == w1.env["PET_RDZV_ENDPOINT"]
    assert w0.env["PET_RDZV_ENDPOINT"].startswith(f"{w0.ip}:") and w0.ip != w1.ip

    seen: list[int] = []

    def finished() -> dict[str, Any] | None:
        s = status(cluster, namespace, "tiny")
        step = (s.get("progress") or {}).get("step")
        if s.get("phase") == "Running" and isinstance(step, int):
            seen.append(step)
        if s.get("phase") == "Failed":
            raise AssertionError(f"the job failed: {json.dumps(s, indent=1)}")
        return s if s.get("phase") == "Succeeded" else None

    s = wait_for(finished, 240, "tiny Succeeded", interval=0.5)
    assert wait_exited(podrunner, w0.name) == 0 and wait_exited(podrunner, w1.name) == 0

    run_dir = podrunner.claim_dir(claim) / "tiny"
    assert metrics_steps(run_dir) == list(range(1, 31))
    world = {json.loads(line).get("world_size") for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line}
    assert world == {2}
    assert committed_step(run_dir) == 30
    assert condition(s, "Succeeded").get("status") == "True"
    assert s["restarts"]["total"] == 0
    table = cluster.kubectl("get", "tj", "-n", namespace).stdout
    row = next(line for line in table.splitlines() if line.startswith("tiny "))
    assert "Succeeded" in row.split(), table
    # Read by the operator from the real /progress of the lowest-index worker while the job ran.
    assert any(0 < step < 30 for step in seen), seen
    assert seen == sorted(seen), seen
    progress = s["progress"]
    assert progress["maxSteps"] == 30 and progress["loss"] > 0 and progress["tokensPerSecond"] > 0, progress
    assert max(seen) <= progress["step"] <= 30 and progress["lastCheckpointStep"] in (10, 20, 30), progress
    # The final step comes from the launcher's termination record, even when the last poll
    # of /progress came before the last steps.
    assert progress["step"] == 30, progress


def test_killed_worker_restarts_the_gang_from_the_last_checkpoint(
        cluster: Cluster, namespace: str, claim: str, podrunner: PodRunner, operator: Operator) -> None:
    interval = 10
    apply(cluster, namespace, tiny_job("resume", max_steps=40, interval=interval, step_sleep=0.25))
    run_dir = podrunner.claim_dir(claim) / "resume"
    victim = pod_name("resume", 1)
    podrunner.wait_started(victim)
    # A checkpoint committed, and a few steps beyond it that the restart has to redo.
    wait_for(lambda: (committed_step(run_dir) or 0) >= interval and max(metrics_steps(run_dir) or [0]) >= interval + 3,
             180, "a committed checkpoint and 3 more steps")
    podrunner.signal(victim, signal.SIGKILL)
    assert wait_exited(podrunner, victim) == 128 + signal.SIGKILL
    steps_at_kill = metrics_steps(run_dir)
    checkpoint_at_kill = committed_step(run_dir)
    assert checkpoint_at_kill is not None

    s = wait_phase(cluster, namespace, "resume", "Succeeded", 240)
    assert s["restarts"]["failure"] == 1 and s["restarts"]["total"] == 1, s["restarts"]
    assert s["lastFailure"]["exitCode"] in (1, 137), s["lastFailure"]
    new = [p for p in pods(cluster, namespace, "resume")
           if p["metadata"]["labels"]["kubetrain.dev/restart-generation"] == "1"]
    assert new, "no worker of generation 1"
    events = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=resume")
    assert "WorkerFailed" in {e["reason"] for e in events["items"]}

    steps = metrics_steps(run_dir)
    cuts = restarted_at(steps)
    assert len(cuts) == 1, f"expected one resume in the metrics log: {steps}"
    resumed_from = steps[cuts[0]] - 1
    assert resumed_from % interval == 0 and resumed_from >= checkpoint_at_kill, (resumed_from, checkpoint_at_kill)
    redone = [x for x in steps[: cuts[0]] if x > resumed_from]
    assert len(redone) <= interval, f"steps redone beyond the checkpoint interval: {redone}"
    assert steps[cuts[0]:] == list(range(resumed_from + 1, 41))
    assert steps[: cuts[0]] == list(range(1, len(steps[: cuts[0]]) + 1))
    assert max(steps_at_kill) >= checkpoint_at_kill


def test_invalid_entrypoint_fails_the_job_without_retries(cluster: Cluster, namespace: str, claim: str,
                                                          podrunner: PodRunner, operator: Operator) -> None:
    apply(cluster, namespace, tiny_job("badentry", max_steps=5, model={"entrypoint": "no_such_module:build"}))
    workers = [podrunner.wait_started(pod_name("badentry", i)) for i in (0, 1)]
    s = wait_phase(cluster, namespace, "badentry", "Failed", 180)
    failed = condition(s, "Failed")
    assert failed.get("status") == "True" and failed["reason"] == "ModelError", failed
    assert "no_such_module" in failed["message"], failed
    assert s["lastFailure"]["exitCode"] == 65 and "no_such_module" in s["lastFailure"]["message"], s["lastFailure"]
    assert s["restarts"]["total"] == 0 and s["restarts"]["failure"] == 0, s["restarts"]
    # The first pod to end fails the job. The other ends with its own 65, with SIGTERM's 143 when the
    # operator deletes it first (cleanPodPolicy), or retryable 1 when worker 0's pod (the rendezvous
    # store's host) was first and the other agent lost the store; never a second permanent class.
    codes = [wait_exited(podrunner, w.name) for w in workers]
    assert 65 in codes and set(codes) <= {65, 143, 1}, codes
    first = workers[codes.index(65)]
    record = json.loads(Path(first.termination_path).read_text())
    assert record["reason"] == "ModelError" and "no_such_module" in record["message"], record
    # Failed is terminal and was written instead of a retry: the operator never moved to a new restart
    # generation (the status it wrote with Failed says so) and no pod of another generation exists.
    assert s.get("restartGeneration", 0) == 0, s.get("restartGeneration")
    generations = {p["metadata"]["labels"]["kubetrain.dev/restart-generation"]
                   for p in pods(cluster, namespace, "badentry")}
    assert generations <= {"0"}, generations


def test_losing_worker_0s_node_recovers_under_the_same_rendezvous_name(
        cluster: Cluster, namespace: str, claim: str, podrunner: PodRunner, operator: Operator) -> None:
    """Worker 0 hosts the rendezvous store under its stable DNS name. Its node dies: its processes
    freeze (peers hang, no connection reset), the node controller marks it unreachable and the
    pod is evicted (the job tolerates an unreachable node for 5 s, not the default 300 s). The
    replacement worker 0 answers for the same name while the old pod stays Terminating on the dead
    node; the survivor, stuck on the dead store, is replaced by a gang restart; training resumes
    from the last checkpoint."""
    interval = 10
    tolerations = [{"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 5} for taint in ("unreachable", "not-ready")]
    job = tiny_job("lost", max_steps=30, interval=interval, step_sleep=0.25,
                   elastic={"rendezvousTimeoutSeconds": 20, "collectiveTimeoutSeconds": 10})
    job["spec"]["workers"]["tolerations"] = tolerations
    apply(cluster, namespace, job)
    run_dir = podrunner.claim_dir(claim) / "lost"
    old = podrunner.wait_started(pod_name("lost", 0))
    wait_for(lambda: (committed_step(run_dir) or 0) >= interval and max(metrics_steps(run_dir) or [0]) >= interval + 3,
             180, "a committed checkpoint and 3 more steps")
    started = time.monotonic()
    cluster.lose_node(old.node)
    checkpoint_at_loss = committed_step(run_dir)
    assert checkpoint_at_loss is not None

    s = wait_phase(cluster, namespace, "lost", "Succeeded", 240)
    recovered = time.monotonic() - started
    assert s["restarts"]["total"] >= 1, s["restarts"]
    gen = s["restartGeneration"]
    final = [pod_name("lost", i, gen) for i in (0, 1)]
    assert [wait_exited(podrunner, name) for name in final] == [0, 0]
    new, peer = (podrunner.process(name) for name in final)
    assert new is not None and peer is not None
    assert new.node != old.node and new.ip != old.ip
    assert old.frozen and old.exit_code is None
    # The same name, now the new pod's: it hosts the store, and its peer found it there.
    assert new.env["PET_RDZV_CONF"].endswith("is_host=true") and new.env["PET_RDZV_ENDPOINT"].startswith(f"{new.ip}:")
    assert peer.env["PET_RDZV_ENDPOINT"] == new.env["PET_RDZV_ENDPOINT"]
    # The dead worker 0 never blocked its replacement: it is still there, Terminating, on the lost node.
    stale = cluster.kubectl_json("get", "pod", old.name, "-n", namespace)
    assert stale["spec"]["nodeName"] == old.node and stale["metadata"].get("deletionTimestamp"), stale["metadata"]

    steps = metrics_steps(run_dir)
    cuts = restarted_at(steps)
    assert len(cuts) == 1, f"expected one resume in the metrics log: {steps}"
    resumed_from = steps[cuts[0]] - 1
    assert resumed_from >= checkpoint_at_loss and resumed_from % interval == 0, (resumed_from, checkpoint_at_loss)
    assert steps[cuts[0]:] == list(range(resumed_from + 1, 31))
    print(f"worker 0's node lost -> job Succeeded {recovered:.0f}s later")
