"""The operator's log lines: JSON (one object per line, for log collectors) or plain text.

`kubetrain operator --log-format` (default: $KUBETRAIN_LOG_FORMAT, which the chart's `logFormat`
sets, else json) chooses. A JSON line always has `time` (RFC 3339, UTC, milliseconds), `level`,
`logger` and `message`; then `job` (namespace/name) for kopf's per-object messages, the
record's `extra` fields, and `exception` (the traceback, as one string) when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

FORMATS = ("json", "plain", "full")
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FULL = "[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s"  # kopf's "full"

# Attributes every LogRecord has (and kopf's own): not repeated as extra fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "k8s_ref", "k8s_skip", "settings",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            line["job"] = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else str(ref["name"])
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "plain":
        return logging.Formatter(PLAIN)
    if fmt == "full":
        return logging.Formatter(FULL)
    raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")


def use(fmt: str) -> None:
    """Give every handler of the root logger (kopf's stream handler among them) this format."""
    chosen = formatter(fmt)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(chosen)
