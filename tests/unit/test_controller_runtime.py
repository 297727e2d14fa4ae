"""The operator's runtime pieces that need no API server: the client-side token bucket and the
Event recorder's aggregation. (Their use against a real API server, and leader election, are
in tests/cluster/test_operator.py.)"""

from __future__ import annotations

import asyncio
import gc
from typing import cast

import pytest

from kubetrain.controller.events import EventRecorder, Pending
from kubetrain.controller.informer import Informer, slim
from kubetrain.controller.kubeio import ApiError, Kube
from kubetrain.controller.leader import LeaderElector
from kubetrain.controller.memory import IdleTrimmer, release
from kubetrain.controller.observed import pod_view
from kubetrain.controller.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_token_bucket_burst_then_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(qps=10, burst=5, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits == [0.0] * 5  # the burst goes at once
    assert bucket.acquire() == pytest.approx(0.1)  # then one token per 1/qps
    assert bucket.acquire() == pytest.approx(0.1)
    clock.t += 10  # idle: refills up to the burst, not beyond
    assert [bucket.acquire() for _ in range(5)] == [0.0] * 5
    assert bucket.acquire() > 0
    assert bucket.waited == pytest.approx(0.3)


def test_token_bucket_disabled() -> None:
    bucket = TokenBucket(qps=0, burst=1)
    assert all(bucket.acquire() == 0.0 for _ in range(1000))


def test_recorder_aggregates_repeats_and_bounds_its_memory() -> None:
    calls: list[tuple[str, int | None]] = []

    async def post(item: Pending, again: tuple[str, str, int] | None) -> tuple[str, str]:
        if again is None:
            calls.append((item.reason, None))
            return "ns", f"ev-{len(calls)}"
        if again[1] == "ev-expired":
            raise ApiError(404, '{"message": "not found"}')
        calls.append((item.reason, again[2]))
        return again[0], again[1]

    async def main() -> EventRecorder:
        rec = EventRecorder(post, window=600, max_keys=2)
        rec.start()
        job = {"metadata": {"uid": "u1", "name": "j", "namespace": "ns"}}
        for _ in range(3):
            rec.record(job, "Warning", "WorkerLost", "pod a was lost: deleted", "t")
        rec.record(job, "Normal", "Running", "2 of 2", "t")
        await rec.flush()
        assert calls == [("WorkerLost", None), ("WorkerLost", 2), ("WorkerLost", 3), ("Running", None)]
        # Bounded: a third distinct Event pushes the least recently used key out.
        rec.record(job, "Normal", "Scaled", "up", "t")
        await rec.flush()
        assert len(rec._posted) == 2
        # An Event that expired on the server is posted afresh.
        key = next(iter(rec._posted))
        rec._posted[key].name = "ev-expired"
        rec.record(job, key[1], key[2], key[3], "t")
        await rec.flush()
        assert calls[-1] == (key[2], None)
        rec.forget("u1")
        assert not rec._posted
        await rec.stop()
        return rec

    rec = asyncio.run(main())
    assert rec.aggregated == 2 and rec.dropped == 0


def test_leader_election_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
        LeaderElector(kube=None, namespace="ns", lease_seconds=5, renew_deadline_seconds=6)  # type: ignore[arg-type]


def test_idle_trimmer_releases_once_per_burst_of_work() -> None:
    last = [0.0]
    trimmer = IdleTrimmer(lambda: last[0], idle_seconds=10)
    assert not trimmer.due(100.0)  # no work yet: nothing to give back
    last[0] = 100.0
    assert not trimmer.due(105.0)  # still busy (a pass 5 s ago)
    assert trimmer.due(110.0)
    trimmer._trimmed_after = last[0]
    assert not trimmer.due(500.0)  # idle since, nothing new
    last[0] = 600.0
    assert trimmer.due(610.0)


def test_release_returns_freed_heap_to_the_os() -> None:
    """A burst leaves the heap fragmented: a few survivors pin it, so free() alone returns
    nothing to the OS; release() (malloc_trim) gives the free pages back. RSS measured."""
    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024

    release()
    before = rss()
    blob = [bytes(2000 + i % 7) for i in range(60_000)]  # ~115 MiB of malloc'ed (not pymalloc) objects
    survivors = blob[::32]  # what a burst leaves behind: a few objects, spread over the heap
    del blob
    gc.collect()
    held = rss() - before
    release()
    after = rss() - before
    assert len(survivors) == 1875
    assert held > 80 * 2**20, "free() alone returned the pages: the heap was not fragmented"
    assert after < 0.25 * held, (held, after)


def test_informer_keeps_only_what_the_reconciler_reads() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "b"},
                        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}] * 20},
           "spec": {"nodeName": "n1", "volumes": [{"name": "v"}] * 10,
                    "containers": [{"name": "trainer", "env": [{"name": "X", "value": "y" * 1000}],
                                    "ports": [{"name": "metrics", "containerPort": 9090}]}]},
           "status": {"phase": "Running", "podIP": "127.0.0.1"}}
    small = slim(pod)
    assert "managedFields" not in small["metadata"] and small["metadata"]["labels"] == {"a": "b"}
    assert small["spec"] == {"nodeName": "n1", "containers": [
        {"name": "trainer", "ports": [{"name": "metrics", "containerPort": 9090}]}]}
    assert small["status"] == pod["status"]
    assert pod_view(small) == pod_view(pod)  # the reconciler sees the same pod
    cm = {"kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"h": "1"}}, "data": {"spec": "x" * 10000}}
    assert slim(cm) == {"apiVersion": None, "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"h": "1"}}}


def test_a_delete_answer_after_the_watchs_deleted_event_does_not_resurrect_the_pod() -> None:
    """Found with the real Kueue: KWOK deletes a pod at once, the watch's DELETED event came before
    the DELETE's own answer (the pod, Terminating), and the cache kept that pod for good."""
    informer = Informer(cast(Kube, None), "/api/v1/namespaces/ns/pods", "job", lambda *_: None, "job")
    pod = {"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"},
           "metadata": {"name": "w-0", "namespace": "ns", "uid": "u1", "resourceVersion": "10",
                        "labels": {"job": "j"}}}
    informer.observe(pod)  # the create's answer
    assert [p["metadata"]["name"] for p in informer.get("ns", "j")] == ["w-0"]
    terminating = {**pod, "metadata": {**pod["metadata"], "resourceVersion": "11",
                                       "deletionTimestamp": "2026-12-04T00:00:00Z"}}
    informer._drop({**terminating, "metadata": {**terminating["metadata"], "resourceVersion": "12"}})  # the watch
    informer.observe(terminating)  # the DELETE's answer, late
    assert informer.get("ns", "j") == []
    # a new pod of the same name (another uid) is taken
    informer.observe({**pod, "metadata": {**pod["metadata"], "uid": "u2", "resourceVersion": "13"}})
    assert [p["metadata"]["uid"] for p in informer.get("ns", "j")] == ["u2"]
