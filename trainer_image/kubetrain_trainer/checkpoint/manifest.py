"""A committed checkpoint's manifest: every file it holds, with its size and a fast checksum.

Torch-free (``kubetrain checkpoint verify`` imports it without the trainer's dependencies).

The checksum is XXH3-64 (``xxhash``): computed WHILE the file is written, on the bytes handed to
``write()`` (``HashingStream``), never in a second pass over the data; verified on load by reading
each file once.  The manifest carries a checksum of its own content, so a flipped byte in the
manifest is detected too::

    {"format": 1, "algorithm": "xxh3_64", "step": 100,
     "files": {".metadata": {"size": 1234, "xxh3_64": "9f2c..."}, "__0_0.distcp": {...}, ...},
     "self": "<xxh3_64 of the canonical JSON of everything above>"}
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
ALGORITHM = "xxh3_64"
READ_CHUNK = 8 << 20


def _hasher() -> Any:
    try:
        import xxhash
    except ImportError as e:  # pragma: no cover - declared in the trainer extra
        raise RuntimeError("checkpoint checksums need the xxhash package: pip install 'kubetrain[trainer]'") from e
    return xxhash.xxh3_64()


def digest_bytes(data: bytes | memoryview) -> str:
    h = _hasher()
    h.update(data)
    return str(h.hexdigest())


@dataclass(frozen=True)
class FileRecord:
    size: int
    digest: str


class HashingStream:
    """A writable binary stream that hashes what passes through it into the real file.

    ``torch.save`` and DCP only call write/tell/flush/fileno/close on it; everything else is
    delegated to the underlying file."""

    def __init__(self, raw: Any, on_close: Any, on_error: Any = None) -> None:
        self._raw = raw
        self._on_error = on_error or (lambda _e: None)
        self._hash = _hasher()
        self._size = 0
        self._on_close = on_close
        self._closed = False

    def write(self, data: Any) -> int:
        try:
            n = self._raw.write(data)
        except OSError as e:  # torch.save turns it into a RuntimeError without the errno: keep it
            self._on_error(e)
            raise
        view = memoryview(data).cast("B")
        written = len(view) if n is None else n
        self._hash.update(view[:written])
        self._size += written
        return written

    def tell(self) -> int:
        return int(self._raw.tell())

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._raw.close()
        self._on_close(FileRecord(self._size, str(self._hash.hexdigest())))

    def __enter__(self) -> HashingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Recorder:
    """What one process wrote: file name (relative to the checkpoint directory) -> record.
    Thread-safe (DCP may write files from several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files: dict[str, FileRecord] = {}
        self.errors: list[OSError] = []  # write errors seen by this process (their errno survives)

    def add(self, name: str, record: FileRecord) -> None:
        with self._lock:
            self.files[name] = record

    def fail(self, error: OSError) -> None:
        with self._lock:
            self.errors.append(error)

    def rename(self, old: str, new: str) -> None:
        with self._lock:
            if old in self.files:
                self.files[new] = self.files.pop(old)


def hash_file(path: Path, buf: bytearray | None = None) -> FileRecord:
    """Read ``path`` once and hash it (raises OSError)."""
    h = _hasher()
    size = 0
    buf = buf if buf is not None else bytearray(READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            size += n
    return FileRecord(size, str(h.hexdigest()))


# ----------------------------------------------------------------------------- the manifest file


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def build_manifest(step: int, files: dict[str, FileRecord]) -> str:
    body: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "algorithm": ALGORITHM,
        "step": step,
        "files": {name: {"size": r.size, ALGORITHM: r.digest} for name, r in sorted(files.items())},
    }
    return json.dumps({**body, "self": digest_bytes(_canonical(body))}, indent=1, sort_keys=True) + "\n"


class ManifestError(ValueError):
    """The manifest is missing, unreadable or does not match its own checksum."""


def read_manifest(path: Path) -> dict[str, FileRecord]:
    """The file table of the checkpoint directory ``path`` (raises ManifestError; OSError other than
    a missing file propagates: a storage problem is not damage)."""
    try:
        text = (path / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST_FILE} is missing") from None
    try:
        doc = json.loads(text)
        body = {key: doc[key] for key in ("format", "algorithm", "step", "files")}
        claimed = doc["self"]
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{MANIFEST_FILE} is not a valid manifest: {type(e).__name__}: {e}") from None
    if digest_bytes(_canonical(body)) != claimed:
        raise ManifestError(f"{MANIFEST_FILE} does not match its own checksum (damaged)")
    if body["algorithm"] != ALGORITHM:
        raise ManifestError(f"{MANIFEST_FILE}: unknown checksum algorithm {body['algorithm']!r}")
    try:
        return {name: FileRecord(int(v["size"]), str(v[ALGORITHM])) for name, v in body["files"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ManifestError(f"{MANIFEST_FILE}: malformed file entry: {e}") from None


def check_file(path: Path, name: str, want: FileRecord, buf: bytearray | None = None) -> str | None:
    """Why ``path/name`` is not what the manifest recorded (None: it is).  A missing file is damage;
    other OSErrors (permission, I/O) propagate."""
    target = path / name
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        return f"{name} is missing"
    if size != want.size:
        return f"{name} has {size} bytes, the manifest recorded {want.size}"
    got = hash_file(target, buf)
    if got.digest != want.digest:
        return f"{name} does not match its checksum (damaged: {ALGORITHM} {got.digest}, recorded {want.digest})"
    return None


def check_files(path: Path, table: dict[str, FileRecord], names: Iterable[str]) -> str | None:
    """The first problem among ``names`` of the manifest ``table`` (None: all good)."""
    buf = bytearray(READ_CHUNK)
    for name in names:
        why = check_file(path, name, table[name], buf)
        if why:
            return why
    return None


def share(table: dict[str, FileRecord], rank: int, world: int) -> list[str]:
    """The files rank ``rank`` of ``world`` verifies: largest first, each to the least loaded rank."""
    loads = [0] * world
    mine: list[str] = []
    for name, rec in sorted(table.items(), key=lambda kv: (-kv[1].size, kv[0])):
        r = loads.index(min(loads))
        loads[r] += rec.size + 1
        if r == rank:
            mine.append(name)
    return mine


def verify_dir(path: Path) -> str | None:
    """Why checkpoint ``path`` fails verification, in one process (None: every file matches)."""
    try:
        table = read_manifest(path)
        return check_files(path, table, sorted(table))
    except ManifestError as e:
        return str(e)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
