"""The operator's Kubernetes API calls: plain JSON over urllib3 (credentials.py says where and
as whom), not the `kubernetes` client library: the reconciler works on dicts, a round trip
through the generated models would cost more than the call, and importing the library costs
~30 MiB of RSS. Blocking: the handlers run
these in threads. Every verb used here is listed in manifests/rbac.yaml, and nothing else.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import quote, urlencode

from kubetrain.api.constants import GROUP, PLURAL, VERSION
from kubetrain.controller import credentials
from kubetrain.controller import names as n
from kubetrain.controller.observed import owned_by
from kubetrain.controller.ratelimit import TokenBucket

MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
TIMEOUT = 30
EVENT_SOURCE = "kubetrain-operator"
REPORTING_INSTANCE = socket.gethostname()[:128]


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body
        super().__init__(f"{status}: {self.message}")


class Transport:
    """HTTPS to the API server with a pool of `pool` connections (parallel calls do not queue
    for one); the bearer token, when there is one, re-read as it rotates."""

    def __init__(self, creds: credentials.Credentials, pool: int = 32) -> None:
        import urllib3

        self.creds = creds
        self.http = urllib3.PoolManager(num_pools=2, maxsize=pool, block=False, retries=False,
                                        ssl_context=creds.ssl_context())

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                timeout: float | tuple[float, float], stream: bool = False) -> Any:
        import urllib3

        token = self.creds.bearer()
        if token:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        return self.http.request(method, self.creds.server + path, body=body, headers=headers,
                                 timeout=urllib3.Timeout(connect=connect, read=read),
                                 preload_content=not stream, redirect=False)


def load_client(kubeconfig: str | None = None, pool: int = 32) -> Transport:
    """A Transport: in-cluster credentials when running in a pod, else the kubeconfig."""
    try:
        creds = credentials.load(kubeconfig)
    except credentials.Unsupported:
        creds = credentials.from_kubernetes_library(kubeconfig)
    return Transport(creds, pool)


def _with_query(path: str, query: dict[str, str] | None) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def _q(part: str) -> str:
    return quote(part, safe="")


class Kube:
    def __init__(self, api_client: Transport, limiter: TokenBucket | None = None) -> None:
        self.api = api_client
        self.limiter = limiter or TokenBucket(0, 1)
        self.calls = 0

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = JSON,
        query: dict[str, str] | None = None,
    ) -> Any:
        self.limiter.acquire()
        self.calls += 1
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": JSON, **({"Content-Type": content_type} if data is not None else {})}
        resp = self.api.request(method, _with_query(path, query), data, headers, TIMEOUT)
        text = resp.data.decode()
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, text)
        return json.loads(text) if text else None

    def stream(self, method: str, path: str, query: dict[str, str] | None = None, read_timeout: float = 330) -> Any:
        """A streaming response (a watch): the urllib3 response, to be read in chunks."""
        self.limiter.acquire()
        self.calls += 1
        resp = self.api.request(method, _with_query(path, query), None, {"Accept": JSON},
                                (TIMEOUT, read_timeout), stream=True)
        if not 200 <= resp.status < 300:
            text = resp.read().decode()
            resp.release_conn()
            raise ApiError(resp.status, text)
        return resp

    # ---------------------------------------------------------------- TrainingJobs

    @staticmethod
    def _job_path(namespace: str, name: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{_q(namespace)}/{PLURAL}"
        return f"{base}/{_q(name)}" if name else base

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.call("GET", self._job_path(namespace, name)))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def patch_job_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any],
    ) -> dict[str, Any]:
        """Merge-patch the status subresource; 409 when the job changed since it was read.
        Returns the job as written (the reconciler's cache takes it)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        return dict(self.call("PATCH", self._job_path(namespace, name) + "/status", body, MERGE_PATCH))

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the job (background: children go through owner references). The uid
        precondition keeps a re-created namesake safe."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid},
                "propagationPolicy": "Background"}
        return self._delete(self._job_path(namespace, name), body)

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str, now: str) -> tuple[str, str]:
        """A core/v1 Event about the job (what `kubectl describe tj` lists); its (namespace, name)."""
        meta = job["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": job.get("apiVersion"), "kind": job.get("kind"), "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta["uid"], "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": REPORTING_INSTANCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        made = self.call("POST", f"/api/v1/namespaces/{_q(meta['namespace'])}/events", body)
        return str(meta["namespace"]), str(made["metadata"]["name"])

    def count_event(self, namespace: str, name: str, count: int, now: str) -> None:
        """The same Event again: bump its count and lastTimestamp (client-go's aggregation)."""
        self.call("PATCH", f"/api/v1/namespaces/{_q(namespace)}/events/{_q(name)}",
                  {"count": count, "lastTimestamp": now}, MERGE_PATCH)

    # ---------------------------------------------------------------- children

    def list_pods(self, namespace: str, job: str, uid: str) -> list[dict[str, Any]]:
        out = self.call("GET", f"/api/v1/namespaces/{_q(namespace)}/pods",
                        query={"labelSelector": n.selector(job)})
        return [p for p in out.get("items") or [] if owned_by(p, uid)]

    def get(self, kind: str, namespace: str, name: str, api_version: str = "v1") -> dict[str, Any] | None:
        try:
            return dict(self.call("GET", self._path(kind, namespace, name, api_version)))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The object as created, or None when it already existed (names are deterministic)."""
        meta = manifest["metadata"]
        try:
            made = self.call("POST", self._path(manifest["kind"], meta["namespace"], "", manifest["apiVersion"]),
                             manifest)
        except ApiError as e:
            if e.status == 409:
                return None
            raise
        return dict(made) if isinstance(made, dict) else dict(manifest)

    def patch(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        path = self._path(manifest["kind"], meta["namespace"], meta["name"], manifest["apiVersion"])
        self.call("PATCH", path, manifest, MERGE_PATCH)

    def patch_status(self, kind: str, namespace: str, name: str, api_version: str, patch: dict[str, Any]) -> None:
        """Merge-patch a child's status subresource (a Kueue Workload's)."""
        self.call("PATCH", self._path(kind, namespace, name, api_version) + "/status", patch, MERGE_PATCH)

    def get_cluster_scoped(self, api_version: str, plural: str, name: str) -> dict[str, Any] | None:
        """A cluster-scoped object (PriorityClass, ResourceFlavor), None if there is none."""
        try:
            return dict(self.call("GET", f"/apis/{api_version}/{plural}/{_q(name)}"))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def served(self, api_version: str) -> bool:
        """Whether the API server serves `group/version` (e.g. Kueue's)."""
        try:
            self.call("GET", f"/apis/{api_version}")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def delete(self, manifest: dict[str, Any]) -> bool:
        meta = manifest["metadata"]
        return self._delete(self._path(manifest["kind"], meta["namespace"], meta["name"], manifest["apiVersion"]), None)

    def delete_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Graceful delete (the pod's own terminationGracePeriodSeconds): the pod as it is now
        (Terminating), or None if it was already gone."""
        try:
            out = self.call("DELETE", self._path("Pod", namespace, name), None)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        if isinstance(out, dict) and out.get("kind") == "Pod":
            return dict(out)
        return {"kind": "Status", "metadata": {"name": name, "namespace": namespace}}  # deleted: truthy

    def _delete(self, path: str, body: Any) -> bool:
        try:
            self.call("DELETE", path, body)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    @staticmethod
    def _path(kind: str, namespace: str, name: str = "", api_version: str = "v1") -> str:
        plural = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps", "PodGroup": "podgroups",
                  "Workload": "workloads", "LocalQueue": "localqueues"}[kind]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        base = f"{prefix}/namespaces/{_q(namespace)}/{plural}"
        return f"{base}/{_q(name)}" if name else base


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning `old` into `new` (None where a key goes away)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) else value
    return patch
