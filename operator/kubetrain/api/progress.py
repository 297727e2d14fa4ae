"""The `/progress` report: one typed model for the trainer that writes it and the operator that reads it.

Local rank 0 of every worker pod serves it as JSON on the container port named `metrics`
(`kubetrain.api.constants.METRICS_PORT_NAME`); the operator polls the lowest-index Ready pod and
copies it into `status.progress`. The keys are camelCase like the rest of the API:

    {"step": 7, "maxSteps": 100, "loss": 2.5, "learningRate": 0.001, "tokensPerSecond": 1234.0,
     "mfu": 0.41, "lastCheckpointStep": 5, "worldSize": 4, "updatedAt": "2026-01-01T00:00:00Z"}

JSON has no NaN or Infinity: a non-finite number (a diverging loss) is written and read as null.
A reader ignores keys it does not know (a newer trainer may add some) and treats an answer that
is not a report (not an object, no step, a string where a number belongs) as no answer.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel


class ProgressReport(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, ser_json_inf_nan="null",
    )

    step: int = Field(ge=0, description="Last completed optimizer step (0 before the first).")
    max_steps: int | None = Field(default=None, ge=1, description="Steps the job trains for.")
    loss: float | None = Field(default=None, description="Training loss of that step (global-batch mean).")
    learning_rate: float | None = Field(default=None, description="Learning rate of that step.")
    tokens_per_second: float | None = Field(default=None, description="Throughput of that step, all workers.")
    mfu: float | None = Field(default=None, description="Model FLOPs utilisation (0-1); null when unknown.")
    last_checkpoint_step: int | None = Field(default=None, ge=0, description="Last committed checkpoint's step.")
    world_size: int | None = Field(default=None, ge=1, description="Training processes.")
    updated_at: str | None = Field(default=None, description="When the trainer last updated it (RFC 3339).")

    @field_validator("loss", "learning_rate", "tokens_per_second", "mfu")
    @classmethod
    def _finite_or_null(cls, value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None

    def to_json(self) -> bytes:
        """The body the trainer serves."""
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_answer(cls, data: Any) -> ProgressReport | None:
        """A decoded JSON answer -> the report, or None when it is not one."""
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None
