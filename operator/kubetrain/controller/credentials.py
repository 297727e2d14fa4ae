"""Where the API server is and who the operator is: in-cluster (the pod's ServiceAccount) or a
kubeconfig, read without the `kubernetes` client library (whose import costs the operator
~30 MiB of RSS). Serves both the operator's own calls (kubeio.Transport) and kopf's login.

Kubeconfigs with client certificates or tokens (inline or in files) are read here; one that
needs an exec plugin or an auth provider is handed to the `kubernetes` library (Unsupported)."""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0  # the kubelet rotates projected tokens long before they expire


class Unsupported(Exception):
    """The kubeconfig needs what only the `kubernetes` library does (exec plugins, auth providers)."""


@dataclass
class Credentials:
    server: str
    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    namespace: str | None = None
    _token_read: float = field(default=0.0, repr=False)

    def bearer(self) -> str | None:
        """The token, re-read from its file now and then (rotated ServiceAccount tokens)."""
        if self.token_file and (self.token is None or time.monotonic() - self._token_read > TOKEN_REREAD_SECONDS):
            self.token = Path(self.token_file).read_text().strip()
            self._token_read = time.monotonic()
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def in_cluster() -> Credentials | None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (SA_DIR / "token").exists():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    namespace = SA_DIR / "namespace"
    return Credentials(server=f"https://{host}:{port}", ca_file=str(SA_DIR / "ca.crt"),
                       token_file=str(SA_DIR / "token"),
                       namespace=namespace.read_text().strip() if namespace.exists() else None)


def load(kubeconfig: str | None = None) -> Credentials:
    """In-cluster credentials when running in a pod and no kubeconfig is named, else the
    kubeconfig's current context (`kubeconfig`, $KUBECONFIG's first file, ~/.kube/config)."""
    if kubeconfig is None and (found := in_cluster()) is not None:
        return found
    path = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    return from_kubeconfig(Path(path))


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item.get(what) or {})
    raise ValueError(f"{path}: no {what} named {name!r}")


def from_kubeconfig(path: Path) -> Credentials:
    doc = yaml.safe_load(path.read_text()) or {}
    context_name = doc.get("current-context")
    if not context_name:
        raise ValueError(f"{path}: no current-context")
    context = _named(doc.get("contexts"), context_name, "context", path)
    cluster = _named(doc.get("clusters"), context["cluster"], "cluster", path)
    user = _named(doc.get("users"), context["user"], "user", path) if context.get("user") else {}
    if user.get("exec") or user.get("auth-provider") or user.get("username"):
        raise Unsupported(f"{path}: user {context.get('user')!r} needs the kubernetes library's loader")
    base = path.parent
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=_file(cluster, "certificate-authority", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=_file(user, "client-certificate", base),
        key_file=_file(user, "client-key", base),
        token=user.get("token"),
        token_file=str(base / user["tokenFile"]) if user.get("tokenFile") else None,
        namespace=context.get("namespace"),
    )


def _file(section: dict[str, Any], key: str, base: Path) -> str | None:
    """A path for `key`: the file it names (relative to the kubeconfig), or its `-data` held
    where ssl can read it (ssl reads certificates and keys from files only)."""
    if data := section.get(f"{key}-data"):
        return _private_file(base64.b64decode(data))
    if value := section.get(key):
        return str(base / value)
    return None


_held: dict[bytes, str] = {}


def _private_file(data: bytes) -> str:
    """`data` as a file only this process reads and nothing has to remove: an anonymous in-memory
    file (memfd, mode 0600) that goes with the process however it ends, even by SIGKILL. Where
    there is no memfd (not Linux), a private temporary file removed at exit. The same data read
    again (the kubeconfig is read by each client) is the same file."""
    if (name := _held.get(data)) is not None:
        return name
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("kubetrain-credential", os.MFD_CLOEXEC)
        os.fchmod(fd, 0o600)
        with os.fdopen(os.dup(fd), "wb") as out:
            out.write(data)
        name = f"/proc/self/fd/{fd}"  # fd stays open for the life of the process
    else:
        fd, name = tempfile.mkstemp(prefix="kubetrain-", suffix=".pem")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        atexit.register(_unlink, name)
    _held[data] = name
    return name


def _unlink(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def from_kubernetes_library(kubeconfig: str | None) -> Credentials:
    """The `kubernetes` library's loader, for what load() does not read (exec plugins, auth providers)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    auth = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
    token = auth.split(" ", 1)[1] if auth and " " in auth else auth
    return Credentials(server=configuration.host.rstrip("/"), ca_file=configuration.ssl_ca_cert,
                       insecure=not configuration.verify_ssl, cert_file=configuration.cert_file,
                       key_file=configuration.key_file, token=token)
