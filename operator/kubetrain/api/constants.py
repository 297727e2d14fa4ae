"""Facts shared by the operator, the CLI and the trainer: written once, imported everywhere.

Exit codes of the trainer launcher and their reasons, the environment variables the operator and
`kubetrain local` set for the launcher, ports and file names. The trainer reads these from here;
the controller writes them from here; a test checks that nobody redefines them.
"""

from __future__ import annotations

from typing import Final

# --- the API group ---------------------------------------------------------------------------
GROUP: Final = "kubetrain.dev"
VERSION: Final = "v1alpha1"
KIND: Final = "TrainingJob"
PLURAL: Final = "trainingjobs"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# --- sizes -----------------------------------------------------------------------------------
MAX_WORKERS: Final = 4096  # spec.workers.replicas/maxReplicas upper bound
# metadata.name: a DNS-1123 label short enough that every worker's host name "<name>-worker-<index>"
# (a DNS label: at most 63 characters) needs no cutting: 63 - len("-worker-4095") = 51.
JOB_NAME_MAX_LENGTH: Final = 63 - len(f"-worker-{MAX_WORKERS - 1}")

# --- exit codes of the pod's process (DESIGN.md) ---------------------------------------------
EXIT_OK: Final = 0
EXIT_RETRYABLE: Final = 1  # any code not listed here is retryable too
EXIT_INVALID_SPEC: Final = 64
EXIT_MODEL_OR_DATA: Final = 65
EXIT_PREEMPTED: Final = 75
EXIT_INTERRUPTED: Final = 130  # Ctrl-C of `kubetrain local` outside the launcher
PERMANENT_EXIT_CODES: Final = frozenset({EXIT_INVALID_SPEC, EXIT_MODEL_OR_DATA})

# Condition reason the operator records for a permanent exit when the trainer wrote none.
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_MODEL_OR_DATA: Final = "ModelOrDataError"
PERMANENT_REASON_BY_CODE: Final = {EXIT_INVALID_SPEC: REASON_INVALID_SPEC, EXIT_MODEL_OR_DATA: REASON_MODEL_OR_DATA}

# --- ports -----------------------------------------------------------------------------------
METRICS_PORT: Final = 9090  # the container port named "metrics": /metrics and /progress
METRICS_PORT_NAME: Final = "metrics"

# --- torch c10d rendezvous (PET_RDZV_CONF), set by the operator and by `kubetrain local` ------
# torch's defaults make a lost worker cost ~45 s: its heartbeat expires after 5 s x 3, then the
# survivors' round waits last_call_timeout = 30 s for more nodes. These settings bring recovery
# to seconds (bench/elastic_recovery.py; docs/operator.md "Rendezvous"): a dead agent is dropped
# after 1 s x 3 missed keep-alives, a round that has minReplicas waits 3 s for late joiners.
RENDEZVOUS_CONF: Final = {
    "keep_alive_interval": 1,
    "keep_alive_max_attempt": 3,
    "last_call_timeout": 3,
    "close_timeout": 10,
}

# --- environment variables the launcher and the workers read ---------------------------------
ENV_SPEC_FILE: Final = "KUBETRAIN_SPEC_FILE"
ENV_SPEC: Final = "KUBETRAIN_SPEC"
ENV_RUN_DIR: Final = "KUBETRAIN_RUN_DIR"
ENV_CHECKPOINT_DIR: Final = "KUBETRAIN_CHECKPOINT_DIR"
ENV_LAUNCH_DIR: Final = "KUBETRAIN_LAUNCH_DIR"
ENV_LAUNCHER_PID: Final = "KUBETRAIN_LAUNCHER_PID"  # workers die with this parent (lifeline)
ENV_LOCAL_PID: Final = "KUBETRAIN_LOCAL_PID"  # `kubetrain local`'s PID: its launchers die with it
ENV_RUN_LOCK_ID: Final = "KUBETRAIN_RUN_LOCK_ID"  # who may share the run directory (default PET_RDZV_ID)
ENV_TERMINATION_LOG: Final = "KUBETRAIN_TERMINATION_LOG"
ENV_METRICS_PORT: Final = "KUBETRAIN_METRICS_PORT"
ENV_METRICS_HOST: Final = "KUBETRAIN_METRICS_HOST"
ENV_PEAK_FLOPS: Final = "KUBETRAIN_PEAK_FLOPS"  # peak FLOP/s per device, for MFU where the table has none
ENV_JOB_NAME: Final = "KUBETRAIN_JOB_NAME"
ENV_WORKER_INDEX: Final = "KUBETRAIN_WORKER_INDEX"
ENV_TENSOR_PARALLEL: Final = "KUBETRAIN_TENSOR_PARALLEL"  # tp: consecutive local ranks split each layer
ENV_RESTART_GENERATION: Final = "KUBETRAIN_RESTART_GENERATION"
ENV_POD_NAME: Final = "KUBETRAIN_POD_NAME"
ENV_NAMESPACE: Final = "KUBETRAIN_NAMESPACE"
ENV_DEVICE: Final = "KUBETRAIN_DEVICE"
ENV_COMPILE_BACKEND: Final = "KUBETRAIN_COMPILE_BACKEND"
ENV_TRAINER_IMAGE: Final = "KUBETRAIN_TRAINER_IMAGE"
# Fault injection, for tests only (kubetrain_trainer.faults says what each does).
ENV_FAULT_INF_GRAD_STEPS: Final = "KUBETRAIN_FAULT_INF_GRAD_STEPS"
ENV_FAULT_NAN_LOSS_STEPS: Final = "KUBETRAIN_FAULT_NAN_LOSS_STEPS"
ENV_FAULT_RANK: Final = "KUBETRAIN_FAULT_RANK"
ENV_FAULT_SAVE_HANG_STEP: Final = "KUBETRAIN_FAULT_SAVE_HANG_STEP"
ENV_FAULT_STOP_SAVE_SLEEP_SECONDS: Final = "KUBETRAIN_FAULT_STOP_SAVE_SLEEP_SECONDS"
ENV_FAULT_STEP_SLEEP_SECONDS: Final = "KUBETRAIN_FAULT_STEP_SLEEP_SECONDS"
ENV_FAULT_NAN_PARAM_STEP: Final = "KUBETRAIN_FAULT_NAN_PARAM_STEP"

# --- files -----------------------------------------------------------------------------------
TERMINATION_LOG: Final = "/dev/termination-log"
RUN_LOCK_FILE: Final = ".kubetrain.lock"  # in the run directory: flock'ed by the run using it
