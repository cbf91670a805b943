"""Exit thresholds that meet an average compute budget on calibration data.

DeeR's recipe: pick a geometric target distribution over exits,
p_k ∝ q^k, and turn it into thresholds by greedy quantiles of the
consistency values. Upstream sweeps q by hand; here q is solved from the
budget B. The geometric model's expectation Σ p_k(q)·c_k differs from what the
thresholds actually realise on the data (rounding to whole samples, ties), so
q is solved against the *realised* average cost, which is what the operator
asked for. That search is a bisection over a bracket that depends only on N,
so the answer is a monotone function of B (a larger budget never lowers the
average exit) even where the realised cost is a step function.

Exit 0 is chosen by the rule only when the calibration decides it (column 0
holds exit 0's differences from the first-exit reference, see
``exit_criterion``); otherwise the distribution covers exits 1..n-1 and the
cheapest budget is ``costs[1]``, with it exits 0..n-1 and ``costs[0]``.
Costs are unit-agnostic: LLM GFLOPs, total GFLOPs or layers all work as long as
they do not decrease with the exit index.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from deer_ros.budget.exit_criterion import first_exit_decided

DEFAULT_TOLERANCE = 0.02
_BISECTION_STEPS = 60
_LOG_Q_RESOLUTION = 1e-7


class BudgetError(ValueError):
    """A budget that is malformed or cannot be met by the model / calibration data."""


@dataclass(frozen=True)
class SolverResult:
    """Thresholds for one average budget and how they perform on the calibration data.

    Attributes:
        thresholds: per-exit thresholds for :class:`ExitCriterion` (``-inf`` =
            never stop here, ``inf`` on the last exit).
        q: ratio of the geometric target distribution p_k ∝ q^k.
        budget: the requested average cost.
        expected_cost: Σ p_k(q)·c_k, the geometric model's prediction at ``q``.
        realised_cost: average cost of the thresholds on the calibration data.
        exit_histogram: fraction of calibration samples stopping at each exit.
        q_geometric: the q that makes ``expected_cost`` equal the budget (what
            the geometric model alone would pick), kept to show the correction.
    """

    thresholds: np.ndarray
    q: float
    budget: float
    expected_cost: float
    realised_cost: float
    exit_histogram: np.ndarray
    q_geometric: float

    @property
    def relative_error(self) -> float:
        """(realised − budget) / budget."""
        return (self.realised_cost - self.budget) / self.budget

    @property
    def average_exit(self) -> float:
        """Mean exit index (0-based) on the calibration data."""
        return float(np.dot(np.arange(self.exit_histogram.size), self.exit_histogram))


def exit_distribution(log_q: float, num_exits: int, first_exit_checked: bool = False) -> np.ndarray:
    """Geometric target p_k ∝ q^k over the decided exits: 1..n-1 (p_0 = 0 unless there is a single exit),
    or 0..n-1 with ``first_exit_checked``.

    Works in log q so that extreme ratios neither overflow nor underflow to NaN.
    """
    first = _first_decided(num_exits, first_exit_checked)
    logits = log_q * np.arange(first, num_exits, dtype=np.float64)
    weights = np.exp(logits - logits.max())
    return np.concatenate([np.zeros(first), weights / weights.sum()])


def _first_decided(num_exits: int, first_exit_checked: bool) -> int:
    """The first exit the rule can stop at: 1, or 0 with ``first_exit_checked`` or a single exit."""
    return 0 if first_exit_checked or num_exits == 1 else 1


def check_costs(costs: np.ndarray | list[float] | tuple[float, ...]) -> np.ndarray:
    """Validate a per-exit cost vector: finite, >= 0, non-decreasing (deeper exits cost more)."""
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 1 or costs.size == 0:
        raise BudgetError(f'costs must be a non-empty 1-D vector, one per exit, got shape {costs.shape}')
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise BudgetError(f'costs must be finite and >= 0, got {costs.tolist()}')
    if np.any(np.diff(costs) < 0):
        raise BudgetError(f'costs must not decrease with the exit index, got {costs.tolist()}')
    return costs


def check_budget(budget: float, name: str = 'budget') -> float:
    """A budget must be a finite positive number (bools and strings are rejected)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise BudgetError(f'{name} must be a number, got {budget!r}')
    if not math.isfinite(budget) or budget <= 0:
        raise BudgetError(f'{name} must be finite and > 0, got {budget!r}')
    return float(budget)


def largest_fitting_exit(per_exit: Sequence[float], limit: float, what: str) -> int:
    """Index of the deepest exit whose requirement is <= ``limit``.

    Raises:
        BudgetError: not even exit 0 fits; the message names the minimum.
    """
    per_exit = np.asarray(per_exit, dtype=np.float64)
    fits = np.flatnonzero(per_exit <= limit)
    if fits.size == 0:
        raise BudgetError(f'{what} limit {limit:g} is below the smallest model (exit 1 needs {per_exit[0]:g}); '
                          f'feasible {what} limits are >= {per_exit[0]:g}')
    return int(fits[-1])


def feasible_range(costs: np.ndarray, first_exit_checked: bool = False) -> tuple[float, float]:
    """Smallest and largest average cost the exit rule can realise.

    The rule stops at exit 1 at the earliest, so the floor is ``costs[1]``
    (``costs[0]`` when the model has a single exit, or with ``first_exit_checked``).
    """
    costs = check_costs(costs)
    return float(costs[_first_decided(costs.size, first_exit_checked)]), float(costs[-1])


