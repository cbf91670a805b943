"""Budgets in milliseconds: ``peak_ms`` -> the exit cap, ``avg_ms`` -> exit thresholds, on a measured table.

The same solvers as the GFLOPs budgets, fed the measured step times of
:class:`~deer_ros.budget.latency.LatencyTable` instead of counted GFLOPs:
``peak_ms`` caps the model at the deepest exit whose p99 step time fits
(:func:`~deer_ros.budget.solver.largest_fitting_exit`), ``avg_ms`` is solved by
:func:`~deer_ros.budget.solver.solve_average_budget` on the mean step times.
Combined with GFLOPs and memory limits the cap is the smallest of all caps,
and with two averages (GFLOPs and ms) the thresholds of the smaller q meet
both (:func:`tighter_average`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from deer_ros.budget.latency import LatencyTable
from deer_ros.budget.solver import (
    DEFAULT_TOLERANCE,
    BudgetError,
    SolverResult,
    check_budget,
    largest_fitting_exit,
    solve_average_budget,
)


def check_latency_table(table: LatencyTable, exit_layers: Sequence[int]) -> None:
    """Raise :class:`BudgetError` when ``table`` was measured for other exits than the model's."""
    if not table.matches(exit_layers):
        raise BudgetError(f'latency table exits at layers {list(table.exit_layers)} do not match '
                          f'the model {list(exit_layers)}; re-measure the latency table')


def latency_cap(table: LatencyTable, peak_ms: float) -> int:
    """Deepest exit whose measured p99 step time is <= ``peak_ms``.

    Raises:
        BudgetError: not even exit 0 fits; the message gives the feasible range.
    """
    peak_ms = check_budget(peak_ms, 'peak_ms')
    costs = table.peak_costs()
    try:
        return largest_fitting_exit(costs, peak_ms, 'peak_ms')
    except BudgetError as error:
        raise BudgetError(f'{error}; from {costs[-1]:.4g} every exit fits '
                          f'(measured p99 step ms on {table.key.describe()})') from error


def solve_average_ms(values: np.ndarray, table: LatencyTable, avg_ms: float, *, cap: int | None = None,
                     tolerance: float = DEFAULT_TOLERANCE) -> SolverResult:
    """Thresholds whose average step time on the calibration ``values`` is ``avg_ms``, over exits ``0..cap``.

    Args:
        values: ``(N, n)`` consistency matrix of the full model (``CalibrationData.values``).
        table: measured step times of the same ``n`` exits.
        avg_ms: target average step time.
        cap: deepest exit allowed by the hard limits (default: the last).
    Raises:
        BudgetError: ``avg_ms`` outside the feasible range (the message gives it) or not realisable.
    """
    avg_ms = check_budget(avg_ms, 'avg_ms')
    cap = table.num_exits - 1 if cap is None else cap
    if not 0 <= cap < table.num_exits:
        raise BudgetError(f'cap must be an exit of the table (0..{table.num_exits - 1}), got {cap}')
    values = np.asarray(values, dtype=np.float64)
    try:
        return solve_average_budget(values[:, :cap + 1], table.average_costs()[:cap + 1], avg_ms,
                                    tolerance=tolerance)
    except BudgetError as error:
        capped = f', model capped at exit {cap + 1}' if cap < table.num_exits - 1 else ''
        raise BudgetError(f'avg_ms: {error} [measured mean step ms on {table.key.describe()}{capped}]') from error


def tighter_average(results: Sequence[SolverResult]) -> SolverResult:
    """Of average solves on the same calibration values and cap, the one that meets them all: the smallest q.

    For a given q the thresholds do not depend on the costs, and a smaller q
    stops every cumulative share of samples no later, so its average is no
    higher in any non-decreasing unit.
    """
    if not results:
        raise ValueError('no average solve to choose from')
    return min(results, key=lambda result: result.q)


def realised_average(result: SolverResult, costs: Sequence[float] | np.ndarray) -> float:
    """Average of ``costs`` (any unit, per exit) under ``result``'s thresholds on its calibration values."""
    histogram = result.exit_histogram
    return float(np.dot(histogram, np.asarray(costs, dtype=np.float64)[:histogram.size]))
