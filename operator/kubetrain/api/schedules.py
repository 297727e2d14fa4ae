"""Learning-rate schedules with DeepSpeed's semantics, in pure Python.

The operator tools (`kubetrain validate`, `kubetrain schedule`) and the trainer
share this module, so the preview a user sees is the lr the trainer applies.
No torch and no numpy here: the base install must serve the offline tools.

The five DeepSpeed schedules (WarmupLR, WarmupDecayLR, WarmupCosineLR,
OneCycle, LRRangeTest) follow deepspeed/runtime/lr_schedules.py (checked
against DeepSpeed 0.19.5+, master of 2026-08): same parameter names, defaults,
formulas and float operation order, so values match bit for bit. Two are
ours: "Constant" (the optimizer's lr) and "ReduceLROnPlateau" (torch's
semantics, driven by the evaluation loss through `observe`).

Step numbering (DESIGN.md, "Conventions shared by trainer and operator"): the
lr of optimizer step k is what DeepSpeed's scheduler has put into the
optimizer when step k runs, i.e. for k = 0 the value its constructor sets
(`get_lr()` at last_batch_iteration = -1) and for k >= 1 `get_lr()` at
last_batch_iteration = k - 1, because DeepSpeed steps the scheduler after the
optimizer. Overflow-skipped fp16 steps do not step DeepSpeed's scheduler, so
callers pass k = the number of optimizer steps actually applied so far.

Deliberate differences from DeepSpeed, all stricter, none change a value:
- an unknown `warmup_type` is rejected (DeepSpeed logs a warning and silently
  uses "log");
- per-parameter-group lists of lrs/momenta are rejected (one number each);
- nonsense values DeepSpeed accepts (negative lrs, negative decay_step_size,
  total_num_steps <= 0) are rejected, and `last_batch_iteration` may only be
  its default -1 (resuming is done from checkpoints, not from the config).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_PARAMS",
    "REQUIRED_PARAMS",
    "SCHEDULE_TYPES",
    "LRSchedule",
    "ScheduleError",
    "lr_sequence",
    "make_schedule",
]


class ScheduleError(ValueError):
    """A scheduler config that cannot be used.

    `key` is the offending DeepSpeed parameter name (as in `scheduler.params`)
    or "type"; `message` says what is wrong and how to fix it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return self.message


WARMUP_LR = "WarmupLR"
WARMUP_DECAY_LR = "WarmupDecayLR"
WARMUP_COSINE_LR = "WarmupCosineLR"
ONE_CYCLE = "OneCycle"
LR_RANGE_TEST = "LRRangeTest"
CONSTANT = "Constant"
REDUCE_LR_ON_PLATEAU = "ReduceLROnPlateau"

SCHEDULE_TYPES: tuple[str, ...] = (
    WARMUP_LR,
    WARMUP_DECAY_LR,
    WARMUP_COSINE_LR,
    ONE_CYCLE,
    LR_RANGE_TEST,
    CONSTANT,
    REDUCE_LR_ON_PLATEAU,
)

# Parameters with no default: DeepSpeed's constructors take them positionally,
# so leaving one out is a TypeError there.
REQUIRED_PARAMS: dict[str, tuple[str, ...]] = {
    WARMUP_LR: (),
    WARMUP_DECAY_LR: ("total_num_steps",),
    WARMUP_COSINE_LR: ("total_num_steps",),
    ONE_CYCLE: ("cycle_min_lr", "cycle_max_lr"),
    LR_RANGE_TEST: (),
    CONSTANT: (),
    REDUCE_LR_ON_PLATEAU: (),
}