def expected_cost(log_q: float, costs: np.ndarray, first_exit_checked: bool = False) -> float:
    """Σ p_k(q)·c_k under the geometric target."""
    return float(np.dot(exit_distribution(log_q, costs.size, first_exit_checked), costs))


def greedy_thresholds(values: np.ndarray, distribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds that make the exit rule reproduce ``distribution`` on ``values``.

    For k = 0..n-2, among samples that have not stopped yet, T_k is the value
    whose rank makes the cumulative number stopped by exit k equal
    round(N·F_k) (F = cumulative distribution). Targeting cumulative counts
    lets later exits absorb ties that made an earlier exit overshoot.

    Returns:
        ``(thresholds, counts)``: counts[k] = samples the rule stops at exit k,
        identical to ``first_exits(values, thresholds, first_exit_decided(values))``'s histogram.
    """
    num_samples, num_exits = values.shape
    thresholds = np.full(num_exits, -np.inf)
    thresholds[-1] = np.inf
    counts = np.zeros(num_exits, dtype=np.int64)
    if num_exits == 1:
        counts[0] = num_samples
        return thresholds, counts
    targets = np.rint(num_samples * np.cumsum(distribution)).astype(np.int64)
    remaining = np.arange(num_samples)
    for k in range(num_exits - 1):  # exit 0 takes samples only where the distribution decides it
        wanted = targets[k] - (num_samples - remaining.size)
        if wanted <= 0 or remaining.size == 0:
            continue
        column = values[remaining, k]
        threshold = column.max() if wanted >= column.size else np.partition(column, wanted - 1)[wanted - 1]
        keep = column > threshold
        thresholds[k] = threshold
        counts[k] = remaining.size - int(keep.sum())
        remaining = remaining[keep]
    counts[-1] = remaining.size
    return thresholds, counts


def _solve_geometric(costs: np.ndarray, budget: float, bracket: float, first_exit_checked: bool) -> float:
    """log q with Σ p_k(q)·c_k = budget (bisection; the expectation is increasing in q)."""
    low, high = -bracket, bracket
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        if expected_cost(mid, costs, first_exit_checked) <= budget:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def solve_average_budget(values: np.ndarray, costs: np.ndarray | list[float] | tuple[float, ...], budget: float,
                         *, tolerance: float = DEFAULT_TOLERANCE) -> SolverResult:
    """Thresholds whose realised average cost on ``values`` is within ``tolerance`` of ``budget``.

    Args:
        values: ``(N, n)`` consistency matrix; column 0 decides exit 0 where it is
            finite (:func:`~deer_ros.budget.exit_criterion.first_exit_decided`), else it is ignored.
        costs: ``(n,)`` cost of a step that stops at each exit.
        budget: target average cost, in the units of ``costs``.
        tolerance: allowed relative error of the realised average.
    Raises:
        BudgetError: malformed inputs, a budget outside the feasible range (the
            message gives the range), or calibration data too coarse to realise
            the budget within ``tolerance``.
    """
    costs = check_costs(costs)
    budget = check_budget(budget)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != costs.size:
        raise BudgetError(f'values must have shape (N >= 1, {costs.size}) to match the costs, got {values.shape}')
    checked = first_exit_decided(values)
    if not np.all(np.isfinite(values[:, 0 if checked else 1:])):
        raise BudgetError('consistency values of exits 1.. must be finite')
    first = _first_decided(costs.size, checked)
    low_cost, high_cost = feasible_range(costs, checked)
    slack = 1e-9 * max(high_cost, 1.0)
    if not low_cost - slack <= budget <= high_cost + slack:
        raise BudgetError(f'average budget {budget:g} is infeasible: the feasible range is '
                          f'[{low_cost:g}, {high_cost:g}] (exit {first + 1} .. exit {costs.size})')

    num_samples = values.shape[0]
    # Beyond ±bracket every sample already stops at the first decided exit (resp. the last exit),
    # so the bracket depends on N only and the search is monotone in the budget.
    bracket = math.log(2.0 * num_samples) + 1.0
    cache: dict[float, tuple[np.ndarray, np.ndarray, float]] = {}

    def realise(log_q: float) -> tuple[np.ndarray, np.ndarray, float]:
        if log_q not in cache:
            thresholds, counts = greedy_thresholds(values, exit_distribution(log_q, costs.size, checked))
            cache[log_q] = (thresholds, counts, float(np.dot(counts, costs)) / num_samples)
        return cache[log_q]

    low, high = -bracket, bracket
    while high - low > _LOG_Q_RESOLUTION:
        mid = 0.5 * (low + high)
        if realise(mid)[2] <= budget:
            low = mid
        else:
            high = mid
    # Of the two bracket ends take the one closer to the budget (ties: the cheaper);
    # this choice is itself monotone in the budget.
    best = low if abs(realise(low)[2] - budget) <= abs(realise(high)[2] - budget) else high
    thresholds, counts, realised = realise(best)
    if abs(realised - budget) > tolerance * budget:
        raise BudgetError(
            f'calibration data ({num_samples} samples) cannot realise average budget {budget:g} within '
            f'{tolerance:.0%}: nearest achievable averages are {realise(low)[2]:g} and {realise(high)[2]:g}; '
            'collect more calibration samples')
    return SolverResult(thresholds=thresholds, q=math.exp(best), budget=budget,
                        expected_cost=expected_cost(best, costs), realised_cost=realised,
                        exit_histogram=counts / num_samples,
                        q_geometric=math.exp(_solve_geometric(costs, budget, bracket, checked)))
