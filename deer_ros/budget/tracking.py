"""Closed-loop tracking of the average-GFLOPs budget.

The thresholds are solved on calibration data (demonstrations), where they
meet the requested average within 0.01 %. A policy acting on its own
observations sees a different distribution: consecutive exits agree more or
less often than on the demos, and the realised average drifts (the shipped
policy measured -4 % to -19 % before this existed). An operator who sets
``budget.avg_gflops`` expects that figure on the robot, so the runtime can
steer the *target* it hands the solver: after every ``interval`` steps the
target moves by ``gain * (requested - realised)``, where realised is the
average cost of every step since tracking started, and stays inside the
feasible range. The controlled quantity is the run's average itself, which
is what an average budget promises. Measured on real rollouts of the shipped
policy, the target -> cost map is steep near the cheap end (one correction
can move a 25-step mean from 0.76x to 1.4x the request): a controller on
the last interval's mean then cycles between two settings and overspends by
their mean (+4 to +8 %; a multiplicative update did the same, on the
geometric mean), while the cumulative error makes it dwell on the cheap
setting until the run's average is back on the request. The thresholds stay
the solver's (same shape, same cap), only for a corrected target, so peak
and memory caps are untouched.
"""
from __future__ import annotations

import math


class AverageBudgetTracker:
    """Target for the average-budget solver that makes the realised cost meet ``requested``.

    Args:
        requested: the operator's average budget (GFLOPs per step).
        feasible: (lowest, highest) average the exit rule can realise under the cap.
        interval: steps between corrections.
        gain: target change per GFLOP of average error, at each correction.
    """

    def __init__(self, requested: float, feasible: tuple[float, float], interval: int = 25, gain: float = 0.5) -> None:
        if not feasible[0] <= requested <= feasible[1]:
            raise ValueError(f'requested {requested} is outside the feasible range {feasible}')
        if interval < 1 or not 0.0 < gain <= 1.0:
            raise ValueError(f'interval must be >= 1 and gain in (0, 1], got {interval}, {gain}')
        self.requested = requested
        self.feasible = feasible
        self.interval = interval
        self.gain = gain
        self.target = requested
        self.steps = 0
        self.total_cost = 0.0

    @property
    def realised(self) -> float:
        """Average cost of every step recorded since tracking started (NaN before the first)."""
        return self.total_cost / self.steps if self.steps else math.nan

    def record(self, cost: float) -> float | None:
        """Record one step's cost; returns the new solver target when it changed, else ``None``."""
        self.steps += 1
        self.total_cost += cost
        if self.steps % self.interval:
            return None
        target = self.target + self.gain * (self.requested - self.realised)
        target = min(max(target, self.feasible[0]), self.feasible[1])
        if target == self.target:
            return None
        self.target = target
        return target
