"""The annealing of the mask-regularisation weight lambda and of the top-k temperature: pure functions of the
training progress."""

import math

import pytest

from visionselector_training.schedule import (
    REG_WEIGHT_SCHEDULES,
    annealed_mask_temperature,
    annealed_reg_weight,
    validate_mask_temperature,
    validate_reg_weight,
)


@pytest.mark.parametrize("schedule", REG_WEIGHT_SCHEDULES)
def test_endpoints_and_monotonic(schedule):
    values = [annealed_reg_weight(step / 100, 0.1, 2.0, schedule) for step in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[-1] == pytest.approx(2.0)
    assert all(b > a for a, b in zip(values, values[1:]))
    # decreasing curricula are allowed too
    assert annealed_reg_weight(1.0, 2.0, 0.5, schedule) == pytest.approx(0.5)


def test_linear_and_cosine_shapes():
    assert annealed_reg_weight(0.25, 0.0, 1.0, "linear") == pytest.approx(0.25)
    assert annealed_reg_weight(0.25, 0.0, 1.0, "cosine") == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    # both meet half-way; cosine is slower at the ends
    assert annealed_reg_weight(0.5, 0.1, 2.0, "cosine") == pytest.approx(annealed_reg_weight(0.5, 0.1, 2.0, "linear"))
    assert annealed_reg_weight(0.1, 0.1, 2.0, "cosine") < annealed_reg_weight(0.1, 0.1, 2.0, "linear")


def test_progress_is_clamped():
    assert annealed_reg_weight(-0.5, 0.1, 2.0) == pytest.approx(0.1)
    assert annealed_reg_weight(3.0, 0.1, 2.0) == pytest.approx(2.0)


def test_bad_values_raise():
    with pytest.raises(ValueError, match="'exp'"):
        annealed_reg_weight(0.5, 0.1, 2.0, "exp")
    with pytest.raises(ValueError, match="progress"):
        annealed_reg_weight(float("nan"), 0.1, 2.0)
    for bad in (-0.1, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="reg_weight_start"):
            validate_reg_weight(bad, "reg_weight_start")
    assert validate_reg_weight(0, "reg_weight_start") == 0.0


def test_mask_temperature_falls_geometrically_from_start_to_end():
    values = [annealed_mask_temperature(step / 100, 1.0, 0.1) for step in range(101)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(later < earlier for earlier, later in zip(values, values[1:]))
    assert annealed_mask_temperature(0.5, 1.0, 0.1) == pytest.approx(math.sqrt(0.1))  # the geometric mean
    # the same factor in every equal share of the run
    assert values[25] / values[0] == pytest.approx(values[100] / values[75])
    assert annealed_mask_temperature(1.5, 1.0, 0.1) == pytest.approx(0.1)  # progress clamped


def test_paper_schedule_has_no_temperature():
    assert annealed_mask_temperature(0.3, 1.0, 0.1, "paper") is None


@pytest.mark.parametrize("bad", [0, -0.1, float("inf"), float("nan"), True, "1"])
def test_bad_mask_temperatures_raise(bad):
    with pytest.raises(ValueError, match="`mask_temperature_start` must be a finite number > 0"):
        validate_mask_temperature(bad, "mask_temperature_start")
    with pytest.raises(ValueError, match="`mask_temperature_schedule` must be one of"):
        annealed_mask_temperature(0.5, 1.0, 0.1, "cosine")
