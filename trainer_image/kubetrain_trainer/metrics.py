"""Progress reporting: the JSONL metrics log, MFU, and the /metrics + /progress HTTP endpoints.

Local rank 0 of every node serves ``/metrics`` (Prometheus text) and ``/progress`` (JSON: a
``kubetrain.api.progress.ProgressReport``, the model the operator reads it with) on
``$KUBETRAIN_METRICS_PORT`` (default 9090; 0 disables), on the address ``$KUBETRAIN_METRICS_HOST``
(default: all interfaces).
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubetrain.api import modelsize
from kubetrain.api.constants import ENV_METRICS_HOST, ENV_METRICS_PORT, ENV_PEAK_FLOPS
from kubetrain.api.progress import ProgressReport

from .errors import SpecError

DEFAULT_PORT = 9090

def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for a compute dtype: ``$KUBETRAIN_PEAK_FLOPS`` when set (a device
    missing from the table, or a CPU), else ``kubetrain.api.modelsize``'s GPU table (the one
    ``kubetrain plan`` uses); None on CPU or an unknown GPU.  fp32 counts TF32 tensor cores only
    when PyTorch is allowed to use them for matmuls."""
    declared = os.environ.get(ENV_PEAK_FLOPS, "").strip()
    if declared:
        try:
            value = float(declared)
        except ValueError:
            raise SpecError(f"{ENV_PEAK_FLOPS}={declared!r}: expected a number of FLOP/s per device, "
                            "e.g. 989e12") from None
        if value <= 0:
            raise SpecError(f"{ENV_PEAK_FLOPS}={declared!r}: must be > 0 (unset it to disable MFU)")
        return value
    if device.type != "cuda":
        return None
    return modelsize.peak_flops(
        torch.cuda.get_device_name(device), dtype, tf32=bool(torch.backends.cuda.matmul.allow_tf32)
    )


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # This process's own peak RSS: VmHWM (per address space). getrusage's ru_maxrss is carried
    # across exec on Linux, so a worker forked by a large launcher would report the launcher's size.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # peak RSS (Linux: KiB)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class JsonlLog:
    """Append-only JSON-lines log (one object per line), flushed per record."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, allow_nan=True) + "\n")

    def close(self) -> None:
        self._f.close()


# The trainer's metrics: one registry per process, every series labelled ``trainingjob`` (the
# TrainingJob's name; the scrape adds namespace/pod). docs/metrics.md lists them, a test checks it.
JOB_LABEL = "trainingjob"


class _Lazy:
    """One labelled series that appears with its first value: no misleading 0 (a "perfect" loss,
    no throughput) before the first step reports one."""

    def __init__(self, parent: Gauge, labels: dict[str, str]) -> None:
        self.parent, self.labels = parent, labels

    def set(self, value: float) -> None:
        self.parent.labels(**self.labels).set(value)


class Progress:
    """Shared state behind /progress and the Prometheus metrics."""

    def __init__(self, max_steps: int, world_size: int, *, trainingjob: str = "kubetrain",
                 checkpoint_interval: int = 0, device: str = "cpu") -> None:
        self.registry = CollectorRegistry()
        r, lbl = self.registry, (JOB_LABEL,)
        job = {JOB_LABEL: trainingjob}
        self.job = job
        self.device = device

        def gauge(name: str, doc: str) -> Any:  # known from the start
            return Gauge(name, doc, lbl, registry=r).labels(**job)

        def later(name: str, doc: str, **extra: str) -> _Lazy:  # known from the first step on
            return _Lazy(Gauge(name, doc, (*lbl, *extra), registry=r), {**job, **extra})

        self.g_step = gauge("kubetrain_trainer_step", "Last completed optimizer step")
        self.g_max = gauge("kubetrain_trainer_max_steps", "Optimizer steps the job trains for")
        self.g_loss = later("kubetrain_trainer_loss", "Training loss of the last step (global-batch mean)")
        self.g_lr = later("kubetrain_trainer_learning_rate", "Learning rate of the last step")
        self.g_tps = later("kubetrain_trainer_tokens_per_second", "Training throughput of the last step (all workers)")
        self.g_mfu = later("kubetrain_trainer_mfu_ratio",
                           "Model FLOPs utilisation of the last step (0-1; needs the device's peak FLOP/s)")
        self.g_gn = later("kubetrain_trainer_grad_norm", "Global gradient norm of the last step, before clipping")
        self.g_scale = later("kubetrain_trainer_loss_scale", "Loss scale of the last step (1 without fp16 scaling)")
        self.c_skipped = Counter("kubetrain_trainer_skipped_steps",
                                 "Optimizer steps skipped (non-finite gradients)", lbl, registry=r).labels(**job)
        self.g_step_time = later("kubetrain_trainer_step_duration_seconds", "Wall time of the last step")
        self.g_step_ts = gauge("kubetrain_trainer_last_step_timestamp_seconds",
                               "Unix time of the last step report (process start before the first)")
        self.g_world = gauge("kubetrain_trainer_world_size", "Training processes in the job")
        self.g_mem = later("kubetrain_trainer_device_memory_peak_bytes",
                           "Peak memory of local rank 0: allocated CUDA memory (device=cuda) or RSS (device=cpu)",
                           device=device)
        self.g_ckpt = gauge("kubetrain_trainer_checkpoint_last_step",
                            "Step of the last committed (or restored) checkpoint; 0 before the first")
        self.g_ckpt_ts = gauge("kubetrain_trainer_checkpoint_last_timestamp_seconds",
                               "Unix time of the last committed checkpoint (process start before the first)")
        self.g_ckpt_s = later("kubetrain_trainer_checkpoint_duration_seconds",
                              "Wall time of the last checkpoint save, start to commit")
        self.g_interval = gauge("kubetrain_trainer_checkpoint_interval_steps",
                                "spec.checkpoint.intervalSteps (0: only at the end and on preemption)")
        self._lock = threading.Lock()
        self._skipped = 0
        self.report = ProgressReport(step=0, max_steps=max_steps, world_size=world_size, updated_at=now_rfc3339())
        started = time.time()
        self.g_max.set(max_steps)
        self.g_world.set(world_size)
        self.g_step_ts.set(started)
        self.g_ckpt.set(0)
        self.g_ckpt_ts.set(started)
        self.g_interval.set(checkpoint_interval)

    def update(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._report(
                step=rec["step"],
                loss=rec["loss"],
                learning_rate=rec["lr"],
                tokens_per_second=rec.get("tokens_per_s"),
                mfu=rec.get("mfu"),
                world_size=rec.get("world_size") or self.report.world_size,
            )
            self.g_step.set(rec["step"])
            self.g_step_ts.set(time.time())
            self.g_loss.set(rec["loss"])
            self.g_lr.set(rec["lr"])
            self.g_tps.set(rec.get("tokens_per_s") or 0.0)
            if rec.get("mfu") is not None:
                self.g_mfu.set(rec["mfu"])
            self.g_gn.set(rec.get("grad_norm") or 0.0)
            self.g_scale.set(rec.get("loss_scale") or 1.0)
            skipped = int(rec.get("skipped_steps") or 0)
            if skipped > self._skipped:
                self.c_skipped.inc(skipped - self._skipped)
                self._skipped = skipped
            self.g_step_time.set(rec.get("step_time") or 0.0)
            if rec.get("world_size"):
                self.g_world.set(rec["world_size"])
            if rec.get("peak_mem") is not None:
                self.g_mem.set(rec["peak_mem"])

    def checkpoint_committed(self, step: int, seconds: float | None = None) -> None:
        """A checkpoint of ``step`` is committed (``seconds``: its save time; None for a restore)."""
        with self._lock:
            self._report(last_checkpoint_step=step)
            self.g_ckpt.set(step)
            self.g_ckpt_ts.set(time.time())
            if seconds is not None:
                self.g_ckpt_s.set(seconds)

    def progress_json(self) -> bytes:
        with self._lock:
            return self.report.to_json()

    def _report(self, **update: Any) -> None:
        """A new /progress report: the last one with ``update`` (validated: non-finite numbers become null)."""
        self.report = ProgressReport.model_validate({**self.report.model_dump(), **update, "updated_at": now_rfc3339()})


class _Handler(BaseHTTPRequestHandler):
    progress: Progress

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype = generate_latest(self.progress.registry), CONTENT_TYPE_LATEST
        elif path == "/progress":
            body, ctype = self.progress.progress_json(), "application/json"
        elif path in ("/healthz", "/"):
            body, ctype = b"ok\n", "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request logging
        pass


class MetricsServer:
    """Serves /metrics and /progress from a daemon thread; ``port=0`` in the constructor binds a free
    port (tests); use ``metrics_port()`` for the configured one. ``host=None``: ``metrics_host()``."""

    def __init__(self, progress: Progress, port: int, host: str | None = None) -> None:
        host = metrics_host() if host is None else host
        handler = type("Handler", (_Handler,), {"progress": progress})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def metrics_port() -> int:
    """``$KUBETRAIN_METRICS_PORT`` (default 9090); 0 disables the server."""
    return int(os.environ.get(ENV_METRICS_PORT, str(DEFAULT_PORT)))


def metrics_host() -> str:
    """``$KUBETRAIN_METRICS_HOST``: the address to serve on (default "": all interfaces). Set where
    pods share one network, as in the e2e tests, where every pod's IP is a loopback address."""
    return os.environ.get(ENV_METRICS_HOST, "")


class Throughput:
    """tokens/s and MFU of the last step."""

    def __init__(self, tokens_per_step: int, flops_per_token: float | None, peak: float | None, n_devices: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_total = peak * n_devices if peak else None

    def measure(self, step_time: float) -> tuple[float, float | None]:
        tps = self.tokens_per_step / max(step_time, 1e-9)
        if self.peak_total is None or self.flops_per_token is None:
            return tps, None
        return tps, tps * self.flops_per_token / self.peak_total


def monotonic() -> float:
    return time.perf_counter()
