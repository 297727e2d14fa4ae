"""Ending a job: Succeeded or Failed (once), then clean-up per cleanPodPolicy and the TTL."""

from __future__ import annotations

import datetime as dt

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller.reconcile.state import R_TTL, TERMINAL, Decision, DeleteJob, PassState


def finish(s: PassState, succeeded: bool, reason: str, message: str) -> Decision:
    """Enter Succeeded/Failed (once; the event fires on the transition only)."""
    if s.st.phase not in TERMINAL:
        s.st.phase = "Succeeded" if succeeded else "Failed"
        s.st.completion_time = c.rfc3339(s.now)
        s.st.backoff_until = None
        s.st.below_min_since = None
        s.st.world_size = 0
        s.cond(c.SUCCEEDED if succeeded else c.FAILED, True, reason, message)
        s.cond(c.RUNNING, False, reason, message)
        s.event("Normal" if succeeded else "Warning", reason, message)
    return finished(s)


def finished(s: PassState) -> Decision:
    """A finished job: clean pods per cleanPodPolicy, delete the job after its TTL."""
    policy = run_policy(s)
    for p in s.live():
        if policy.clean_pod_policy == "All" or (policy.clean_pod_policy == "Running" and not p.finished):
            s.delete(p)
    s.counts(s.job.spec.workers.replicas if s.job.spec else 0)
    done = c.parse_time(s.st.completion_time) or s.now
    if policy.ttl_seconds_after_finished is not None:
        expiry = done + dt.timedelta(seconds=policy.ttl_seconds_after_finished)
        if s.now >= expiry:
            s.actions.append(DeleteJob())
            s.event("Normal", R_TTL, f"deleting the job {policy.ttl_seconds_after_finished}s after it finished")
        else:
            s.at(expiry)
    return s.decision()


def run_policy(s: PassState) -> api.RunPolicySpec:
    if s.job.spec is not None:
        return s.job.spec.run_policy
    try:  # an invalid spec may still have a readable run policy
        return api.RunPolicySpec.model_validate(s.job.raw_spec.get("runPolicy") or {})
    except ValueError:
        return api.RunPolicySpec()
