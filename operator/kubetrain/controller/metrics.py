"""The operator's Prometheus metrics (served on --metrics-port, /metrics).

Own registry rather than the global one: tests and embedders can run several operators in
one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

from collections.abc import Hashable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
CAUSES = ("failure", "preemption", "rescale", "stall", "unschedulable")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self.restarts = Counter("kubetrain_restarts_total", "Worker-group restarts by cause", ["cause"], registry=r)
        self.queue_depth = Gauge("kubetrain_workqueue_depth", "Jobs waiting for a reconcile pass", registry=r)
        for phase in PHASES:
            self.jobs.labels(phase=phase).set(0)
        for cause in CAUSES:
            self.restarts.labels(cause=cause)
        self._phase_of: dict[Hashable, str] = {}

    def job_phase(self, key: Hashable, phase: str | None) -> None:
        """Record a job's phase (None: the job is gone)."""
        old = self._phase_of.pop(key, None)
        if old is not None:
            self.jobs.labels(phase=old).dec()
        if phase is not None:
            self._phase_of[key] = phase
            self.jobs.labels(phase=phase).inc()

    def count_restarts(self, before: dict[str, int], after: dict[str, int]) -> None:
        for cause in CAUSES:
            grew = after.get(cause, 0) - before.get(cause, 0)
            if grew > 0:
                self.restarts.labels(cause=cause).inc(grew)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
