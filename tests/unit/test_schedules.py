"""kubetrain.api.schedules against DeepSpeed's formulas, computed by hand here.

Convention under test (DESIGN.md): lr_at(0) is what DeepSpeed's constructor
sets (get_lr() at last_batch_iteration = -1), lr_at(k) for k >= 1 is get_lr()
at last_batch_iteration = k - 1. Comments give that iteration as `i`.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest

from kubetrain.api.schedules import (
    DEFAULT_PARAMS,
    REQUIRED_PARAMS,
    SCHEDULE_TYPES,
    LRSchedule,
    ScheduleError,
    lr_sequence,
    make_schedule,
)


def close(actual: float, expected: float) -> bool:
    # Relative only: an expected 0 must be exactly 0.
    return math.isclose(actual, expected, rel_tol=1e-12, abs_tol=0.0)


def check(schedule: LRSchedule, expected: dict[int, float]) -> None:
    got = {k: schedule.lr_at(k) for k in expected}
    bad = {k: (got[k], v) for k, v in expected.items() if not close(got[k], v)}
    assert not bad, f"step: (got, expected) {bad}"


# ---------------------------------------------------------------- registry


def test_schedule_types_and_tables_cover_each_other() -> None:
    assert SCHEDULE_TYPES == (
        "WarmupLR",
        "WarmupDecayLR",
        "WarmupCosineLR",
        "OneCycle",
        "LRRangeTest",
        "Constant",
        "ReduceLROnPlateau",
    )
    assert set(REQUIRED_PARAMS) == set(SCHEDULE_TYPES)
    assert set(DEFAULT_PARAMS) == set(SCHEDULE_TYPES)
    for type_, required in REQUIRED_PARAMS.items():
        assert not set(required) & set(DEFAULT_PARAMS[type_]), type_


def test_required_params_are_deepspeeds() -> None:
    assert REQUIRED_PARAMS["WarmupLR"] == ()
    assert REQUIRED_PARAMS["WarmupDecayLR"] == ("total_num_steps",)
    assert REQUIRED_PARAMS["WarmupCosineLR"] == ("total_num_steps",)
    assert REQUIRED_PARAMS["OneCycle"] == ("cycle_min_lr", "cycle_max_lr")
    assert REQUIRED_PARAMS["LRRangeTest"] == ()


# ---------------------------------------------------------------- WarmupLR


def test_warmup_lr_defaults_resolve_and_max_lr_is_optimizer_lr() -> None:
    s = make_schedule("WarmupLR", None, base_lr=0.01)
    assert s.type_ == "WarmupLR"
    assert s.params == {
        "warmup_min_lr": 0.0,
        "warmup_max_lr": 0.01,  # DeepSpeed >= 0.17.2: None -> the optimizer's lr
        "warmup_num_steps": 1000,
        "warmup_type": "log",
        "last_batch_iteration": -1,
    }
    check(
        s,
        {
            0: 0.0,  # constructor: warmup_min_lr
            1: 0.0,  # i=0: log(1) = 0
            2: 0.01 * math.log(2) / math.log(1000),  # i=1
            5: 0.01 * math.log(5) / math.log(1000),  # i=4
            1000: 0.01,  # i=999: log(1000) / log(1000)
            1001: 0.01,
            50_000: 0.01,
        },
    )


def test_warmup_lr_explicit_log() -> None:
    s = make_schedule(
        "WarmupLR",
        {"warmup_min_lr": 1e-5, "warmup_max_lr": 0.001, "warmup_num_steps": 100},
        base_lr=0.5,  # ignored: warmup_max_lr given
    )
    check(
        s,
        {
            0: 1e-5,
            1: 1e-5,
            11: 1e-5 + (0.001 - 1e-5) * math.log(11) / math.log(100),  # i=10
            100: 0.001,  # i=99
            101: 0.001,
        },
    )


def test_warmup_lr_linear() -> None:
    s = make_schedule(
        "WarmupLR", {"warmup_max_lr": 0.1, "warmup_num_steps": 10, "warmup_type": "linear"}, base_lr=1.0
    )
    check(s, {0: 0.0, 1: 0.0, 4: 0.1 * 3 / 10, 10: 0.1 * 9 / 10, 11: 0.1, 12: 0.1})


def test_warmup_num_steps_is_clamped_to_two() -> None:
    # max(2, warmup_num_steps): one warmup step still takes two to reach max.
    log = make_schedule("WarmupLR", {"warmup_max_lr": 0.1, "warmup_num_steps": 1}, base_lr=1.0)
    check(log, {0: 0.0, 1: 0.0, 2: 0.1, 3: 0.1})  # i=1: log(2) / log(2)
    lin = make_schedule(
        "WarmupLR", {"warmup_max_lr": 0.1, "warmup_num_steps": 1, "warmup_type": "linear"}, base_lr=1.0
    )
    check(lin, {0: 0.0, 1: 0.0, 2: 0.1 * 1 / 2, 3: 0.1})
    assert lin.params["warmup_num_steps"] == 1  # params show what the user wrote


# ---------------------------------------------------------------- WarmupDecayLR


def test_warmup_decay_lr_default_max_lr_is_0001_not_optimizer_lr() -> None:
    s = make_schedule("WarmupDecayLR", {"total_num_steps": 2000}, base_lr=0.5)
    assert s.params["warmup_max_lr"] == 0.001
    check(s, {0: 0.0, 1: 0.0, 5: 0.001 * math.log(5) / math.log(1000), 1000: 0.001})


def test_warmup_decay_lr_linear_decay() -> None:
    s = make_schedule(
        "WarmupDecayLR",
        {"total_num_steps": 100, "warmup_max_lr": 0.01, "warmup_num_steps": 10, "warmup_type": "linear"},
        base_lr=1.0,
    )
    check(
        s,
        {
            0: 0.0,
            10: 0.01 * 9 / 10,  # i=9, last warmup step
            11: 0.01 * (100 - 10) / (100 - 10),  # i=10
            56: 0.01 * (100 - 55) / (100 - 10),  # i=55
            100: 0.01 * (100 - 99) / (100 - 10),  # i=99
            101: 0.0,  # i=100
            500: 0.0,  # clamped at 0, never negative
        },
    )


def test_warmup_decay_lr_total_below_warmup() -> None:
    # DeepSpeed only warns; after warmup the lr is max(0, (5 - i) / max(1, 5 - 10)) = 0.
    s = make_schedule(
        "WarmupDecayLR", {"total_num_steps": 5, "warmup_num_steps": 10, "warmup_max_lr": 0.01}, base_lr=1.0
    )
    check(s, {3: 0.01 * math.log(3) / math.log(10), 10: 0.01, 11: 0.0})


def test_warmup_decay_lr_null_max_lr_means_optimizer_lr() -> None:
    s = make_schedule("WarmupDecayLR", {"total_num_steps": 100, "warmup_max_lr": None}, base_lr=0.3)
    assert s.params["warmup_max_lr"] == 0.3


# ---------------------------------------------------------------- WarmupCosineLR


def test_warmup_cosine_lr_defaults() -> None:
    s = make_schedule("WarmupCosineLR", {"total_num_steps": 3000}, base_lr=0.02)
    assert s.params == {
        "total_num_steps": 3000,
        "warmup_min_ratio": 0.0,
        "warmup_num_steps": 1000,
        "cos_min_ratio": 0.0001,
        "warmup_type": "log",
        "last_batch_iteration": -1,
    }
    check(
        s,
        {
            0: 0.0,
            1: 0.0,
            7: 0.02 * math.log(7) / math.log(1000),  # i=6
            1000: 0.02,  # i=999
            # i=1999: real_last_step 1000 of real_total 2000
            2000: 0.02 * (0.0001 + (1 - 0.0001) * (1 + math.cos(math.pi * 1000 / 2000)) / 2),
            3000: 0.02 * 0.0001,
        },
    )


def test_warmup_cosine_lr_step_zero_is_zero_even_with_min_ratio() -> None:
    # get_lr() at i = -1 returns 0.0 outright, not warmup_min_ratio * lr.
    s = make_schedule(
        "WarmupCosineLR",
        {"total_num_steps": 100, "warmup_min_ratio": 0.1, "warmup_num_steps": 10},
        base_lr=0.02,
    )
    check(s, {0: 0.0, 1: 0.02 * 0.1, 4: 0.02 * (0.1 + 0.9 * math.log(4) / math.log(10))})


def test_warmup_cosine_lr_linear_and_clamped_tail() -> None:
    s = make_schedule(
        "WarmupCosineLR",
        {
            "total_num_steps": 110,
            "warmup_num_steps": 10,
            "warmup_type": "linear",
            "warmup_min_ratio": 0.1,
            "cos_min_ratio": 0.01,
        },
        base_lr=0.02,
    )

    def cos_ratio(progress: float) -> float:
        return 0.01 + 0.99 * (1 + math.cos(math.pi * progress)) / 2

    check(
        s,
        {
            0: 0.0,
            1: 0.02 * 0.1,
            6: 0.02 * (0.1 + 0.9 * 5 / 10),  # i=5
            10: 0.02 * (0.1 + 0.9 * 9 / 10),  # i=9: linear never reaches 1.0 in warmup
            11: 0.02 * cos_ratio(1 / 100),  # i=10: real_last_step = 1, real_total = 100
            60: 0.02 * cos_ratio(50 / 100),
            110: 0.02 * 0.01,  # i=109: progress 1
            # Past the end the progress is clamped (DeepSpeed >= 0.19.3): no swing back up.
            210: 0.02 * 0.01,
            5000: 0.02 * 0.01,
        },
    )


# ---------------------------------------------------------------- OneCycle


def test_one_cycle_symmetric() -> None:
    s = make_schedule(
        "OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10}, base_lr=0.5
    )
    assert s.params["cycle_second_step_size"] == 10
    assert s.params["cycle_second_stair_count"] == 0
    # lr_at(k): batch_iteration = i + 1 = k, x = k / 20, step_ratio = 0.5.
    check(
        s,
        {
            0: 1e-4,
            1: 1e-4 + (1e-3 - 1e-4) * (1 / 20) / 0.5,
            5: 1e-4 + (1e-3 - 1e-4) * 0.5,
            10: 1e-3,
            15: 1e-4 + (1e-3 - 1e-4) * (15 / 20 - 1) / (0.5 - 1),
            20: 1e-4,  # i=19 < 20, but batch_iteration 20 starts cycle 2 at x = 0
            21: 1e-4,  # i=20: post-cycle, decay off (decay_step_size 0)
            1000: 1e-4,
        },
    )


def test_one_cycle_asymmetric() -> None:
    s = make_schedule(
        "OneCycle",
        {"cycle_min_lr": 0.0, "cycle_max_lr": 1.0, "cycle_first_step_size": 4, "cycle_second_step_size": 12},
        base_lr=0.5,
    )
    # total 16, step_ratio 0.25
    check(s, {2: (2 / 16) / 0.25, 4: 1.0, 10: (10 / 16 - 1) / (0.25 - 1), 16: 0.0})


def test_one_cycle_post_cycle_decay() -> None:
    s = make_schedule(
        "OneCycle",
        {
            "cycle_min_lr": 1e-4,
            "cycle_max_lr": 1e-3,
            "cycle_first_step_size": 10,
            "decay_step_size": 5,
            "decay_lr_rate": 0.5,
        },
        base_lr=0.5,
    )
    # i=30: decay iteration 30 - 20 + 1 = 11, interval 11 / 5
    check(s, {21: 1e-4 / (1 + 0.5 * 1 / 5), 31: 1e-4 / (1 + 0.5 * 11 / 5)})


def test_one_cycle_decay_needs_both_step_size_and_rate() -> None:
    only_rate = make_schedule(
        "OneCycle",
        {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10, "decay_lr_rate": 0.5},
        base_lr=0.5,
    )
    check(only_rate, {31: 1e-4})


def test_one_cycle_stairs() -> None:
    s = make_schedule(
        "OneCycle",
        {"cycle_min_lr": 0.0, "cycle_max_lr": 1.0, "cycle_first_step_size": 10, "cycle_first_stair_count": 2},
        base_lr=0.5,
    )
    assert s.params["cycle_second_stair_count"] == 2
    # position = batch_iteration * 2 / 10 on the way up, (20 - it) * 2 / 10 down; floor / 2
    check(s, {4: 0.0, 5: 0.5, 9: 0.5, 10: 1.0, 14: 0.5, 16: 0.0, 20: 0.0})


def test_one_cycle_momentum() -> None:
    s = make_schedule(
        "OneCycle",
        {
            "cycle_min_lr": 1e-4,
            "cycle_max_lr": 1e-3,
            "cycle_first_step_size": 10,
            "decay_step_size": 5,
            "decay_mom_rate": 0.1,
        },
        base_lr=0.5,
    )

    def betas(k: int) -> tuple[float, float]:
        b = s.betas_at(k)
        assert b is not None
        return b

    assert betas(0) == (0.8, 0.99)  # constructor sets cycle_min_mom
    b1, b2 = betas(1)  # the cycle starts at cycle_max_mom
    assert close(b1, 0.9 - (0.9 - 0.8) * (1 / 20) / 0.5) and b2 == 0.99
    assert close(betas(10)[0], 0.8)
    assert close(betas(15)[0], 0.9 - (0.9 - 0.8) * 0.5)
    assert close(betas(31)[0], 0.9 * (1 + 0.1 * 11 / 5))  # decay raises momentum
    assert betas(31)[1] == 0.99
    off = make_schedule(
        "OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_momentum": False}, base_lr=0.5
    )
    assert off.betas_at(5) is None
    assert make_schedule("WarmupLR", None, base_lr=0.1).betas_at(5) is None


# ---------------------------------------------------------------- LRRangeTest


def test_lr_range_test_defaults_continuous() -> None:
    s = make_schedule("LRRangeTest", {}, base_lr=0.5)
    assert s.params == {
        "lr_range_test_min_lr": 1e-3,
        "lr_range_test_step_size": 2000,
        "lr_range_test_step_rate": 1.0,
        "lr_range_test_staircase": False,
        "last_batch_iteration": -1,
    }
    # get_lr at i: min_lr * (1 + rate * (i + 1) / size) = min_lr * (1 + rate * k / size)
    check(s, {0: 1e-3, 1: 1e-3 * (1 + 1 / 2000), 2000: 1e-3 * 2, 3000: 1e-3 * 2.5})


def test_lr_range_test_staircase() -> None:
    s = make_schedule(
        "LRRangeTest",
        {"lr_range_test_step_size": 10, "lr_range_test_step_rate": 2.0, "lr_range_test_staircase": True},
        base_lr=0.5,
    )
    check(s, {0: 1e-3, 9: 1e-3, 10: 1e-3 * (1 + 2 * 1), 25: 1e-3 * (1 + 2 * 2)})


# ---------------------------------------------------------------- Constant


def test_constant() -> None:
    s = make_schedule("Constant", None, base_lr=3e-4)
    assert s.params == {}
    assert lr_sequence(s, 4) == [3e-4] * 4
    assert s.lr_at(10**9) == 3e-4


# ---------------------------------------------------------------- ReduceLROnPlateau


def plateau(**params: Any) -> LRSchedule:
    return make_schedule("ReduceLROnPlateau", params, base_lr=1.0)


def feed(s: LRSchedule, losses: list[float]) -> list[float]:
    out = []
    for loss in losses:
        s.observe(loss)
        out.append(s.lr_at(0))
    return out


def test_plateau_defaults_and_unobserved_lr() -> None:
    s = make_schedule("ReduceLROnPlateau", None, base_lr=0.02)
    assert s.params == {
        "mode": "min",
        "factor": 0.1,
        "patience": 10,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 0,
        "min_lr": 0.0,
        "eps": 1e-8,
    }
    assert lr_sequence(s, 3) == [0.02, 0.02, 0.02]


def test_plateau_patience() -> None:
    s = plateau(patience=2, factor=0.5)
    # best set by the first; then 3 bad evaluations: reduced on the 3rd (3 > patience 2)
    assert feed(s, [1.0, 1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0, 0.5]
    assert feed(s, [0.5, 0.6, 0.6, 0.6]) == [0.5, 0.5, 0.5, 0.25]


def test_plateau_relative_threshold() -> None:
    s = plateau(patience=0, factor=0.5, threshold=0.01)
    # 0.995 is not below 1.0 * (1 - 0.01): not an improvement
    assert feed(s, [1.0, 0.995]) == [1.0, 0.5]
    s = plateau(patience=0, factor=0.5, threshold=0.01)
    assert feed(s, [1.0, 0.98]) == [1.0, 1.0]


def test_plateau_abs_threshold_and_max_mode() -> None:
    s = plateau(patience=0, factor=0.5, mode="max", threshold=0.1, threshold_mode="abs")
    # needs > best + 0.1
    assert feed(s, [1.0, 1.05, 1.2]) == [1.0, 0.5, 0.5]


def test_plateau_cooldown() -> None:
    s = plateau(patience=0, factor=0.5, cooldown=2)
    # reduce at 2nd; the next two are cooldown (bad counts reset); reduce again at 5th
    assert feed(s, [1.0, 2.0, 2.0, 2.0, 2.0]) == [1.0, 0.5, 0.5, 0.5, 0.25]


def test_plateau_min_lr_and_eps() -> None:
    s = plateau(patience=0, factor=0.1, min_lr=0.05)
    assert feed(s, [1.0, 2.0, 2.0, 2.0]) == [1.0, 0.1, 0.05, 0.05]
    # reductions of at most eps are skipped
    s = plateau(patience=0, factor=0.9, eps=0.2)
    assert feed(s, [1.0, 2.0]) == [1.0, 1.0]


def test_plateau_nan_counts_as_no_improvement() -> None:
    s = plateau(patience=1, factor=0.5)
    assert feed(s, [1.0, math.nan, math.nan]) == [1.0, 1.0, 0.5]


def test_plateau_state_round_trip_through_json() -> None:
    s = plateau(patience=2, factor=0.5, cooldown=1)
    fresh = plateau(patience=2, factor=0.5, cooldown=1).state_dict()
    assert fresh["best"] is None  # +inf is not JSON
    feed(s, [1.0, 0.9, 0.95, 0.95, 0.95])  # reduced once, now in cooldown
    state = json.loads(json.dumps(s.state_dict()))
    assert state["lr"] == 0.5 and state["best"] == 0.9 and state["cooldown_counter"] == 1
    resumed = plateau(patience=2, factor=0.5, cooldown=1)
    resumed.load_state_dict(state)
    rest = [0.95, 0.95, 0.95, 0.95, 0.8, 0.85]
    assert feed(resumed, rest) == feed(s, rest)
    assert resumed.state_dict() == s.state_dict()


def test_plateau_load_rejects_other_schedule_state() -> None:
    s = plateau()
    with pytest.raises(ValueError, match="WarmupLR"):
        s.load_state_dict({"type": "WarmupLR"})


# ---------------------------------------------------------------- shared API


def test_lr_sequence_and_stateless_state() -> None:
    s = make_schedule("WarmupLR", {"warmup_max_lr": 0.1, "warmup_num_steps": 10}, base_lr=1.0)
    seq = lr_sequence(s, 12)
    assert len(seq) == 12 and seq == [s.lr_at(k) for k in range(12)]
    assert lr_sequence(s, 0) == []
    s.observe(1.0)  # no-op
    assert lr_sequence(s, 12) == seq
    state = s.state_dict()
    assert state == {"type": "WarmupLR"}
    s.load_state_dict(state)
    assert lr_sequence(s, 12) == seq


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_steps_rejected(bad: Any) -> None:
    s = make_schedule("Constant", None, base_lr=1.0)
    with pytest.raises(ValueError):
        s.lr_at(bad)
    with pytest.raises(ValueError):
        lr_sequence(s, bad)


def test_make_schedule_leaves_input_untouched() -> None:
    params = {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3}
    make_schedule("OneCycle", params, base_lr=0.5)
    assert params == {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3}


@pytest.mark.parametrize("base_lr", [math.nan, -1.0, "0.1"])
def test_bad_base_lr(base_lr: Any) -> None:
    with pytest.raises(ValueError, match="base_lr"):
        make_schedule("Constant", None, base_lr=base_lr)


# ---------------------------------------------------------------- rejections


def reject(type_: Any, params: Any) -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        make_schedule(type_, params, base_lr=0.1)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err) == err.message and err.message
    return err


def test_unknown_type_lists_valid_types_and_suggests() -> None:
    err = reject("WarmupLr", {})
    assert err.key == "type"
    assert "did you mean 'WarmupLR'" in err.message
    for t in SCHEDULE_TYPES:
        assert t in err.message


@pytest.mark.parametrize("type_", ["StepLR", "", None, 3])
def test_other_unknown_types(type_: Any) -> None:
    assert reject(type_, {}).key == "type"


def test_unknown_param_named_with_suggestion() -> None:
    err = reject("WarmupLR", {"warmup_steps": 10})
    assert err.key == "warmup_steps"
    assert "did you mean 'warmup_num_steps'" in err.message
    assert "WarmupLR" in err.message


def test_unknown_param_beats_missing_required() -> None:
    err = reject("WarmupDecayLR", {"total_steps": 10})
    assert err.key == "total_steps"
    assert "total_num_steps" in err.message


def test_constant_takes_no_params() -> None:
    err = reject("Constant", {"lr": 0.1})
    assert err.key == "lr"
    assert "takes no parameters" in err.message


@pytest.mark.parametrize(
    ("type_", "params", "key"),
    [
        ("WarmupDecayLR", {}, "total_num_steps"),
        ("WarmupCosineLR", {"warmup_num_steps": 10}, "total_num_steps"),
        ("OneCycle", {"cycle_max_lr": 0.1}, "cycle_min_lr"),
        ("OneCycle", {"cycle_min_lr": 0.1}, "cycle_max_lr"),
    ],
)
def test_missing_required(type_: str, params: dict[str, Any], key: str) -> None:
    err = reject(type_, params)
    assert err.key == key
    assert "requires" in err.message


@pytest.mark.parametrize(
    ("type_", "params", "key"),
    [
        # warmup_type: DeepSpeed would warn and fall back to "log"; we refuse the typo.
        ("WarmupLR", {"warmup_type": "cosine"}, "warmup_type"),
        ("WarmupDecayLR", {"total_num_steps": 10, "warmup_type": "Linear"}, "warmup_type"),
        ("WarmupCosineLR", {"total_num_steps": 10, "warmup_type": "exp"}, "warmup_type"),
        # DeepSpeed: ValueError unless warmup_num_steps is a positive int
        ("WarmupLR", {"warmup_num_steps": 0}, "warmup_num_steps"),
        ("WarmupLR", {"warmup_num_steps": -5}, "warmup_num_steps"),
        ("WarmupDecayLR", {"total_num_steps": 10, "warmup_num_steps": 1000.0}, "warmup_num_steps"),
        ("WarmupCosineLR", {"total_num_steps": 10, "warmup_num_steps": "100"}, "warmup_num_steps"),
        ("WarmupLR", {"warmup_num_steps": True}, "warmup_num_steps"),
        ("WarmupDecayLR", {"total_num_steps": "auto"}, "total_num_steps"),
        ("WarmupCosineLR", {"total_num_steps": 0}, "total_num_steps"),
        ("WarmupLR", {"warmup_max_lr": [0.001, 0.002]}, "warmup_max_lr"),
        ("WarmupLR", {"warmup_min_lr": -1e-3}, "warmup_min_lr"),
        ("WarmupLR", {"warmup_max_lr": math.inf}, "warmup_max_lr"),
        ("WarmupLR", {"last_batch_iteration": 10}, "last_batch_iteration"),
        ("WarmupCosineLR", {"total_num_steps": 10, "cos_min_ratio": -0.1}, "cos_min_ratio"),
        ("OneCycle", {"cycle_min_lr": 0.1, "cycle_max_lr": "1e-3"}, "cycle_max_lr"),
        # DeepSpeed: first half must be > 0, second >= 0
        (
            "OneCycle",
            {"cycle_min_lr": 0, "cycle_max_lr": 1, "cycle_first_step_size": 0},
            "cycle_first_step_size",
        ),
        (
            "OneCycle",
            {"cycle_min_lr": 0, "cycle_max_lr": 1, "cycle_second_step_size": -1},
            "cycle_second_step_size",
        ),
        ("OneCycle", {"cycle_min_lr": 0, "cycle_max_lr": 1, "cycle_momentum": "yes"}, "cycle_momentum"),
        ("OneCycle", {"cycle_min_lr": 0, "cycle_max_lr": 1, "decay_step_size": -5}, "decay_step_size"),
        (
            "OneCycle",
            {"cycle_min_lr": 0, "cycle_max_lr": 1, "cycle_first_stair_count": 1.5},
            "cycle_first_stair_count",
        ),
        # DeepSpeed: ValueError unless lr_range_test_step_size is a positive int
        ("LRRangeTest", {"lr_range_test_step_size": 0}, "lr_range_test_step_size"),
        ("LRRangeTest", {"lr_range_test_step_size": 2.5}, "lr_range_test_step_size"),
        ("LRRangeTest", {"lr_range_test_staircase": 1}, "lr_range_test_staircase"),
        ("ReduceLROnPlateau", {"mode": "avg"}, "mode"),
        ("ReduceLROnPlateau", {"factor": 1.0}, "factor"),  # torch: factor must be < 1
        ("ReduceLROnPlateau", {"threshold_mode": "relative"}, "threshold_mode"),
        ("ReduceLROnPlateau", {"patience": -1}, "patience"),
        ("ReduceLROnPlateau", {"cooldown": 0.5}, "cooldown"),
    ],
)
def test_bad_values_name_the_key(type_: str, params: dict[str, Any], key: str) -> None:
    err = reject(type_, params)
    assert err.key == key
    assert key in err.message


def test_auto_placeholder_gets_a_hint() -> None:
    assert "Hugging Face" in reject("WarmupDecayLR", {"total_num_steps": "auto"}).message


def test_params_must_be_a_mapping() -> None:
    assert reject("WarmupLR", [("warmup_num_steps", 10)]).key == "params"


def test_accepted_edge_values() -> None:
    # Values DeepSpeed accepts and so must we.
    make_schedule("WarmupLR", {"last_batch_iteration": -1}, base_lr=0.1)
    make_schedule("WarmupDecayLR", {"total_num_steps": 1e6}, base_lr=0.1)  # used only in arithmetic
    s = make_schedule(
        "OneCycle",
        {
            "cycle_min_lr": 0,
            "cycle_max_lr": 1,
            "cycle_second_step_size": 0,
            "cycle_first_stair_count": -1,  # DeepSpeed's CLI default: no staircase
            "cycle_first_step_size": 2.5,
        },
        base_lr=0.1,
    )
    assert close(s.lr_at(1), 1 / 2.5)


# ---------------------------------------------------------------- plotting


def test_plot_lr_writes_png_or_explains(tmp_path: Any) -> None:
    from kubetrain.tools.plotting import plot_lr

    out = tmp_path / "lr.png"
    lrs = lr_sequence(
        make_schedule("WarmupCosineLR", {"total_num_steps": 50, "warmup_num_steps": 5}, base_lr=0.1), 50
    )
    # matplotlib is installed with kubetrain[all]; its absence is test_plot_lr_without_matplotlib's case.
    import matplotlib  # noqa: F401

    plot_lr(lrs, str(out), "cosine")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_lr([], str(tmp_path / "empty.png"), "empty")


def test_plot_lr_without_matplotlib(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetrain.tools.plotting import plot_lr

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'kubetrain\[plot\]'"):
        plot_lr([0.1, 0.2], str(tmp_path / "x.png"), "t")
    assert not (tmp_path / "x.png").exists()
