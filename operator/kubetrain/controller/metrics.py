"""The operator's Prometheus metrics (served on --metrics-port, /metrics).

Own registry rather than the global one: tests and embedders can run several operators in
one process without "duplicated timeseries" errors.

Two kinds: the operator's own work (reconcile passes, pods, the queue; no per-job labels) and one
set of series per TrainingJob it serves, read from the status it writes (labels ``namespace``,
``trainingjob``; a job's series go with the job, so label values stay bounded by the live jobs).
docs/metrics.md lists every metric; tests/observability checks that table against this module.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubetrain.api.models import TrainingJobStatus

PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
CAUSES = ("failure", "preemption", "rescale", "stall", "unschedulable")


def _version() -> str:
    try:
        return importlib.metadata.version("kubetrain")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class JobView:
    """What the per-job series show of one job's status."""

    phase: str
    desired: int = 0
    ready: int = 0
    restarts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, status: TrainingJobStatus) -> JobView:
        workers, restarts = status.workers, status.restarts
        return cls(
            phase=status.phase or "Pending",
            desired=workers.desired if workers else 0,
            ready=workers.ready if workers else 0,
            restarts={c: int(getattr(restarts, c, 0) or 0) for c in CAUSES} if restarts else {},
        )


class JobCollector(Collector):
    """Per-TrainingJob series, generated at scrape time from the last status each job was given."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], JobView] = {}
        self._lock = threading.Lock()

    def set(self, key: tuple[str, str], view: JobView | None) -> None:
        with self._lock:
            if view is None:
                self._jobs.pop(key, None)
            else:
                self._jobs[key] = view

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            jobs = sorted(self._jobs.items())
        labels = ["namespace", "trainingjob"]
        phase = GaugeMetricFamily("kubetrain_trainingjob_status_phase",
                                  "1 for the job's current phase, 0 for the others", labels=[*labels, "phase"])
        desired = GaugeMetricFamily("kubetrain_trainingjob_workers_desired",
                                    "Worker pods the job wants now (status.workers.desired)", labels=labels)
        ready = GaugeMetricFamily("kubetrain_trainingjob_workers_ready",
                                  "Worker pods that are Ready (status.workers.ready)", labels=labels)
        restarts = CounterMetricFamily("kubetrain_trainingjob_restarts",
                                       "Worker-group restarts of the job by cause (status.restarts)",
                                       labels=[*labels, "cause"])
        for (ns, name), view in jobs:
            for p in PHASES:
                phase.add_metric([ns, name, p], 1.0 if view.phase == p else 0.0)
            desired.add_metric([ns, name], view.desired)
            ready.add_metric([ns, name], view.ready)
            for cause in CAUSES:
                restarts.add_metric([ns, name, cause], view.restarts.get(cause, 0))
        yield from (phase, desired, ready, restarts)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge("kubetrain_operator_build_info", "Always 1: the operator is up; its version",
                                ["version"], registry=r)
        self.build_info.labels(version=_version()).set(1)
        self.jobs = Gauge("kubetrain_jobs", "TrainingJobs by phase", ["phase"], registry=r)
        self.reconcile_seconds = Histogram(
            "kubetrain_reconcile_duration_seconds", "Time of one reconcile pass of one job",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r,
        )
        self.reconcile_errors = Counter(
            "kubetrain_reconcile_errors_total", "Reconcile passes that raised (retried with backoff)", registry=r
        )
        self.pods_created = Counter("kubetrain_pods_created_total", "Worker pods created", registry=r)
        self.pods_deleted = Counter("kubetrain_pods_deleted_total", "Worker pods deleted", registry=r)
        self.restarts = Counter("kubetrain_restarts_total", "Worker-group restarts by cause (all jobs)",
                                ["cause"], registry=r)
        self.queue_depth = Gauge("kubetrain_workqueue_depth", "Jobs waiting for a reconcile pass", registry=r)
        self.per_job = JobCollector()
        r.register(self.per_job)
        for phase in PHASES:
            self.jobs.labels(phase=phase).set(0)
        for cause in CAUSES:
            self.restarts.labels(cause=cause)
        self._phase_of: dict[Hashable, str] = {}

    def job_phase(self, key: Hashable, phase: str | None) -> None:
        """Record a job's phase (None: the job is gone, and so are its per-job series)."""
        old = self._phase_of.pop(key, None)
        if old is not None:
            self.jobs.labels(phase=old).dec()
        if phase is not None:
            self._phase_of[key] = phase
            self.jobs.labels(phase=phase).inc()
        elif isinstance(key, tuple) and len(key) == 2:
            self.per_job.set((str(key[0]), str(key[1])), None)

    def job_status(self, key: tuple[str, str], status: TrainingJobStatus) -> None:
        """Record a job's status after a pass: its phase and its per-job series."""
        self.job_phase(key, status.phase)
        self.per_job.set(key, JobView.of(status))

    def count_restarts(self, before: dict[str, int], after: dict[str, int]) -> None:
        for cause in CAUSES:
            grew = after.get(cause, 0) - before.get(cause, 0)
            if grew > 0:
                self.restarts.labels(cause=cause).inc(grew)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
