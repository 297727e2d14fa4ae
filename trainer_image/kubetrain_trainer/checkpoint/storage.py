"""DCP's file system writer, with every file hashed while it is written; the structural check of a
checkpoint directory; resolving a user-given checkpoint path (initFrom, export)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

from .layout import DCP_METADATA, META_FILE, candidates, read_meta
from .manifest import MANIFEST_FILE, HashingStream, Recorder, verify_dir

log = logging.getLogger("kubetrain_trainer")


def hashing_writer(path: Path, recorder: Recorder) -> Any:
    """``FileSystemWriter(path, sync_files=True)`` whose streams hash what they write into
    ``recorder`` (file name -> size and checksum), including DCP's ``.metadata``."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    class _HashingFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Generator[Any, None, None]:
            if "w" not in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            p = Path(path)
            with p.open(mode) as raw:
                hashing = HashingStream(raw, lambda rec, name=p.name: recorder.add(name, rec), recorder.fail)
                try:
                    yield hashing
                finally:
                    hashing.close()

        def rename(self, path: Any, new_path: Any) -> None:
            super().rename(path, new_path)
            recorder.rename(Path(path).name, Path(new_path).name)

    writer = FileSystemWriter(str(path), sync_files=True)
    writer.fs = _HashingFileSystem()
    return writer


def structure_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete DCP checkpoint, by its structure alone (None: complete)."""
    if not path.is_dir():
        return "not a directory"
    try:
        read_meta(path)
    except (OSError, ValueError) as e:
        return f"{META_FILE} unreadable: {e}"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # missing, truncated or not a pickle
        return f"{DCP_METADATA} unreadable: {type(e).__name__}: {e}"
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if rel is None:
            continue
        if rel not in sizes:
            try:
                sizes[rel] = (path / rel).stat().st_size
            except OSError:
                return f"data file {rel} is missing"
        end = int(info.offset) + int(info.length)
        if sizes[rel] < end:
            return f"data file {rel} is truncated ({sizes[rel]} bytes, the metadata needs {end})"
    return None


def problem(path: Path) -> str | None:
    """Why ``path`` is not a valid checkpoint: its manifest's checksums (every file read once), then
    its structure.  None: valid.  OSErrors other than a missing file propagate."""
    return verify_dir(path) or structure_problem(path)


def find_valid(root: Path) -> tuple[Path | None, list[str]]:
    """The newest valid checkpoint under a checkpoints root (one process) and why others were skipped."""
    paths, warnings = candidates(root)
    for path in paths:
        why = problem(path)
        if why is None:
            return path, warnings
        warnings.append(f"skipping checkpoint {path}: {why}")
    return None, warnings


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, a checkpoints root (its newest valid checkpoint) or a run directory
    (``checkpoints/``) -> the checkpoint directory, verified.  Raises FileNotFoundError."""
    p = Path(path)
    if any((p / name).exists() for name in (DCP_METADATA, META_FILE, MANIFEST_FILE)):
        why = problem(p)
        if why:
            raise FileNotFoundError(f"{p} is not a valid checkpoint: {why}")
        return p
    for root in (p, p / "checkpoints"):
        paths, _ = candidates(root)
        if paths:
            found, warnings = find_valid(root)
            for w in warnings:
                log.warning("%s", w)
            if found is not None:
                return found
            raise FileNotFoundError(f"no valid checkpoint under {root}: " + "; ".join(warnings))
    raise FileNotFoundError(f"no checkpoint at {p} (a checkpoint, checkpoints or run directory)")
