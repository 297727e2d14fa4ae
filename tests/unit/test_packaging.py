"""The images keep their promises: the operator image has no torch, both run as non-root."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_operator_image_has_no_torch_and_is_non_root() -> None:
    ins = _instructions(REPO / "Dockerfile")
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    # The operator image installs exactly images/operator.lock (which has no torch) and checks.
    assert "operator.lock" in runs and "torch" not in runs.replace("find_spec('torch')", "")
    assert "find_spec('torch') is not None" in runs
    assert "torch" not in (REPO / "images" / "operator.lock").read_text()
    users = [rest for op, rest in ins if op == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    assert ins[-1][0] == "CMD" and ins[-2][0] == "ENTRYPOINT"


def test_trainer_image_runs_launcher_as_non_root() -> None:
    ins = _instructions(REPO / "trainer_image" / "Dockerfile")
    assert [rest for op, rest in ins if op == "ENTRYPOINT"] == ['["python", "-m", "kubetrain_trainer.launch"]']
    users = [rest for op, rest in ins if op == "USER"]
    assert users and not users[-1].startswith(("0", "root"))


def test_extras_keep_base_install_small() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(meta["dependencies"]).lower()
    assert "torch" not in base and "kopf" not in base and "kubernetes" not in base
    extras = meta["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["trainer"])
    assert not any(d.startswith("torch") for d in extras["operator"])
    assert {"operator", "trainer", "dev", "all"} <= set(extras)


def test_base_tools_import_without_torch_or_kopf() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'kopf', 'kubernetes'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from kubetrain.cli import main\n"
        "assert main(['crd']) == 0\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
