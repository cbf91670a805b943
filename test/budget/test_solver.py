"""Average-budget solver: budgets met on the data, monotone, bad budgets rejected."""
from __future__ import annotations

import math

import numpy as np
import pytest

from deer_ros.budget.exit_criterion import ExitCriterion, first_exits
from deer_ros.budget.solver import (
    BudgetError,
    exit_distribution,
    feasible_range,
    greedy_thresholds,
    solve_average_budget,
)


def realised_cost(values: np.ndarray, thresholds: np.ndarray, costs: np.ndarray) -> float:
    """Average cost when the real exit rule runs over the calibration rows."""
    return float(costs[ExitCriterion(thresholds).select_exits(values)].mean())


@pytest.mark.parametrize('num_exits', range(3, 9))
def test_realised_cost_within_two_percent(distribution, num_exits, make_values, make_costs):
    values, costs = make_values(distribution, 3000, num_exits, seed=num_exits), make_costs(num_exits)
    for budget in np.linspace(costs[1], costs[-1], 9):
        result = solve_average_budget(values, costs, budget)
        measured = realised_cost(values, result.thresholds, costs)
        assert measured == pytest.approx(result.realised_cost)
        assert abs(measured - budget) <= 0.02 * budget
        assert result.exit_histogram[0] == 0.0
        assert result.exit_histogram.sum() == pytest.approx(1.0)


def test_two_exits_always_stop_at_exit_one(make_values, make_costs):
    values, costs = make_values('halfnormal', 100, 2), make_costs(2)
    result = solve_average_budget(values, costs, costs[1])
    assert result.exit_histogram.tolist() == [0.0, 1.0]
    assert np.isposinf(result.thresholds[-1])


def test_single_exit_runs_exit_zero():
    result = solve_average_budget(np.full((10, 1), np.nan), [2.0], 2.0)
    assert result.exit_histogram.tolist() == [1.0]
    assert feasible_range(np.array([2.0])) == (2.0, 2.0)
    with pytest.raises(BudgetError, match=r'\[2, 2\] \(exit 1 \.\. exit 1\)'):
        solve_average_budget(np.full((10, 1), np.nan), [2.0], 3.0)


def test_larger_budget_never_lowers_average_exit(distribution, make_values, make_costs):
    values, costs = make_values(distribution, 2000, 6, seed=3), make_costs(6)
    results = [solve_average_budget(values, costs, budget, tolerance=1.0)
               for budget in np.linspace(costs[1], costs[-1], 60)]
    average_exits = [result.average_exit for result in results]
    realised = [result.realised_cost for result in results]
    assert np.all(np.diff(average_exits) >= 0)
    assert np.all(np.diff(realised) >= 0)
    assert average_exits[0] == 1.0 and average_exits[-1] == 5.0


def test_correction_beats_the_geometric_model(make_values, make_costs):
    """The geometric q alone can miss the budget on the data; the returned q must not."""
    values, costs = make_values('rounded', 400, 6, seed=1), make_costs(6)
    budget = 0.5 * (costs[1] + costs[-1])
    result = solve_average_budget(values, costs, budget)
    thresholds, counts = greedy_thresholds(values, exit_distribution(math.log(result.q_geometric), 6))
    assert abs(result.realised_cost - budget) <= abs(np.dot(counts, costs) / 400 - budget)


def test_greedy_counts_match_the_exit_rule(make_values):
    values = make_values('rounded', 1000, 7)
    thresholds, counts = greedy_thresholds(values, exit_distribution(0.1, 7))
    assert counts.tolist() == np.bincount(first_exits(values, thresholds), minlength=7).tolist()
    assert counts[0] == 0 and counts.sum() == 1000


def test_geometric_distribution():
    p = exit_distribution(math.log(0.5), 4)
    assert p[0] == 0.0 and p.sum() == pytest.approx(1.0)
    assert p[2] / p[1] == pytest.approx(0.5) and p[3] / p[2] == pytest.approx(0.5)
    assert np.all(np.isfinite(exit_distribution(1e4, 8))) and np.all(np.isfinite(exit_distribution(-1e4, 8)))


