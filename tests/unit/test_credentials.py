"""The operator's credentials without the kubernetes library: kubeconfigs as kubectl writes them,
in-cluster ServiceAccount files, token rotation, and what is left to the library."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetrain.controller import credentials


def write_kubeconfig(path: Path, user: dict[str, object], cluster: dict[str, object] | None = None) -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443/", **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
    }
    path.write_text(json.dumps(doc))
    return path


def test_inline_certificates_become_private_files(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    data = base64.b64encode(pem).decode()
    creds = credentials.from_kubeconfig(write_kubeconfig(
        tmp_path / "kc", {"client-certificate-data": data, "client-key-data": data},
        {"certificate-authority-data": data}))
    assert creds.server == "https://127.0.0.1:6443" and creds.namespace == "team"
    for name in (creds.ca_file, creds.cert_file, creds.key_file):
        assert name is not None and Path(name).read_bytes() == pem
        assert os.stat(name).st_mode & 0o077 == 0, oct(os.stat(name).st_mode)


def test_inline_credentials_leave_no_file_even_when_the_process_is_killed(tmp_path: Path) -> None:
    """The operator is stopped by SIGTERM or SIGKILL as often as it exits: a client key written to
    a temporary file would outlive it. Loading the same kubeconfig twice (each client reads it)
    gives the same files."""
    pem = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
    data = base64.b64encode(pem).decode()
    kubeconfig = write_kubeconfig(tmp_path / "kc", {"client-certificate-data": data, "client-key-data": data})
    temp = tmp_path / "tmp"
    temp.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from kubetrain.controller import credentials\n"
         "a, b = (credentials.from_kubeconfig(__import__('pathlib').Path(sys.argv[1])) for _ in range(2))\n"
         "assert (a.cert_file, a.key_file) == (b.cert_file, b.key_file), (a, b)\n"
         "print(open(a.key_file, 'rb').read().decode().splitlines()[0], flush=True)\n"
         "time.sleep(60)\n", str(kubeconfig)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temp)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "-----BEGIN PRIVATE KEY-----"
        assert list(temp.iterdir()) == []
    finally:
        child.kill()
        child.wait()
    assert list(temp.iterdir()) == []


def test_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    creds = credentials.from_kubeconfig(write_kubeconfig(
        tmp_path / "kc", {"client-certificate": "certs/me.crt", "client-key": "/abs/me.key"},
        {"certificate-authority": "ca.crt", "insecure-skip-tls-verify": True}))
    assert creds.ca_file == str(tmp_path / "ca.crt") and creds.insecure
    assert creds.cert_file == str(tmp_path / "certs/me.crt") and creds.key_file == "/abs/me.key"


def test_a_token_file_is_read_again_after_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("first\n")
    creds = credentials.from_kubeconfig(write_kubeconfig(tmp_path / "kc", {"tokenFile": "token"}))
    assert creds.bearer() == "first"
    (tmp_path / "token").write_text("second\n")
    assert creds.bearer() == "first"  # cached between reads
    monkeypatch.setattr(credentials, "TOKEN_REREAD_SECONDS", 0.0)
    assert creds.bearer() == "second"


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "oidc"}},
                                  {"username": "a", "password": "b"}])
def test_what_needs_the_library_is_left_to_it(tmp_path: Path, user: dict[str, object]) -> None:
    with pytest.raises(credentials.Unsupported):
        credentials.from_kubeconfig(write_kubeconfig(tmp_path / "kc", user))


def test_a_missing_context_names_it(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "t"})
    doc = json.loads(path.read_text())
    doc["current-context"] = "other"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="no context named 'other'"):
        credentials.from_kubeconfig(path)


def test_in_cluster_reads_the_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in (("token", "sa-token"), ("ca.crt", "ca"), ("namespace", "kubetrain-system")):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(credentials, "SA_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "198.19.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = credentials.load()
    assert (creds.server, creds.ca_file, creds.namespace) == ("https://198.19.0.1:443", str(tmp_path / "ca.crt"),
                                                               "kubetrain-system")
    assert creds.bearer() == "sa-token"
    # a kubeconfig named explicitly wins over the pod's identity
    kc = write_kubeconfig(tmp_path / "kc", {"token": "explicit"})
    assert credentials.load(str(kc)).bearer() == "explicit"


def test_the_operator_process_does_not_import_the_kubernetes_library(tmp_path: Path) -> None:
    """kopf would import it (~30 MiB of RSS) if the operator did not hide it."""
    kc = write_kubeconfig(tmp_path / "kc", {"token": "t"})
    code = ("import sys; from kubetrain.cli import operator as o; o._hide_kubernetes_client(sys.argv[1]); "
            "import kopf; from kubetrain.controller import handlers; "
            "print(sorted(m for m in sys.modules if m.startswith('kubernetes') and sys.modules[m]))")
    out = subprocess.run([sys.executable, "-c", code, str(kc)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    exec_kc = write_kubeconfig(tmp_path / "exec", {"exec": {"command": "x"}})
    out = subprocess.run([sys.executable, "-c", code, str(exec_kc)], capture_output=True, text=True, check=True).stdout
    assert "kubernetes" in out  # the library stays for its exec plugin loader
