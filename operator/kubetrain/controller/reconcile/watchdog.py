"""The stall watchdog: a Running job whose step does not advance is restarted or failed."""

from __future__ import annotations

import datetime as dt

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller.reconcile.failures import restart
from kubetrain.controller.reconcile.state import R_STALLED, Decision, PassState
from kubetrain.controller.reconcile.terminal import finish


def watchdog(s: PassState, spec: api.TrainingJobSpec, desired: int) -> Decision | None:
    """The step has not advanced for stallSeconds while Running: restart the gang (from
    its last checkpoint) or fail, per watchdog.action. The clock starts when the gang is
    Running again, so a restart or a resume gets the full time to show progress."""
    wd = spec.run_policy.watchdog
    if wd is None or wd.stall_seconds <= 0:
        return None
    running = c.get(s.conds, c.RUNNING)
    since = c.parse_time(running.last_transition_time if running else None) or s.now
    progress = s.st.progress
    advanced = c.parse_time(progress.step_advanced_at if progress else None)
    if advanced is not None and advanced > since:
        since = advanced
    expiry = since + dt.timedelta(seconds=wd.stall_seconds)
    if s.now < expiry:
        s.at(expiry)
        return None
    step = progress.step if progress and progress.step is not None else None
    what = f"step {step} has not advanced" if step is not None else "no training progress was reported"
    message = f"{what} for {wd.stall_seconds}s (watchdog.stallSeconds)"
    if wd.action == "fail":
        return finish(s, False, R_STALLED, message)
    return restart(s, "stall", "Warning", R_STALLED,
                   f"{message}: restarting the workers from their last checkpoint", desired)
