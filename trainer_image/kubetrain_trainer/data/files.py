"""File-backed corpora: memory-mapped token shards (uint16/uint32) and byte-level plain text.

Both are one logical token stream cut into non-overlapping windows of ``seq_len + 1`` tokens
(stride ``seq_len``).  The last 1 % of windows (when there are at least 100) is held out for
evaluation.  Training windows are visited in a seeded permutation per epoch, addressed by the
global sample index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

META = "metadata.json"
_TEXT_SUFFIXES = (".txt", ".text", ".md")


class _Stream:
    """Concatenation of 1-D memory-mapped arrays, read by global token offset."""

    def __init__(self, arrays: Sequence[np.ndarray[Any, Any]]) -> None:
        self.arrays = [a for a in arrays if len(a)]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
        self.total = int(self.starts[-1])

    def read(self, offset: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        pos, filled = offset, 0
        while filled < length:
            k = int(np.searchsorted(self.starts, pos, side="right")) - 1
            a = self.arrays[k]
            local = pos - int(self.starts[k])
            take = min(length - filled, len(a) - local)
            out[filled : filled + take] = a[local : local + take]
            filled += take
            pos += take
        return out


class WindowedCorpus:
    def __init__(self, stream: _Stream, seq_len: int, seed: int, vocab_size: int | None, what: str) -> None:
        self.stream = stream
        self.seq_len = seq_len
        self.seed = seed
        self.vocab_size = vocab_size
        n = (stream.total - 1) // seq_len if stream.total > 1 else 0
        if n < 1:
            raise DataError(f"{what} holds {stream.total} tokens: too few for one sample of seqLen {seq_len}")
        self.n_eval = max(1, n // 100) if n >= 100 else 0
        self.n_train = n - self.n_eval
        self._perm_epoch = -1
        self._perm = np.arange(0)

    def num_samples(self, split: str) -> int:
        return self.n_train if split == "train" else max(self.n_eval, 1)

    def _window(self, idx: int, split: str) -> int:
        if split == "eval":
            if self.n_eval == 0:  # tiny corpus: evaluate on training windows
                return idx % self.n_train
            return self.n_train + idx % self.n_eval
        epoch, pos = divmod(idx, self.n_train)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_train)
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def get(self, indices: Sequence[int], split: str = "train") -> np.ndarray:
        t = self.seq_len + 1
        out = np.empty((len(indices), t), dtype=np.int64)
        for row, idx in enumerate(indices):
            out[row] = self.stream.read(self._window(int(idx), split) * self.seq_len, t)
        return out


def _shard_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"data.path {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix == ".bin")
    if not files:
        raise DataError(f"data.path {path} holds no *.bin token shards")
    return files


def _unreadable(path: str, e: OSError) -> DataError:
    where = e.filename or path
    return DataError(f"data.path {path}: cannot read {where}: {e.strerror or e} (errno {e.errno}); "
                     "fix: make the data readable by the trainer (file mode, owner, volume mount)")


def open_tokens(path: str, token_dtype: str, seq_len: int, seed: int) -> WindowedCorpus:
    try:
        return _open_tokens(path, token_dtype, seq_len, seed)
    except OSError as e:
        raise _unreadable(path, e) from None


def _open_tokens(path: str, token_dtype: str, seq_len: int, seed: int) -> WindowedCorpus:
    root = Path(path)
    dtype, vocab = np.dtype(token_dtype), None
    meta_file = (root if root.is_dir() else root.parent) / META
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        dtype = np.dtype(meta.get("dtype", token_dtype))
        vocab = meta.get("vocab_size")
    try:
        arrays = [np.memmap(f, dtype=dtype, mode="r") for f in _shard_files(root)]
    except ValueError as e:
        raise DataError(f"cannot memory-map token shards under {path} as {dtype}: {e}") from None
    return WindowedCorpus(_Stream(arrays), seq_len, seed, vocab, f"data.path {path}")


def open_text(path: str, seq_len: int, seed: int) -> WindowedCorpus:
    try:
        return _open_text(path, seq_len, seed)
    except OSError as e:
        raise _unreadable(path, e) from None


def _open_text(path: str, seq_len: int, seed: int) -> WindowedCorpus:
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
    elif root.is_file():
        files = [root]
    else:
        raise DataError(f"data.path {path} does not exist")
    arrays = [np.memmap(f, dtype=np.uint8, mode="r") for f in files if f.stat().st_size]
    if not arrays:
        raise DataError(f"data.path {path} holds no non-empty text files ({', '.join(_TEXT_SUFFIXES)})")
    return WindowedCorpus(_Stream(arrays), seq_len, seed, 256, f"data.path {path}")


def prepare_data(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    token_dtype: str = "uint16",
    shard_tokens: int = 1 << 27,
) -> dict[str, object]:
    """Byte-level text → token shards (``shard_00000.bin`` ... + ``metadata.json``) for ``data.type: tokens``.

    ``inputs`` are text files or directories (searched for *.txt, *.text, *.md).  Returns the metadata.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"prepare-data: {item} does not exist")
    if not files:
        raise DataError("prepare-data: no input text files")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(token_dtype)
    shards: list[str] = []
    buf: list[np.ndarray] = []
    buffered = total = 0

    def flush() -> None:
        nonlocal buf, buffered
        if not buffered:
            return
        name = f"shard_{len(shards):05d}.bin"
        np.concatenate(buf).astype(dtype).tofile(out / name)
        shards.append(name)
        buf, buffered = [], 0

    for f in files:
        data = np.fromfile(f, dtype=np.uint8)
        while len(data):
            take = min(len(data), shard_tokens - buffered)
            buf.append(data[:take])
            buffered += take
            total += take
            data = data[take:]
            if buffered >= shard_tokens:
                flush()
    flush()
    meta: dict[str, object] = {
        "format": "kubetrain-tokens/v1",
        "tokenizer": "bytes",
        "dtype": dtype.name,
        "vocab_size": 256,
        "num_tokens": total,
        "shards": shards,
    }
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
