"""Test PKI made with the openssl CLI: a CA, the API server's serving cert, client certs, SA keys."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"


def _openssl(*args: str | Path, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make the test cluster's certificates")
    proc = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{proc.stderr}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path, cwd=path.parent)
    path.chmod(0o600)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    apiserver: KeyPair
    sa_key: Path  # service-account signing key (private)
    sa_pub: Path
    clients: dict[str, KeyPair]


def issue(
    d: Path, name: str, subject: str, ca: KeyPair, usage: str, sans: list[str] | None = None
) -> KeyPair:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _ec_key(key)
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr, cwd=d)
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
        str(secrets.randbits(62) + 2), "-days", DAYS, "-sha256", "-extfile", ext,
        "-out", crt, cwd=d,
    )
    csr.unlink()
    ext.unlink()
    return KeyPair(crt, key)


# client name -> subject; O= is the group. Components use the identities RBAC's bootstrap policy knows.
CLIENTS: dict[str, str] = {
    "admin": "/O=system:masters/CN=kubetrain-admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
    "kube-scheduler": "/CN=system:kube-scheduler",
    "kwok": "/O=system:masters/CN=kwok-controller",
    "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
    "front-proxy-client": "/CN=front-proxy-client",  # the API server's identity towards aggregated APIs
}


def generate(d: Path, *, service_ip: str, extra_ips: list[str] | None = None) -> Pki:
    """Write every key and certificate into directory d (created)."""
    d.mkdir(parents=True, exist_ok=True)
    ca = KeyPair(d / "ca.crt", d / "ca.key")
    _ec_key(ca.key)
    _openssl(
        "req", "-x509", "-new", "-key", ca.key, "-subj", "/CN=kubetrain-test-ca", "-days", DAYS, "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out", ca.cert, cwd=d,
    )
    sans = [
        *sorted({"IP:127.0.0.1", f"IP:{service_ip}", *(f"IP:{ip}" for ip in extra_ips or [])}), "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ]
    apiserver = issue(d, "apiserver", "/CN=kube-apiserver", ca, "serverAuth", sans)
    clients = {name: issue(d, name, subj, ca, "clientAuth") for name, subj in CLIENTS.items()}
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _ec_key(sa_key)
    _openssl("pkey", "-in", sa_key, "-pubout", "-out", sa_pub, cwd=d)
    return Pki(ca=ca, apiserver=apiserver, sa_key=sa_key, sa_pub=sa_pub, clients=clients)
