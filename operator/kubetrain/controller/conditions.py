"""Status conditions per Kubernetes API conventions, and RFC 3339 time helpers.

A condition's lastTransitionTime changes only when its status changes; reason, message and
observedGeneration follow every decision. Pure functions: the caller passes `now`.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from kubetrain.api import Condition, ConditionType

# Condition types, in the order `kubectl describe` shows them.
SCHEDULED: ConditionType = "Scheduled"
RUNNING: ConditionType = "Running"
SUSPENDED: ConditionType = "Suspended"
SUCCEEDED: ConditionType = "Succeeded"
FAILED: ConditionType = "Failed"
ORDER: tuple[ConditionType, ...] = (SCHEDULED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ceil_seconds(t: dt.datetime) -> dt.datetime:
    """`t` rounded up to a whole second (RFC 3339 status times have no fraction)."""
    return t if t.microsecond == 0 else t.replace(microsecond=0) + dt.timedelta(seconds=1)


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp (as the API server writes them), or None."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def get(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: ConditionType) -> bool:
    c = get(conditions, type_)
    return c is not None and c.status == "True"


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with condition `type_` set; lastTransitionTime kept unless status changed."""
    value: Literal["True", "False"] = "True" if status else "False"
    old = get(conditions, type_)
    kept = old is not None and old.status == value and old.last_transition_time
    since = old.last_transition_time if kept and old is not None else rfc3339(now)
    new = Condition(
        type=type_, status=value, reason=reason, message=message[:1024],
        last_transition_time=since, observed_generation=generation,
    )
    rest = [c for c in conditions if c.type != type_]
    return sorted([*rest, new], key=lambda c: ORDER.index(c.type))


def transitioned(before: list[Condition], after: list[Condition], type_: ConditionType) -> bool:
    """Whether `type_` changed status (or appeared) between two lists."""
    b, a = get(before, type_), get(after, type_)
    return a is not None and (b is None or b.status != a.status)
