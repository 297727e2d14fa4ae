"""Reading TrainingJob YAML/JSON files, with readable errors instead of tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class SpecFileError(ValueError):
    """A file that cannot be read or parsed; the message names the file and line."""


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file ('-' reads stdin), skipping empty ones."""
    try:
        text = _read(path)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecFileError(f"{path}:{where}: not valid YAML: {problem}") from None
    if not docs:
        raise SpecFileError(f"{path}: no document in the file")
    return docs


def load_one(path: str | Path) -> Any:
    docs = load_documents(path)
    if len(docs) != 1:
        raise SpecFileError(f"{path}: expected one TrainingJob, found {len(docs)} documents")
    return docs[0]


def _read(path: str | Path) -> str:
    if str(path) == "-":
        import sys

        return sys.stdin.read()
    return Path(path).read_text(encoding="utf-8")
