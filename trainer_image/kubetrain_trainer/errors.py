"""Trainer failure taxonomy and the exit codes the launcher maps them to (see DESIGN.md)."""

from __future__ import annotations

from kubetrain.api.constants import (
    EXIT_INVALID_SPEC,
    EXIT_MODEL_OR_DATA,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_RETRYABLE,
)

__all__ = ["EXIT_INVALID_SPEC", "EXIT_MODEL_OR_DATA", "EXIT_OK", "EXIT_PREEMPTED", "EXIT_RETRYABLE"]


class TrainerError(Exception):
    """Base class: a failure with a machine-readable reason and an exit code."""

    exit_code = EXIT_RETRYABLE
    reason = "TrainerError"


class SpecError(TrainerError):
    """The spec is invalid or asks for something impossible on this hardware (permanent)."""

    exit_code = EXIT_INVALID_SPEC
    reason = "InvalidSpec"


class ModelError(TrainerError):
    """The model cannot be built (bad entrypoint, wrong return type) (permanent)."""

    exit_code = EXIT_MODEL_OR_DATA
    reason = "ModelError"


class DataError(TrainerError):
    """The data cannot be read or does not match the model (permanent)."""

    exit_code = EXIT_MODEL_OR_DATA
    reason = "DataError"


class DivergedError(TrainerError):
    """Too many consecutive non-finite steps. Permanent: a restart replays the same data."""

    exit_code = EXIT_MODEL_OR_DATA
    reason = "NonFiniteLoss"
