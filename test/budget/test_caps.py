"""Peak GFLOPs / memory caps and their combination with the average budget."""
from __future__ import annotations

import numpy as np
import pytest

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.caps import Budget, exit_cap, exit_costs, param_memory_mb, solve_budget
from deer_ros.budget.solver import BudgetError


@pytest.fixture
def calibration(make_values, cost_table) -> CalibrationData:
    return CalibrationData(make_values('converging', 3000, cost_table.num_exits, seed=5), 'rms',
                           cost_table.exit_layers)


def test_peak_cap_is_the_deepest_fitting_exit(cost_table):
    llm = exit_costs(cost_table, 'llm')
    assert exit_cap(Budget(peak_gflops=llm[3]), cost_table) == 3
    assert exit_cap(Budget(peak_gflops=llm[3] - 1e-6), cost_table) == 2
    total = exit_costs(cost_table, 'total')
    assert total[2] == pytest.approx(cost_table.total_gflops(2))
    assert exit_cap(Budget(peak_gflops=total[4] + 0.01), cost_table, kind='total') == 4
    assert exit_cap(Budget(), cost_table) == 5


def test_memory_cap_from_parameters_or_measured_table(cost_table):
    params = param_memory_mb(cost_table)
    assert exit_cap(Budget(max_memory_mb=params[2] + 1), cost_table) == 2
    measured = params + 150.0
    assert exit_cap(Budget(max_memory_mb=params[2] + 1), cost_table, memory_mb=measured) == 1
    assert exit_cap(Budget(max_memory_mb=1e6, peak_gflops=exit_costs(cost_table)[1]), cost_table) == 1


def test_nothing_fits_reports_the_minimum(cost_table):
    with pytest.raises(BudgetError, match='feasible peak llm GFLOPs limits are >= 2.7'):
        exit_cap(Budget(peak_gflops=1.0), cost_table)
    with pytest.raises(BudgetError, match='memory MB'):
        exit_cap(Budget(max_memory_mb=10.0), cost_table)
    with pytest.raises(BudgetError, match='one entry per exit'):
        exit_cap(Budget(max_memory_mb=10.0), cost_table, memory_mb=[1.0, 2.0])


def test_average_budget_solved_over_capped_exits(cost_table, calibration):
    llm = exit_costs(cost_table)
    budget = Budget(avg_gflops=0.5 * (llm[1] + llm[3]), peak_gflops=llm[3] + 0.1)
    solution = solve_budget(budget, cost_table, calibration)
    assert solution.cap == 3 and solution.criterion.num_exits == 4
    exits = solution.criterion.select_exits(calibration.values[:, :4])
    assert exits.max() <= 3
    assert abs(llm[exits].mean() - budget.avg_gflops) <= 0.02 * budget.avg_gflops


def test_total_cost_kind_for_the_average(cost_table, calibration):
    total = exit_costs(cost_table, 'total')
    solution = solve_budget(Budget(avg_gflops=float(total[3])), cost_table, calibration, kind='total')
    exits = solution.criterion.select_exits(calibration.values)
    assert abs(total[exits].mean() - total[3]) <= 0.02 * total[3]


def test_average_infeasible_under_cap_names_the_cap(cost_table, calibration):
    llm = exit_costs(cost_table)
    with pytest.raises(BudgetError, match=r'feasible range is \[5\.3, 7\.9\].*capped at exit 3'):
        solve_budget(Budget(avg_gflops=llm[4], peak_gflops=llm[2]), cost_table, calibration)


def test_without_average_budget_run_to_the_cap(cost_table):
    solution = solve_budget(Budget(peak_gflops=exit_costs(cost_table)[2]), cost_table)
    assert solution.cap == 2 and solution.average is None
    assert solution.criterion.select_exits(np.full((3, 3), 0.0)).tolist() == [2, 2, 2]


def test_average_budget_needs_matching_calibration(cost_table, make_values):
    with pytest.raises(BudgetError, match='needs calibration'):
        solve_budget(Budget(avg_gflops=8.0), cost_table)
    other = CalibrationData(make_values('uniform', 10, 6), 'rms', (1, 2, 3, 4, 5, 6))
    with pytest.raises(BudgetError, match='do not match'):
        solve_budget(Budget(avg_gflops=8.0), cost_table, other)


@pytest.mark.parametrize('field', ['avg_gflops', 'peak_gflops', 'max_memory_mb'])
@pytest.mark.parametrize('value', [float('nan'), -3.0, 0.0])
def test_malformed_budget_fields(field, value):
    with pytest.raises(BudgetError, match=field):
        Budget(**{field: value})
