"""Which attention drives the residual stream in a training micro-step.

The choice is a pure function of (config, seed, step, micro-step): every rank computes the same mode
without communicating, and a resumed run repeats the modes of an uninterrupted one.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import numpy as np

from ssa_pretrain.config import SSAConfig

Mode = Literal["full", "sparse"]


def choose_mode(ssa: SSAConfig, seed: int, step: int, micro_step: int, micro_steps_per_step: int) -> Mode:
    """The mode of micro-step `micro_step` (0-based) of optimizer step `step` (0-based).

    `variant: full` / `sparse` always give their own mode. For `ssa`:
    * `random` (the paper): full with probability `full_ratio`, drawn from a generator seeded by
      (seed, step, micro_step);
    * `alternate`: micro-step number i = step * micro_steps_per_step + micro_step is full exactly when
      ceil((i + 1) * r) > ceil(i * r), so every window of 1/r micro-steps holds one full step and the ratio is
      met exactly (r = 0.25 gives full, sparse, sparse, sparse, full, ...).
    """
    if ssa.variant != "ssa":
        return ssa.variant
    if ssa.mode_schedule == "random":
        draw = np.random.default_rng([seed, step, micro_step]).random()
        return "full" if draw < ssa.full_ratio else "sparse"
    ratio = Fraction(ssa.full_ratio).limit_denominator(10_000)  # exact arithmetic: 0.1 * 30 is not 3.0000001
    i = step * micro_steps_per_step + micro_step
    return "full" if math.ceil((i + 1) * ratio) > math.ceil(i * ratio) else "sparse"
