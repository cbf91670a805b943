"""Closed-loop tracking of the average-GFLOPs budget.

The thresholds are solved on calibration data (demonstrations), where they
meet the requested average within 0.01 %. A policy acting on its own
observations sees a different distribution: consecutive exits agree more or
less often than on the demos, and the realised average drifts (the shipped
policy measured -4 % to -19 % before this existed). An operator who sets
``budget.avg_gflops`` expects that figure on the robot, so the runtime steers
the *target* it hands the solver, like a GFLOPs account with an overdraft
that must be repaid:

* ``wanted``, the cost per step for the next interval, is
  ``requested - (spent - requested * steps) / horizon``: whatever the run has
  over- or under-spent since the budget was set is paid back over about
  ``horizon`` steps;
* ``base`` learns the target that spends exactly the request on this
  robot's observations: after every ``interval`` steps it moves by
  ``gain * (wanted - mean cost of that interval)``, the error against what
  that interval was asked to spend (against the request it would wind up
  while an overspend is repaid);
* the target handed to the solver is ``base + wanted - requested``.

All three stay inside the feasible range. The promise kept is the run's average
(``realised``). Two simpler controllers were measured and rejected: one on
the last interval's mean cycles between two settings where the
target -> cost map is steep (near the cheap end one correction moved a
25-step mean from 0.76x to 1.4x the request) and overspends by their mean
(+4 to +8 %); one integrating the run's average error overshoots after the
first corrections and was still 5.3-5.7 % off after 12 CALVIN chains with the
12-exit policy. Replaying the calibration frames with the consistency values
scaled by 0.6-1.6x, this controller ends 800-step runs within 2 % of the
request (the run-average integrator: up to 8 %). The thresholds stay the
solver's (same shape, same cap), only for a corrected target, so peak and
memory caps are untouched.
"""
from __future__ import annotations

import math


class AverageBudgetTracker:
    """Target for the average-budget solver that makes the realised cost meet ``requested``.

    Args:
        requested: the operator's average budget (GFLOPs per step).
        feasible: (lowest, highest) average the exit rule can realise under the cap.
        interval: steps between corrections.
        gain: change of ``base`` per GFLOP of the last interval's error against ``wanted``, at each correction.
        horizon: steps over which the run's accumulated over- or under-spend is paid back.
    """

    def __init__(self, requested: float, feasible: tuple[float, float], interval: int = 25, gain: float = 0.5,
                 horizon: int = 50) -> None:
        if not feasible[0] <= requested <= feasible[1]:
            raise ValueError(f'requested {requested} is outside the feasible range {feasible}')
        if interval < 1 or horizon < 1 or not 0.0 < gain <= 1.0:
            raise ValueError(f'interval and horizon must be >= 1 and gain in (0, 1], got {interval}, {horizon}, {gain}')
        self.requested = requested
        self.feasible = feasible
        self.interval = interval
        self.gain = gain
        self.horizon = horizon
        self.base = requested
        self.wanted = requested
        self.target = requested
        self.steps = 0
        self.total_cost = 0.0
        self._interval_cost = 0.0

    @property
    def realised(self) -> float:
        """Average cost of every step recorded since tracking started (NaN before the first)."""
        return self.total_cost / self.steps if self.steps else math.nan

    def _clamp(self, value: float) -> float:
        return min(max(value, self.feasible[0]), self.feasible[1])

    def record(self, cost: float) -> float | None:
        """Record one step's cost; returns the new solver target when it changed, else ``None``."""
        self.steps += 1
        self.total_cost += cost
        self._interval_cost += cost
        if self.steps % self.interval:
            return None
        self.base = self._clamp(self.base + self.gain * (self.wanted - self._interval_cost / self.interval))
        self._interval_cost = 0.0
        overspend = self.total_cost - self.requested * self.steps
        self.wanted = self._clamp(self.requested - overspend / self.horizon)
        target = self._clamp(self.base + self.wanted - self.requested)
        if target == self.target:
            return None
        self.target = target
        return target
