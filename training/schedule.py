"""The curricula of the scorer's training: the weight lambda of the mask regularisation, and the temperature of the
differentiable top-k.

Both are pure functions of the training progress `global_step / max_steps`, so a run resumed from a checkpoint
continues them where it stopped, with no state of its own to save.
"""

from __future__ import annotations

import math
import numbers

REG_WEIGHT_SCHEDULES = ("linear", "cosine")
# "geometric": the top-k over standardised scores, its temperature falling geometrically; "paper": over raw scores.
MASK_TEMPERATURE_SCHEDULES = ("geometric", "paper")


def validate_reg_weight(value, name: str) -> float:
    """Returns `value` as a float, or raises a `ValueError` naming it and the accepted range [0, inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return float(value)


def validate_reg_weight_schedule(schedule) -> str:
    if schedule not in REG_WEIGHT_SCHEDULES:
        raise ValueError(f"`reg_weight_schedule` must be one of {list(REG_WEIGHT_SCHEDULES)}, got {schedule!r}.")
    return schedule


def annealed_reg_weight(progress: float, start: float, end: float, schedule: str = "linear") -> float:
    """The regularisation weight lambda at `progress` (clamped to [0, 1]) of the run.

    `"linear"` moves at a constant rate; `"cosine"` follows half a cosine, so lambda moves slowly at both ends and
    fastest in the middle. Both give `start` at progress 0 and `end` at progress 1, and are monotonic in between.

    Args:
        progress (`float`): share of the run done, `state.global_step / state.max_steps`.
        start (`float`): lambda at the start, >= 0.
        end (`float`): lambda at the end, >= 0.
        schedule (`str`, *optional*, defaults to `"linear"`): `"linear"` or `"cosine"`.
    """
    validate_reg_weight_schedule(schedule)
    if isinstance(progress, bool) or not isinstance(progress, numbers.Real) or math.isnan(progress):
        raise ValueError(f"`progress` must be a number, got {progress!r}.")
    progress = min(max(float(progress), 0.0), 1.0)
    if schedule == "cosine":
        progress = (1.0 - math.cos(math.pi * progress)) / 2.0
    return start + (end - start) * progress


def validate_mask_temperature(value, name: str) -> float:
    """Returns `value` as a float, or raises a `ValueError` naming it and the accepted range (0, inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return float(value)


def validate_mask_temperature_schedule(schedule) -> str:
    if schedule not in MASK_TEMPERATURE_SCHEDULES:
        raise ValueError(
            f"`mask_temperature_schedule` must be one of {list(MASK_TEMPERATURE_SCHEDULES)}, got {schedule!r}."
        )
    return schedule


def annealed_mask_temperature(progress: float, start: float, end: float, schedule: str = "geometric") -> float | None:
    """The temperature tau of the differentiable top-k at `progress` (clamped to [0, 1]) of the run.

    `"geometric"`: tau = start * (end / start) ** progress, so the mask's sharpness 1 / tau grows by the same factor
    in every equal share of the run (soft early, hard late). `"paper"`: `None`, the top-k over raw scores, whose
    sharpness is the scores' own spread.
    """
    validate_mask_temperature_schedule(schedule)
    if isinstance(progress, bool) or not isinstance(progress, numbers.Real) or math.isnan(progress):
        raise ValueError(f"`progress` must be a number, got {progress!r}.")
    if schedule == "paper":
        return None
    progress = min(max(float(progress), 0.0), 1.0)
    return start * (end / start) ** progress


__all__ = [
    "MASK_TEMPERATURE_SCHEDULES",
    "REG_WEIGHT_SCHEDULES",
    "annealed_mask_temperature",
    "annealed_reg_weight",
    "validate_mask_temperature",
    "validate_mask_temperature_schedule",
    "validate_reg_weight",
    "validate_reg_weight_schedule",
]