# DeepSpeed's constructor defaults. None means "derived": WarmupLR's
# warmup_max_lr None is the optimizer's lr (DeepSpeed >= 0.17.2; WarmupDecayLR
# kept 0.001), OneCycle's second step size / stair count None copy the first.
DEFAULT_PARAMS: dict[str, dict[str, object]] = {
    WARMUP_LR: {
        "warmup_min_lr": 0.0,
        "warmup_max_lr": None,
        "warmup_num_steps": 1000,
        "warmup_type": "log",
        "last_batch_iteration": -1,
    },
    WARMUP_DECAY_LR: {
        "warmup_min_lr": 0.0,
        "warmup_max_lr": 0.001,
        "warmup_num_steps": 1000,
        "warmup_type": "log",
        "last_batch_iteration": -1,
    },
    WARMUP_COSINE_LR: {
        "warmup_min_ratio": 0.0,
        "warmup_num_steps": 1000,
        "cos_min_ratio": 0.0001,
        "warmup_type": "log",
        "last_batch_iteration": -1,
    },
    ONE_CYCLE: {
        "decay_lr_rate": 0.0,
        "cycle_first_step_size": 2000,
        "cycle_second_step_size": None,
        "cycle_first_stair_count": 0,
        "cycle_second_stair_count": None,
        "decay_step_size": 0,
        "cycle_momentum": True,
        "cycle_min_mom": 0.8,
        "cycle_max_mom": 0.9,
        "decay_mom_rate": 0.0,
        "last_batch_iteration": -1,
    },
    LR_RANGE_TEST: {
        "lr_range_test_min_lr": 1e-3,
        "lr_range_test_step_size": 2000,
        "lr_range_test_step_rate": 1.0,
        "lr_range_test_staircase": False,
        "last_batch_iteration": -1,
    },
    CONSTANT: {},
    REDUCE_LR_ON_PLATEAU: {
        "mode": "min",
        "factor": 0.1,
        "patience": 10,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 0,
        "min_lr": 0.0,
        "eps": 1e-8,
    },
}

# --------------------------------------------------------------------------
# Parameter validation
# --------------------------------------------------------------------------

_Validator = Callable[[str, Any], Any]


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _reject_list(key: str, value: Any) -> None:
    if isinstance(value, (list, tuple)):
        raise ScheduleError(
            key,
            f"{key}: per-parameter-group lists are not supported, got {value!r}; "
            f"give a single number that applies to every parameter group",
        )


