"""Progress reporting: the JSONL metrics log, MFU, and the /metrics + /progress HTTP endpoints.

Local rank 0 of every node serves ``/metrics`` (Prometheus text) and ``/progress`` (JSON: step,
maxSteps, loss, learningRate, tokensPerSecond, mfu, lastCheckpointStep, worldSize, updatedAt) on
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

DEFAULT_PORT = 9090

def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for a compute dtype (``kubetrain.api.modelsize``'s GPU table, the one
    ``kubetrain plan`` uses); None on CPU or an unknown GPU.  fp32 counts TF32 tensor cores only
    when PyTorch is allowed to use them for matmuls."""
    if device.type != "cuda":
        return None
    return modelsize.peak_flops(
        torch.cuda.get_device_name(device), dtype, tf32=bool(torch.backends.cuda.matmul.allow_tf32)
    )


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
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


class Progress:
    """Shared state behind /progress and the Prometheus gauges."""

    def __init__(self, max_steps: int, world_size: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.g_step = Gauge("kubetrain_step", "Last completed optimizer step", registry=r)
        self.g_max = Gauge("kubetrain_max_steps", "Steps the job trains for", registry=r)
        self.g_loss = Gauge("kubetrain_loss", "Training loss of the last step", registry=r)
        self.g_lr = Gauge("kubetrain_learning_rate", "Learning rate of the last step", registry=r)
        self.g_tps = Gauge("kubetrain_tokens_per_second", "Training throughput (global)", registry=r)
        self.g_mfu = Gauge("kubetrain_mfu", "Model FLOPs utilisation (0-1)", registry=r)
        self.g_gn = Gauge("kubetrain_grad_norm", "Global gradient norm before clipping", registry=r)
        self.g_scale = Gauge("kubetrain_loss_scale", "fp16 loss scale", registry=r)
        self.c_skipped = Counter("kubetrain_skipped_steps", "Optimizer steps skipped (overflow)", registry=r)
        self.g_step_time = Gauge("kubetrain_step_time_seconds", "Wall time of the last step", registry=r)
        self.g_world = Gauge("kubetrain_world_size", "Training processes", registry=r)
        self.g_ckpt = Gauge("kubetrain_last_checkpoint_step", "Step of the last committed checkpoint", registry=r)
        self._lock = threading.Lock()
        self._skipped = 0
        self.state: dict[str, Any] = {
            "step": 0,
            "maxSteps": max_steps,
            "loss": None,
            "learningRate": None,
            "tokensPerSecond": None,
            "mfu": None,
            "lastCheckpointStep": None,
            "worldSize": world_size,
            "updatedAt": now_rfc3339(),
        }
        self.g_max.set(max_steps)
        self.g_world.set(world_size)

    def update(self, rec: dict[str, Any]) -> None:
        with self._lock:
            s = self.state
            s.update(
                step=rec["step"],
                loss=rec["loss"],
                learningRate=rec["lr"],
                tokensPerSecond=rec.get("tokens_per_s"),
                mfu=rec.get("mfu"),
                worldSize=rec.get("world_size", s["worldSize"]),
                updatedAt=now_rfc3339(),
            )
            self.g_step.set(rec["step"])
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

    def checkpoint_committed(self, step: int) -> None:
        with self._lock:
            self.state["lastCheckpointStep"] = step
            self.state["updatedAt"] = now_rfc3339()
            self.g_ckpt.set(step)

    def progress_json(self) -> bytes:
        with self._lock:
            return json.dumps(self.state).encode()


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
    return int(os.environ.get("KUBETRAIN_METRICS_PORT", str(DEFAULT_PORT)))


def metrics_host() -> str:
    """``$KUBETRAIN_METRICS_HOST``: the address to serve on (default "": all interfaces). Set where
    pods share one network, as in the e2e tests, where every pod's IP is a loopback address."""
    return os.environ.get("KUBETRAIN_METRICS_HOST", "")


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
