"""The live exit thresholds of one model: budgets solved, put in force, and tracked in closed loop.

One object answers "which thresholds are in force and why", so a budget
change has one data flow: :meth:`ThresholdController.solve` (pure, so a
caller can validate a budget and keep the answer), then
:meth:`ThresholdController.put_in_force` with that very solution. Every other
change -- explicit thresholds under test, a tracker re-solve, tracking
switched off -- also goes through ``_put_in_force``, the only place the
thresholds change. Budgets are solved against the *full* model's cost table
and calibration, so lowering and raising a cap round-trips.

Whoever runs the model (``PolicyRuntime``) fits it to ``solution.cap`` before
calling :meth:`put_in_force`, reads :attr:`solution` at the start of every
step and reports the step's cost with :meth:`record`. A step recorded under
thresholds no longer in force is ignored, so a change lands between two steps.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

import numpy as np

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.caps import (
    COST_UNIT_LABELS,
    Budget,
    BudgetSolution,
    CostKind,
    CostUnit,
    budget_in_unit,
    check_cost_unit,
    exit_costs,
    from_gflops,
    solve_budget,
)
from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.budget.latency import LatencyTable
from deer_ros.budget.latency_budget import realised_average
from deer_ros.budget.refined import RefinedEntry, find_refined
from deer_ros.budget.solver import BudgetError, feasible_range
from deer_ros.budget.tracking import AverageBudgetTracker
from deer_ros.model.cost import CostTable


class ThresholdController:
    """Solve budgets for one model and keep the thresholds in force; thread-safe.

    Args:
        cost_table: the full model's per-exit costs.
        calibration: consistency values of the full model (the exits of ``cost_table``). Where they
            decide exit 0 (a model with ``first_exit_reference``: ``calibration.first_exit_checked``),
            every criterion solved or given here checks exit 0 too, and the feasible averages start there.
        cost_kind: what the GFLOPs budgets count: ``llm`` (decoder only, the
            paper's unit) or ``total`` (vision + decoder + heads).
        refined: thresholds tuned by ``deer-ros refine``, used for exactly their budget.
        budget: the budget in force from the start (solved here; raises
            :class:`BudgetError` when infeasible).
        track_average: steer the average budget's solver target from the
            realised step costs (:class:`AverageBudgetTracker`).
        latency: the measured per-exit step times, needed for ``peak_ms`` / ``avg_ms``.
        cost_unit: the unit the operator gives GFLOPs budgets in (``gmacs``: the paper's); budgets
            reach :meth:`solve` already in GFLOPs (:func:`~deer_ros.budget.caps.budget_in_gflops`),
            :meth:`describe` shows them back in this unit.
    """

    def __init__(self, cost_table: CostTable, calibration: CalibrationData, *, cost_kind: CostKind = 'llm',
                 refined: Sequence[RefinedEntry] = (), budget: Budget = Budget(),
                 track_average: bool = False, latency: LatencyTable | None = None,
                 cost_unit: CostUnit = 'gflops') -> None:
        self.cost_table = cost_table
        self.cost_unit: CostUnit = check_cost_unit(cost_unit)
        self.calibration = calibration
        self._latency = latency
        self.cost_kind: CostKind = cost_kind
        self.refined = tuple(refined)
        self._lock = threading.Lock()
        self._track_average = track_average
        solution = self.solve(budget)
        with self._lock:
            self._put_in_force(budget, solution, self._new_tracker(budget, solution))

    # ---- solving (pure)
    def solve(self, budget: Budget, *, refined: bool = True) -> BudgetSolution:
        """Cap and thresholds for ``budget`` on the full model; changes nothing.

        Thresholds refined by ``deer-ros refine`` for exactly this budget (same
        cap and cost kind) replace the offline ones unless ``refined`` is false.

        Raises:
            BudgetError: an infeasible budget; the message gives the feasible range.
        """
        solution = solve_budget(budget, self.cost_table, self.calibration, kind=self.cost_kind, latency=self._latency)
        use_refined = refined and budget.avg_ms is None  # refined thresholds were tuned for a GFLOPs average only
        entry = find_refined(self.refined, budget.avg_gflops, solution.cap, self.cost_kind) if use_refined else None
        if entry is None:
            return solution
        # imported upstream thresholds say so; those of `deer-ros refine` were tuned under the calibration's rule
        first_exit_checked = bool(entry.tuning.get('first_exit_checked', self.calibration.first_exit_checked))
        return dataclasses.replace(solution, criterion=ExitCriterion(np.asarray(entry.thresholds),
                                                                     self.calibration.metric, first_exit_checked))

    # ---- what is in force
    @property
    def budget(self) -> Budget:
        """The operator's budget in force (what tracking aims for, not the tracker's corrected target)."""
        return self._budget

    @property
    def solution(self) -> BudgetSolution:
        """Cap and thresholds in force; a step reads it once and runs under it."""
        return self._solution

    @property
    def track_average(self) -> bool:
        return self._track_average

    @property
    def latency(self) -> LatencyTable | None:
        """The measured step times the millisecond budgets are solved on."""
        return self._latency

    def use_latency(self, table: LatencyTable) -> BudgetSolution:
        """Solve the budget in force on a re-measured table; the caller applies it (cap first, as for a budget).

        Raises:
            BudgetError: the budget in force does not fit the new table; the old table stays.
        """
        with self._lock:
            previous, self._latency = self._latency, table
        try:
            return self.solve(self._budget)
        except BudgetError:
            with self._lock:
                self._latency = previous
            raise

    def feasible_average(self) -> tuple[float, float]:
        """Average GFLOPs the exit rule can realise under the live peak/memory cap."""
        return self._feasible_range(self._solution.cap)

    # ---- changes: every one ends in _put_in_force
    def put_in_force(self, budget: Budget, solution: BudgetSolution) -> None:
        """Run ``solution`` (from :meth:`solve` for ``budget``); tracking restarts for the new budget.

        A caller running a model fits it to ``solution.cap`` first (``PolicyRuntime.apply`` does).
        """
        with self._lock:
            self._put_in_force(budget, solution, self._new_tracker(budget, solution))

    def use_thresholds(self, thresholds: Sequence[float] | np.ndarray) -> None:
        """Run the live cap with explicit thresholds (threshold search); the next budget change replaces them.

        Tracking pauses until then: it would move the thresholds under test.

        Raises:
            ValueError: not one threshold per exit of the live cap.
        """
        with self._lock:
            criterion = ExitCriterion(np.asarray(thresholds, dtype=np.float64), self.calibration.metric,
                                      self.calibration.first_exit_checked)
            if criterion.num_exits != self._solution.cap + 1:
                raise ValueError(f'{criterion.num_exits} thresholds for {self._solution.cap + 1} exits in force')
            self._put_in_force(self._budget, dataclasses.replace(self._solution, criterion=criterion), None)

    def set_tracking(self, enabled: bool) -> None:
        """Turn closed-loop tracking of the average budget on or off (off: the offline solve is in force)."""
        with self._lock:
            self._track_average = enabled
            solution = self._solution
            if not enabled and self._tracker is not None:  # the tracker moved the thresholds: back to the solve
                solution = self.solve(self._budget)
            self._put_in_force(self._budget, solution, self._new_tracker(self._budget, solution))

    def record(self, ran_under: BudgetSolution, *, llm_gflops: float, total_gflops: float) -> None:
        """One step's cost, for the tracker; re-solves for its corrected target when that moved.

        ``ran_under`` is the :attr:`solution` the step read: a step that ran
        under thresholds since replaced says nothing about the ones in force.
        """
        with self._lock:
            if self._tracker is None or ran_under is not self._solution:
                return
            target = self._tracker.record(llm_gflops if self.cost_kind == 'llm' else total_gflops)
            if target is None:
                return
            try:
                solution = solve_budget(dataclasses.replace(self._budget, avg_gflops=target), self.cost_table,
                                        self.calibration, kind=self.cost_kind, latency=self._latency)
            except BudgetError:  # the target is clamped to the feasible range; keep the thresholds if an edge slips
                return
            self._put_in_force(self._budget, solution, self._tracker)

    def _put_in_force(self, budget: Budget, solution: BudgetSolution, tracker: AverageBudgetTracker | None) -> None:
        """The one place the thresholds in force change, with the budget they serve and what steers them (lock held)."""
        self._budget, self._solution, self._tracker = budget, solution, tracker

    def _new_tracker(self, budget: Budget, solution: BudgetSolution) -> AverageBudgetTracker | None:
        """A tracker for ``budget``; none when off, without an average budget, or for refined thresholds.

        Thresholds from ``deer-ros refine`` were tuned in closed loop for exactly this budget: they stay as found.
        """
        if not self._track_average or budget.avg_gflops is None:
            return None
        if find_refined(self.refined, budget.avg_gflops, solution.cap, self.cost_kind) is not None:
            return None
        return AverageBudgetTracker(budget.avg_gflops, self._feasible_range(solution.cap))

    def _feasible_range(self, cap: int) -> tuple[float, float]:
        """Average cost the exit rule can realise over exits 0..cap (from exit 0 when the calibration decides it)."""
        return feasible_range(exit_costs(self.cost_table, self.cost_kind)[:cap + 1],
                              self.calibration.first_exit_checked)

    # ---- diagnostics
    def describe(self) -> dict[str, str]:
        """Budget in force, cap, thresholds and tracking as strings."""
        with self._lock:
            budget, solution, tracker = self._budget, self._solution, self._tracker
            tracking = 'off' if tracker is None else (
                f'solver target {tracker.target:.4g}, realised {tracker.realised:.4g} over {tracker.steps} steps')
        shown = dataclasses.asdict(budget_in_unit(budget, self.cost_unit))
        described = {key: 'off' if value is None else f'{value:g}' for key, value in shown.items()}
        described.update({
            'cost_kind': self.cost_kind,
            'cost_unit': self.cost_unit,
            'exits allowed': f'{solution.cap + 1} of {self.cost_table.num_exits}',
            'thresholds': ', '.join(f'{t:.4g}' for t in solution.criterion.thresholds),
        })
        if solution.average is not None:  # realised in each unit: the binding average may be the other one
            costs = exit_costs(self.cost_table, self.cost_kind)
            realised = from_gflops(realised_average(solution.average, costs), self.cost_unit)
            described[f'calibration avg {COST_UNIT_LABELS[self.cost_unit]}'] = f'{realised:.4g}'
            if self._latency is not None:
                described['calibration avg ms'] = (
                    f'{realised_average(solution.average, self._latency.average_costs()):.4g}')
        if self._latency is not None:
            described['latency table'] = f'{self._latency.key.describe()}, measured {self._latency.measured_at}'
        described['avg tracking'] = tracking
        return described