@pytest.mark.parametrize('budget', [1.0, 40.0])
def test_infeasible_budget_reports_the_range(budget, make_values, make_costs):
    values, costs = make_values('uniform', 200, 6), make_costs(6)
    with pytest.raises(BudgetError, match=r'feasible range is \[5\.3, 15\.7\]'):
        solve_average_budget(values, costs, budget)


def test_budget_below_exit_one_is_infeasible_even_above_exit_zero(make_values, make_costs):
    values, costs = make_values('uniform', 200, 6), make_costs(6)
    with pytest.raises(BudgetError, match='infeasible'):
        solve_average_budget(values, costs, 0.5 * (costs[0] + costs[1]))


@pytest.mark.parametrize('budget', [float('nan'), -1.0, 0.0, float('inf'), True, '8'])
def test_malformed_budget_rejected(budget, make_values, make_costs):
    with pytest.raises(BudgetError, match='budget'):
        solve_average_budget(make_values('uniform', 50, 4), make_costs(4), budget)


@pytest.mark.parametrize('costs, message', [([1.0, 2.0, 3.0], 'shape'), ([1.0, 3.0, 2.0, 4.0], 'decrease'),
                                            ([1.0, float('nan'), 3.0, 4.0], 'finite'), ([-1.0, 1.0, 2.0, 3.0], '>= 0')])
def test_malformed_costs_rejected(costs, message, make_values):
    with pytest.raises(BudgetError, match=message):
        solve_average_budget(make_values('uniform', 50, 4), costs, 2.5)


def test_non_finite_values_rejected(make_values, make_costs):
    values = make_values('uniform', 50, 4)
    values[3, 2] = np.nan
    with pytest.raises(BudgetError, match='finite'):
        solve_average_budget(values, make_costs(4), 5.0)


def test_too_coarse_calibration_is_reported(make_costs):
    """Identical values can only move all samples at once: in-between budgets cannot be met."""
    values = np.full((500, 4), 0.01)
    values[:, 0] = np.nan
    costs = make_costs(4)
    with pytest.raises(BudgetError, match='collect more calibration samples'):
        solve_average_budget(values, costs, 0.5 * (costs[1] + costs[2]))
    assert solve_average_budget(values, costs, costs[2]).exit_histogram.tolist() == [0, 0, 1, 0]


def test_a_decided_first_exit_lowers_the_floor_to_exit_zero(make_decided_values, make_values, make_costs):
    """Column 0 holds exit 0's differences from the first-exit reference: budgets below exit 1's cost are met."""
    decided, costs = make_decided_values(3000, 6, seed=2), make_costs(6)
    assert feasible_range(costs, first_exit_checked=True) == (costs[0], costs[-1])
    below_the_floor = 0.5 * (costs[0] + costs[1])
    with pytest.raises(BudgetError, match=r'\(exit 2 \.\. exit 6\)'):
        solve_average_budget(make_values('converging', 3000, 6, seed=2), costs, below_the_floor)
    results = [solve_average_budget(decided, costs, budget) for budget in np.linspace(costs[0], costs[-1], 40)]
    for result in results:
        exits = first_exits(decided, result.thresholds, first_exit_checked=True)
        assert np.bincount(exits, minlength=6) / 3000 == pytest.approx(result.exit_histogram)
        assert abs(result.relative_error) <= 0.02
    assert results[0].exit_histogram[0] == 1.0 and np.all(np.diff([r.average_exit for r in results]) >= 0)
    result = solve_average_budget(decided, costs, below_the_floor)
    assert 0 < result.exit_histogram[0] < 1 and np.isfinite(result.thresholds[0])
    with pytest.raises(BudgetError, match=r'\(exit 1 \.\. exit 6\)'):
        solve_average_budget(decided, costs, 0.9 * costs[0])
