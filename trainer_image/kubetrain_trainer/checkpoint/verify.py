"""Offline verification of a run's checkpoints (``kubetrain checkpoint verify DIR``), torch-free:
every file of every checkpoint is read once and compared with its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .layout import LATEST, STEP_DIR, committed_dirs, read_latest
from .manifest import MANIFEST_FILE, verify_dir


@dataclass
class Verdict:
    path: Path
    problem: str | None  # None: good
    latest: bool = False
    bytes: int = 0


def checkpoints_root(path: Path) -> Path | None:
    """The checkpoints root of ``path`` (a run directory, a checkpoints root), or None when
    ``path`` is itself one checkpoint."""
    if (path / MANIFEST_FILE).exists() or STEP_DIR.match(path.name):
        return None
    for root in (path, path / "checkpoints"):
        if (root / LATEST).exists() or committed_dirs(root):
            return root
    return path


def _size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    except OSError:
        return 0


def verify_path(path: Path) -> list[Verdict]:
    """A verdict per checkpoint under ``path`` (newest first), or for ``path`` itself.  OSErrors
    (unreadable directory or file) propagate."""
    root = checkpoints_root(path)
    if root is None:
        return [Verdict(path, verify_dir(path), bytes=_size(path))]
    latest = read_latest(root)
    return [Verdict(p, verify_dir(p), latest=p.name == latest, bytes=_size(p)) for _, p in committed_dirs(root)]
