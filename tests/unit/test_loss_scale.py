"""kubetrain_trainer.loss_scale: DeepSpeed's DynamicLossScaler.update_scale transitions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetrain_trainer.loss_scale import LossScaleAtMinimumError, LossScaleConfigError, LossScaler


def run(scaler: LossScaler, overflows: str) -> list[float]:
    """Feed 'x' (overflow) / '.' (clean) steps; return the scale after each."""
    out = []
    for c in overflows:
        skip = scaler.update(c == "x")
        assert skip is (c == "x")
        out.append(scaler.scale)
    return out


def test_defaults_are_deepspeeds() -> None:
    s = LossScaler.from_config()
    assert s.dynamic
    assert s.scale == 2.0**16
    assert s.scale_window == 1000
    assert s.hysteresis == 2 and s.cur_hysteresis == 2
    assert not s.consecutive_hysteresis
    assert s.min_scale == 1.0
    assert s.skipped_steps == 0 and s.cur_iter == 0 and s.last_overflow_iter == -1


def test_first_growth_after_window_plus_one_clean_steps() -> None:
    # stable = iter - last_overflow_iter - 1 must be > 0 and a multiple of the
    # window: from the start (last_overflow_iter = -1) that is iter 3, the 4th step.
    s = LossScaler.from_config(initial_scale_power=4, loss_scale_window=3, hysteresis=1)
    assert run(s, "....") == [16, 16, 16, 32]
    assert run(s, "...") == [32, 32, 64]  # then every `window` clean steps


def test_default_window_grows_on_step_1001() -> None:
    s = LossScaler.from_config()
    run(s, "." * 1000)
    assert s.scale == 2.0**16
    s.update(False)
    assert s.scale == 2.0**17


def test_hysteresis_delays_backoff() -> None:
    s = LossScaler.from_config(initial_scale_power=10, hysteresis=2)
    s.update(True)  # budget 2 -> 1, scale kept
    assert (s.scale, s.cur_hysteresis) == (1024, 1)
    s.update(True)  # budget spent: halve
    assert (s.scale, s.cur_hysteresis) == (512, 1)
    s.update(True)  # the budget is not refilled by a backoff
    assert s.scale == 256
    assert s.skipped_steps == 3


def test_hysteresis_one_backs_off_every_overflow() -> None:
    s = LossScaler.from_config(initial_scale_power=10, hysteresis=1)
    assert run(s, "xxx") == [512, 256, 128]


def test_growth_window_restarts_after_overflow() -> None:
    s = LossScaler.from_config(initial_scale_power=4, loss_scale_window=2, hysteresis=1)
    # overflow at iter 1 -> 8; growth when iter - 1 - 1 is a positive multiple of 2: iter 4
    assert run(s, ".x...") == [16, 8, 8, 8, 16]
    assert s.last_overflow_iter == 1


def test_without_consecutive_hysteresis_budget_refills_only_on_growth() -> None:
    s = LossScaler.from_config(initial_scale_power=4, loss_scale_window=2, hysteresis=2)
    s.update(True)
    run(s, "..")  # stable 0, 1: no growth, budget stays spent
    assert (s.scale, s.cur_hysteresis) == (16, 1)
    s.update(True)  # so this overflow already halves
    assert s.scale == 8
    run(s, "...")  # stable 2 at the 3rd clean step: grow and refill
    assert (s.scale, s.cur_hysteresis) == (16, 2)


def test_consecutive_hysteresis_refills_on_every_clean_step() -> None:
    s = LossScaler.from_config(
        initial_scale_power=4, loss_scale_window=100, hysteresis=2, consecutive_hysteresis=True
    )
    assert run(s, "x.x.x.") == [16] * 6  # isolated overflows never back off
    assert s.cur_hysteresis == 2
    assert run(s, "xx") == [16, 8]  # two in a row do
    assert s.skipped_steps == 5


def test_min_scale_floor() -> None:
    s = LossScaler.from_config(initial_scale_power=3, hysteresis=1, min_loss_scale=3)
    assert run(s, "xx") == [4, 3]  # max(4 / 2, 3)


def test_overflow_at_min_scale_raises_like_deepspeed() -> None:
    s = LossScaler.from_config(initial_scale_power=3, hysteresis=1, min_loss_scale=4)
    s.update(True)
    assert s.scale == 4
    before = s.state_dict()
    with pytest.raises(LossScaleAtMinimumError, match="min_loss_scale"):
        s.update(True)
    assert s.state_dict() == before  # nothing recorded for the failed update


def test_at_min_scale_with_budget_left_only_spends_it() -> None:
    s = LossScaler.from_config(initial_scale_power=0, hysteresis=2, min_loss_scale=1)
    s.update(True)
    assert (s.scale, s.cur_hysteresis) == (1, 1)
    with pytest.raises(LossScaleAtMinimumError):
        s.update(True)


def test_min_scale_without_raising() -> None:
    s = LossScaler.from_config(
        initial_scale_power=3, hysteresis=1, min_loss_scale=4, raise_at_min_scale=False
    )
    assert run(s, "xxx") == [4, 4, 4]
    assert s.skipped_steps == 3


def test_static_scale() -> None:
    s = LossScaler.from_config(loss_scale=128, loss_scale_window=0, min_loss_scale=0)  # dynamic keys unused
    assert not s.dynamic
    assert run(s, "x..." + "." * 2000 + "x") == [128.0] * 2005
    assert s.skipped_steps == 2  # overflowing steps are still skipped


def test_state_round_trip_through_json() -> None:
    cfg: dict[str, Any] = {"initial_scale_power": 6, "loss_scale_window": 3, "hysteresis": 3}
    s = LossScaler.from_config(**cfg)
    run(s, "x.x..xx.")
    state = json.loads(json.dumps(s.state_dict()))
    assert state == {
        "dynamic": True,
        "scale": 16.0,
        "cur_iter": 8,
        "last_overflow_iter": 6,
        "cur_hysteresis": 1,
        "skipped_steps": 4,
    }
    resumed = LossScaler.from_config(**cfg)
    resumed.load_state_dict(state)
    rest = "x..x....x......"  # starts with an overflow: the spent budget must carry over
    assert run(resumed, rest) == run(s, rest)
    assert resumed.state_dict() == s.state_dict()


def test_static_state_keeps_configured_scale() -> None:
    s = LossScaler.from_config(loss_scale=64)
    s.update(True)
    other = LossScaler.from_config(loss_scale=256)
    other.load_state_dict(s.state_dict())
    assert (other.scale, other.skipped_steps, other.cur_iter) == (256, 1, 1)


def test_static_to_dynamic_resume_starts_window_fresh() -> None:
    static = LossScaler.from_config(loss_scale=64)
    run(static, "." * 10)
    dyn = LossScaler.from_config(initial_scale_power=4, loss_scale_window=3, hysteresis=1)
    dyn.load_state_dict(static.state_dict())
    assert dyn.scale == 16 and dyn.cur_iter == 10
    assert run(dyn, "....") == [16, 16, 16, 32]


def test_hysteresis_budget_clamped_when_setting_shrinks() -> None:
    s = LossScaler.from_config(hysteresis=4)
    resumed = LossScaler.from_config(hysteresis=2)
    resumed.load_state_dict(s.state_dict())
    assert resumed.cur_hysteresis == 2
    s.update(True)  # budget 4 -> 3
    s.update(True)  # -> 2
    s.update(True)  # -> 1
    resumed.load_state_dict(s.state_dict())
    assert resumed.cur_hysteresis == 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"loss_scale": -1}, "loss_scale"),
        ({"loss_scale": float("nan")}, "loss_scale"),
        ({"loss_scale": True}, "loss_scale"),
        ({"loss_scale_window": 0}, "loss_scale_window"),
        ({"loss_scale_window": 10.5}, "loss_scale_window"),
        ({"min_loss_scale": 0}, "min_loss_scale"),
        ({"min_loss_scale": "1"}, "min_loss_scale"),
        ({"hysteresis": 0}, "hysteresis"),
        ({"initial_scale_power": 16.0}, "initial_scale_power"),
        ({"consecutive_hysteresis": "yes"}, "consecutive_hysteresis"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(LossScaleConfigError) as info:
        LossScaler.from_config(**kwargs)
    assert info.value.key == key
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------ against DeepSpeed 0.19.8

# A recorded overflow pattern: bursts, isolated overflows, clean stretches longer than the window.
PATTERN = "..x.xx....x.....xxx......x.x.x.........xxxx.." + "." * 9 + "xxxxxxxxxxxx" + "...."
FP16_BLOCKS = [
    {"initial_scale_power": 6, "loss_scale_window": 4, "hysteresis": 2, "min_loss_scale": 1},
    {"initial_scale_power": 5, "loss_scale_window": 3, "hysteresis": 1, "min_loss_scale": 2},
    {"initial_scale_power": 8, "loss_scale_window": 5, "hysteresis": 3, "consecutive_hysteresis": True,
     "min_loss_scale": 1},
    {"initial_scale_power": 4, "loss_scale_window": 2, "hysteresis": 2, "min_loss_scale": 1},
]


def _ours(fp16: dict[str, Any], overflows: str, stage: int) -> list[Any]:
    s = LossScaler.from_config(**fp16, zero_stage=stage)
    out: list[Any] = []
    for c in overflows:
        try:
            s.update(c == "x")
        except LossScaleAtMinimumError:
            out.append("raise")
            break
        out.append(s.scale)
    return out


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("fp16", FP16_BLOCKS, ids=lambda b: json.dumps(b, sort_keys=True))
def test_scale_sequence_equals_deepspeeds(fp16: dict[str, Any], stage: int) -> None:
    from tests.unit import deepspeed_ref

    theirs = deepspeed_ref.scale_sequence(fp16, PATTERN, stage=stage)
    assert _ours(fp16, PATTERN, stage) == theirs


def test_stage0_and_zero_rules_differ_on_the_pattern() -> None:
    """The two rules are not the same rule under another name: hysteresis and the minimum differ."""
    fp16 = FP16_BLOCKS[0]
    assert _ours(fp16, PATTERN, 0) != _ours(fp16, PATTERN, 1)
    stage0 = _ours(fp16, PATTERN, 0)
    assert "raise" not in stage0 and min(stage0) == 1.0  # floored at min_loss_scale, never raises
    assert _ours(fp16, PATTERN, 1)[-1] == "raise"  # ZeRO: overflow at the minimum stops the run