def _real(
    *, ge: float | None = None, gt: float | None = None, lt: float | None = None, nullable: bool = False
) -> _Validator:
    """A finite int or float (never bool), optionally bounded."""

    def check(key: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        _reject_list(key, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = (
                " ('auto' is a Hugging Face Trainer placeholder; write the number)" if value == "auto" else ""
            )
            raise ScheduleError(key, f"{key} must be a number, got {_describe(value)}{hint}")
        if not math.isfinite(value):
            raise ScheduleError(key, f"{key} must be a finite number, got {value!r}")
        if ge is not None and value < ge:
            raise ScheduleError(key, f"{key} must be >= {ge}, got {value!r}")
        if gt is not None and value <= gt:
            raise ScheduleError(key, f"{key} must be > {gt}, got {value!r}")
        if lt is not None and value >= lt:
            raise ScheduleError(key, f"{key} must be < {lt}, got {value!r}")
        return value

    return check


def _integer(*, ge: int | None = None, gt: int | None = None, nullable: bool = False) -> _Validator:
    """A Python int (never bool; DeepSpeed's isinstance(int) checks reject 1000.0)."""

    def check(key: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        _reject_list(key, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScheduleError(
                key, f"{key} must be an integer, got {_describe(value)}; write e.g. 1000, not 1000.0 or 1e3"
            )
        if ge is not None and value < ge:
            raise ScheduleError(key, f"{key} must be >= {ge}, got {value!r}")
        if gt is not None and value <= gt:
            raise ScheduleError(key, f"{key} must be > {gt}, got {value!r}")
        return value

    return check


def _boolean(key: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ScheduleError(key, f"{key} must be true or false, got {_describe(value)}")
    return value


def _choice(*options: str) -> _Validator:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            valid = ", ".join(repr(o) for o in options)
            raise ScheduleError(key, f"{key} must be one of {valid}, got {value!r}")
        return value

    return check


def _initial_iteration(key: str, value: Any) -> Any:
    # DeepSpeed only initialises the optimizer's lr when this is -1; any other
    # value means "resumed", which Kubetrain does from its own checkpoints.
    if isinstance(value, bool) or value != -1:
        raise ScheduleError(
            key,
            f"{key} must be -1 (its default), got {value!r}; remove it: Kubetrain resumes the "
            f"schedule from checkpoints",
        )
    return -1


_LR = _real(ge=0.0)
_WARMUP = {
    "warmup_min_lr": _LR,
    "warmup_max_lr": _real(ge=0.0, nullable=True),
    # DeepSpeed: ValueError unless a positive int.
    "warmup_num_steps": _integer(gt=0),
    "warmup_type": _choice("log", "linear"),
    "last_batch_iteration": _initial_iteration,
}
_PARAM_VALIDATORS: dict[str, dict[str, _Validator]] = {
    WARMUP_LR: dict(_WARMUP),
    WARMUP_DECAY_LR: {"total_num_steps": _real(gt=0.0), **_WARMUP},
    WARMUP_COSINE_LR: {
        "total_num_steps": _real(gt=0.0),
        "warmup_min_ratio": _real(ge=0.0),
        "warmup_num_steps": _integer(gt=0),
        "cos_min_ratio": _real(ge=0.0),
        "warmup_type": _choice("log", "linear"),
        "last_batch_iteration": _initial_iteration,
    },
    ONE_CYCLE: {
        "cycle_min_lr": _LR,
        "cycle_max_lr": _LR,
        "decay_lr_rate": _real(ge=0.0),
        # DeepSpeed: first half must be > 0, second >= 0 (floats allowed).
        "cycle_first_step_size": _real(gt=0.0),
        "cycle_second_step_size": _real(ge=0.0, nullable=True),
        # DeepSpeed treats a count <= 0 as "no staircase" (its CLI default is -1).
        "cycle_first_stair_count": _integer(),
        "cycle_second_stair_count": _integer(nullable=True),
        "decay_step_size": _real(ge=0.0),
        "cycle_momentum": _boolean,
        "cycle_min_mom": _real(ge=0.0),
        "cycle_max_mom": _real(ge=0.0),
        "decay_mom_rate": _real(ge=0.0),
        "last_batch_iteration": _initial_iteration,
    },
    LR_RANGE_TEST: {
        "lr_range_test_min_lr": _LR,
        # DeepSpeed: ValueError unless a positive int.
        "lr_range_test_step_size": _integer(gt=0),
        "lr_range_test_step_rate": _real(),
        "lr_range_test_staircase": _boolean,
        "last_batch_iteration": _initial_iteration,
    },
    CONSTANT: {},
    REDUCE_LR_ON_PLATEAU: {
        "mode": _choice("min", "max"),
        # torch: ValueError when factor >= 1.
        "factor": _real(ge=0.0, lt=1.0),
        "patience": _integer(ge=0),
        "threshold": _real(ge=0.0),
        "threshold_mode": _choice("rel", "abs"),
        "cooldown": _integer(ge=0),
        "min_lr": _LR,
        "eps": _real(ge=0.0),
    },
}


def _resolve_params(type_: str, params: Mapping[str, Any]) -> dict[str, Any]:
    validators = _PARAM_VALIDATORS[type_]
    for name in params:
        if name not in validators:
            valid = sorted(validators)
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(valid) if valid else f"none ({type_} takes no parameters)"
            raise ScheduleError(
                str(name),
                f"unknown parameter {name!r} for scheduler {type_}{hint} Valid parameters: {listing}",
            )
    for name in REQUIRED_PARAMS[type_]:
        if name not in params:
            raise ScheduleError(
                name,
                f"scheduler {type_} requires parameter {name!r} (DeepSpeed has no default for it); "
                f"add it to scheduler.params",
            )
    resolved: dict[str, Any] = dict(DEFAULT_PARAMS[type_])
    for name, value in params.items():
        resolved[name] = validators[name](name, value)
    return resolved


# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------


class LRSchedule:
    """The lr of every optimizer step, per the shared step convention.

    `lr_at(k)` is the lr used by optimizer step k (k = 0 is the first applied
    step). Stateless schedules are pure in k; ReduceLROnPlateau depends on the
    losses given to `observe` and carries them in `state_dict`.
    """

    type_: str
    params: dict[str, Any]
    base_lr: float

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        self.type_ = type_
        self.params = params
        self.base_lr = base_lr

    def lr_at(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        return self._lr_at(step)

    def _lr_at(self, step: int) -> float:
        raise NotImplementedError

    def betas_at(self, step: int) -> tuple[float, float] | None:
        """Adam betas the schedule sets for optimizer step k; None: leave the optimizer's alone."""
        return None

    def observe(self, eval_loss: float) -> None:
        """Report an evaluation loss; only ReduceLROnPlateau reacts."""

    def state_dict(self) -> dict[str, Any]:
        # Stateless: the caller's applied-step count is the whole state.
        return {"type": self.type_}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore for a stateless schedule."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(params={self.params!r}, base_lr={self.base_lr!r})"


class _DeepSpeedSchedule(LRSchedule):
    """A DeepSpeed schedule: `get_lr(i)` is DeepSpeed's get_lr() at last_batch_iteration = i."""

    def get_lr(self, last_batch_iteration: int) -> float:
        raise NotImplementedError

    def _initial_lr(self) -> float:
        # What DeepSpeed's constructor writes into the optimizer.
        return self.get_lr(-1)

    def _lr_at(self, step: int) -> float:
        return self._initial_lr() if step == 0 else self.get_lr(step - 1)


class WarmupLR(_DeepSpeedSchedule):
    """warmup_min_lr -> warmup_max_lr over warmup_num_steps (log or linear), then flat."""

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        if params["warmup_max_lr"] is None:
            params["warmup_max_lr"] = base_lr
        super().__init__(type_, params, base_lr)
        self.min_lr = float(params["warmup_min_lr"])
        self.max_lr = float(params["warmup_max_lr"])
        self.delta_lr = self.max_lr - self.min_lr
        # DeepSpeed clamps to 2 so that 1 / log(n) is defined.
        self.warmup_num_steps = max(2, params["warmup_num_steps"])
        self.warmup_type = params["warmup_type"]
        self.inverse_log_warm_up = 1.0 / math.log(self.warmup_num_steps)

    def _warmup_gamma(self, i: int) -> float:
        if self.warmup_type == "log":
            # log(i + 1) / log(n): 0 at i = 0, 1 at i = n - 1.
            return self.inverse_log_warm_up * math.log(i + 1)
        return i / self.warmup_num_steps

    def _gamma(self, i: int) -> float:
        if i < self.warmup_num_steps:
            return self._warmup_gamma(i)
        return 1.0

    def get_lr(self, last_batch_iteration: int) -> float:
        if last_batch_iteration < 0:
            return self.min_lr
        return self.min_lr + (self.delta_lr * self._gamma(last_batch_iteration))


class WarmupDecayLR(WarmupLR):
    """WarmupLR, then linear decay to 0 at total_num_steps."""

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        super().__init__(type_, params, base_lr)
        self.total_num_steps = params["total_num_steps"]

    def _gamma(self, i: int) -> float:
        if i < self.warmup_num_steps:
            return self._warmup_gamma(i)
        return max(
            0.0,
            float(self.total_num_steps - i) / float(max(1.0, self.total_num_steps - self.warmup_num_steps)),
        )


class WarmupCosineLR(_DeepSpeedSchedule):
    """Ratios of the optimizer's lr: warmup to 1.0, then cosine to cos_min_ratio."""

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        super().__init__(type_, params, base_lr)
        self.total_num_steps = params["total_num_steps"]
        self.warmup_min_ratio = float(params["warmup_min_ratio"])
        self.cos_min_ratio = float(params["cos_min_ratio"])
        self.warmup_type = params["warmup_type"]
        self.warmup_num_steps = max(2, params["warmup_num_steps"])
        self.inverse_log_warm_up = 1.0 / math.log(self.warmup_num_steps)

    def get_lr_ratio(self, last_batch_iteration: int) -> float:
        i = last_batch_iteration
        if i < 0:
            return 0.0
        if i < self.warmup_num_steps:
            if self.warmup_type == "log":
                ratio = self.inverse_log_warm_up * math.log(i + 1)
            else:
                ratio = i / self.warmup_num_steps
            return self.warmup_min_ratio + ratio * (1.0 - self.warmup_min_ratio)
        real_last_step = i - self.warmup_num_steps + 1
        real_total_steps = max(1, self.total_num_steps - self.warmup_num_steps)
        # Clamped since DeepSpeed 0.19.3: past total_num_steps the ratio stays
        # at cos_min_ratio (it used to swing back up along the cosine).
        progress = min(1.0, real_last_step / real_total_steps)
        ratio = (1 + math.cos(math.pi * progress)) / 2
        return max(0.0, self.cos_min_ratio + (1.0 - self.cos_min_ratio) * ratio)

    def get_lr(self, last_batch_iteration: int) -> float:
        # At -1 DeepSpeed's get_lr() returns 0.0 outright (not ratio * lr):
        # the first optimizer step runs with lr 0.
        if last_batch_iteration < 0:
            return 0.0
        return self.base_lr * self.get_lr_ratio(last_batch_iteration)


class OneCycle(_DeepSpeedSchedule):
    """1Cycle: min -> max over the first half, back to min over the second, then decay."""

    # DeepSpeed overwrites beta2 with this constant whenever it cycles momentum.
    BETA2 = 0.99

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        if params["cycle_second_step_size"] is None:
            params["cycle_second_step_size"] = params["cycle_first_step_size"]
        if params["cycle_second_stair_count"] is None:
            params["cycle_second_stair_count"] = params["cycle_first_stair_count"]
        super().__init__(type_, params, base_lr)
        self.first_step_size = float(params["cycle_first_step_size"])
        self.second_step_size = float(params["cycle_second_step_size"])
        self.total_size = self.first_step_size + self.second_step_size
        self.step_ratio = self.first_step_size / self.total_size
        self.first_stair_count: int = params["cycle_first_stair_count"]
        self.second_stair_count: int = params["cycle_second_stair_count"]
        self.decay_step_size = params["decay_step_size"]
        self.min_lr = float(params["cycle_min_lr"])
        self.max_lr = float(params["cycle_max_lr"])
        self.decay_lr_rate = float(params["decay_lr_rate"])
        self.cycle_momentum: bool = params["cycle_momentum"]
        self.min_mom = float(params["cycle_min_mom"])
        self.max_mom = float(params["cycle_max_mom"])
        self.decay_mom_rate = float(params["decay_mom_rate"])
        no_decay = math.isclose(self.decay_step_size, 0)
        self.skip_lr_decay = no_decay or math.isclose(self.decay_lr_rate, 0)
        self.skip_mom_decay = no_decay or math.isclose(self.decay_mom_rate, 0)

    def _scale_factor(self, last_batch_iteration: int) -> float:
        batch_iteration = last_batch_iteration + 1
        cycle = math.floor(1 + batch_iteration / self.total_size)
        x = 1.0 + batch_iteration / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
            stair_count = self.first_stair_count
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
            stair_count = self.second_stair_count
        # Stairs (effective since DeepSpeed 0.19.4; earlier versions ignored
        # the counts) are quantised from the integer position in the cycle.
        if stair_count > 0:
            cycle_iteration = batch_iteration % self.total_size
            if cycle_iteration <= self.first_step_size:
                position = cycle_iteration * stair_count / self.first_step_size
            else:
                position = (self.total_size - cycle_iteration) * stair_count / self.second_step_size
            scale_factor = math.floor(position) / stair_count
        return scale_factor

    def _initial_lr(self) -> float:
        return self.min_lr

    def get_lr(self, last_batch_iteration: int) -> float:
        if last_batch_iteration < self.total_size:
            return self.min_lr + (self.max_lr - self.min_lr) * self._scale_factor(last_batch_iteration)
        if self.skip_lr_decay:
            return self.min_lr
        decay_interval = (last_batch_iteration - self.total_size + 1) / self.decay_step_size
        return self.min_lr / (1 + self.decay_lr_rate * decay_interval)

    def betas_at(self, step: int) -> tuple[float, float] | None:
        """Adam betas DeepSpeed sets for optimizer step k, or None when momentum is not cycled.

        Quirk kept from DeepSpeed: the constructor sets beta1 = cycle_min_mom,
        but from step 1 the cycle starts at cycle_max_mom (momentum moves
        inversely to the lr), and post-cycle decay multiplies it upwards.
        """
        if not self.cycle_momentum:
            return None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if step == 0:
            return (self.min_mom, self.BETA2)
        i = step - 1
        if i < self.total_size:
            return (self.max_mom - (self.max_mom - self.min_mom) * self._scale_factor(i), self.BETA2)
        if self.skip_mom_decay:
            return (self.max_mom, self.BETA2)
        decay_interval = (i - self.total_size + 1) / self.decay_step_size
        return (self.max_mom * (1 + self.decay_mom_rate * decay_interval), self.BETA2)


class LRRangeTest(_DeepSpeedSchedule):
    """lr_range_test_min_lr * (1 + step_rate * (i + 1) / step_size), optionally floored."""

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        super().__init__(type_, params, base_lr)
        self.min_lr = float(params["lr_range_test_min_lr"])
        self.step_size: int = params["lr_range_test_step_size"]
        self.step_rate = float(params["lr_range_test_step_rate"])
        self.staircase: bool = params["lr_range_test_staircase"]

    def get_lr(self, last_batch_iteration: int) -> float:
        interval = float(last_batch_iteration + 1) / self.step_size
        if self.staircase:
            interval = math.floor(interval)
        return self.min_lr * (1 + self.step_rate * interval)


class Constant(LRSchedule):
    """The optimizer's lr at every step."""

    def _lr_at(self, step: int) -> float:
        return self.base_lr


class ReduceLROnPlateau(LRSchedule):
    """torch.optim.lr_scheduler.ReduceLROnPlateau on the evaluation loss.

    Stateful: `lr_at(k)` ignores k and returns the lr as of the latest
    `observe`; with no observations (as in `kubetrain schedule`) it is the
    optimizer's lr throughout.
    """

    def __init__(self, type_: str, params: dict[str, Any], base_lr: float) -> None:
        super().__init__(type_, params, base_lr)
        self.mode: str = params["mode"]
        self.factor = float(params["factor"])
        self.patience: int = params["patience"]
        self.threshold = float(params["threshold"])
        self.threshold_mode: str = params["threshold_mode"]
        self.cooldown: int = params["cooldown"]
        self.min_lr = float(params["min_lr"])
        self.eps = float(params["eps"])
        self._mode_worse = math.inf if self.mode == "min" else -math.inf
        self.lr = float(base_lr)
        self.best = self._mode_worse
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def _lr_at(self, step: int) -> float:
        return self.lr

    def _is_better(self, current: float) -> bool:
        # NaN compares false everywhere, so a NaN loss counts as "no improvement".
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return current < self.best * (1.0 - self.threshold)
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold

    def observe(self, eval_loss: float) -> None:
        current = float(eval_loss)
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad evaluations during cooldown do not count
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            # torch skips reductions smaller than eps (e.g. already at min_lr).
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        # `best` is None while nothing was observed: +-inf is not valid JSON.
        return {
            "type": self.type_,
            "lr": self.lr,
            "best": None if math.isinf(self.best) else self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("type") != self.type_:
            raise ValueError(f"state is for schedule {state.get('type')!r}, not {self.type_!r}")
        self.lr = float(state["lr"])
        best = state["best"]
        self.best = self._mode_worse if best is None else float(best)
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])


_CLASSES: dict[str, type[LRSchedule]] = {
    WARMUP_LR: WarmupLR,
    WARMUP_DECAY_LR: WarmupDecayLR,
    WARMUP_COSINE_LR: WarmupCosineLR,
    ONE_CYCLE: OneCycle,
    LR_RANGE_TEST: LRRangeTest,
    CONSTANT: Constant,
    REDUCE_LR_ON_PLATEAU: ReduceLROnPlateau,
}


def make_schedule(type_: str, params: Mapping[str, Any] | None, *, base_lr: float) -> LRSchedule:
    """Validate a DeepSpeed-style `scheduler: {type, params}` and build it.

    `base_lr` is the optimizer's lr (optimizer.params.lr): WarmupCosineLR's
    ratios multiply it, WarmupLR's warmup_max_lr defaults to it, Constant and
    ReduceLROnPlateau start from it. Raises ScheduleError naming the key.
    """
    if not isinstance(type_, str) or type_ not in _CLASSES:
        close = difflib.get_close_matches(str(type_), SCHEDULE_TYPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScheduleError(
            "type",
            f"unknown scheduler type {type_!r}{hint} Valid types: {', '.join(SCHEDULE_TYPES)} "
            f"(names are case-sensitive; torch.optim.lr_scheduler classes other than "
            f"ReduceLROnPlateau are not supported)",
        )
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ScheduleError("params", f"scheduler params must be a mapping, got {_describe(params)}")
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or not math.isfinite(base_lr):
        raise ValueError(f"base_lr must be a finite number, got {base_lr!r}")
    if base_lr < 0:
        raise ValueError(f"base_lr must be >= 0, got {base_lr!r}")
    resolved = _resolve_params(type_, params)
    return _CLASSES[type_](type_, resolved, float(base_lr))


def lr_sequence(schedule: LRSchedule, steps: int) -> list[float]:
    """The lr of optimizer steps 0 .. steps - 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    return [schedule.lr_at(k) for k in range(steps)]
