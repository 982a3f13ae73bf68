"""Learning-rate schedules as multipliers of the peak LR (for torch LambdaLR)."""
import math
from collections.abc import Callable


def lr_multiplier(
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    steps_per_interval: int | None = None,
    decay_fraction: float = 0.2,
) -> Callable[[int], float]:
    """Linear warmup from ~0 to 1 over warmup_steps, then cosine/linear decay to min_lr_ratio
    at total_steps, or constant, or 'wsd' (warmup-stable-decay): 1 until the last
    `decay_fraction` of the steps, then a linear decay to min_lr_ratio at total_steps. With
    steps_per_interval, the value only changes at interval starts (the value of the interval's
    first step)."""

    def fn(step: int) -> float:
        if steps_per_interval:
            step = step - step % steps_per_interval
        return _at(step)

    def _at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        # where the decay starts: after warmup, or (wsd) at the last decay_fraction of the steps
        decay_start = warmup_steps
        if schedule == "wsd":
            decay_start = max(warmup_steps, total_steps - max(1, round(decay_fraction * total_steps)))
            if step < decay_start:
                return 1.0
        progress = min(1.0, (step - decay_start) / (total_steps - decay_start))
        if schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif schedule in ("linear", "wsd"):
            decay = 1.0 - progress
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return fn
