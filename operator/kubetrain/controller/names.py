"""Names and labels of a TrainingJob's children.

Every name is a pure function of the job and a few counters, so a replayed event or a restarted
operator computes the very same name and a second create is answered AlreadyExists instead of
making a duplicate. Kubernetes limits DNS labels and label values to 63 characters, while a job
name may have 253: long names are cut and end in a hash of the full name, so they stay unique.
"""

from __future__ import annotations

import hashlib
import re

from kubetrain.api.constants import GROUP

LABEL_JOB = f"{GROUP}/job-name"
LABEL_INDEX = f"{GROUP}/worker-index"
LABEL_GENERATION = f"{GROUP}/restart-generation"
LABEL_INCARNATION = f"{GROUP}/incarnation"
LABEL_ROLE = f"{GROUP}/role"
# The gang shape (torchrun --nnodes) a pod was built for: pods of another shape cannot join
# the same rendezvous, so a change of it restarts the gang (see reconcile).
ANNOTATION_NNODES = f"{GROUP}/nnodes"
# Hash of the ConfigMap's data: a spec edit is written through only when it changed.
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"

RENDEZVOUS_PORT = 29400
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253


def fit(name: str, limit: int) -> str:
    """`name` if it fits, else a prefix of it plus an 8-hex-digit hash of the whole name."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def _label(name: str) -> str:
    """A DNS-1123 label (no dots) of at most 63 characters."""
    return fit(re.sub(r"[^a-z0-9-]", "-", name.lower()), DNS_LABEL_MAX).strip("-") or "x"


def job_label(job: str) -> str:
    """Value of the job-name label (label values have at most 63 characters)."""
    return fit(job, DNS_LABEL_MAX)


def selector(job: str) -> str:
    """The worker pods' label selector, as status.selector (scale subresource) wants it."""
    return f"{LABEL_JOB}={job_label(job)}"


def service_name(job: str) -> str:
    """The headless Service: a DNS-1035 label (must start with a letter)."""
    base = job if job[:1].isalpha() else f"tj-{job}"
    return _label(base)


def config_map_name(job: str) -> str:
    return fit(f"{job}-spec", DNS_SUBDOMAIN_MAX)


def hostname(job: str, index: int) -> str:
    """The stable host name of worker `index`: the same for every incarnation, so
    `<hostname>.<service>` keeps naming whichever pod currently is worker `index`."""
    suffix = f"-worker-{index}"
    return _label(job)[: DNS_LABEL_MAX - len(suffix)].rstrip("-") + suffix


def pod_name(job: str, index: int, generation: int, incarnation: int) -> str:
    """`<job>-worker-<index>-<generation>-<incarnation>`: generation counts whole-gang restarts,
    incarnation replacements of one worker within a generation. A replacement therefore never
    waits for its predecessor (maybe stuck Terminating on a lost node) to free the name."""
    suffix = f"-worker-{index}-{generation}-{incarnation}"
    return fit(job, DNS_SUBDOMAIN_MAX - len(suffix)) + suffix


def pod_group_name(job: str) -> str:
    """The gang scheduler's PodGroup: one per job, across restarts."""
    return fit(job, DNS_SUBDOMAIN_MAX)
