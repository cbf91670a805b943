"""Millisecond budgets inside solve_budget and the controller, and budgets shown in the operator's cost unit."""
from __future__ import annotations

import numpy as np
import pytest
from test_latency import P50, table_of

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.caps import Budget, budget_in_gflops, exit_costs, from_gflops, solve_budget
from deer_ros.budget.controller import ThresholdController
from deer_ros.budget.exit_criterion import first_exits
from deer_ros.budget.solver import BudgetError


@pytest.fixture
def calibration(make_values, cost_table) -> CalibrationData:
    return CalibrationData(make_values('converging', 3000, cost_table.num_exits, seed=5), 'rms',
                           cost_table.exit_layers)


def test_the_cap_is_the_smallest_of_all_caps(cost_table, calibration):
    table, llm = table_of(), exit_costs(cost_table)
    assert solve_budget(Budget(peak_ms=17.4), cost_table, latency=table).cap == 3
    assert solve_budget(Budget(peak_ms=17.4, peak_gflops=float(llm[2])), cost_table, latency=table).cap == 2
    assert solve_budget(Budget(peak_ms=15.6, peak_gflops=float(llm[4])), cost_table, latency=table).cap == 2
    with pytest.raises(BudgetError, match='need the measured latency table'):
        solve_budget(Budget(peak_ms=20.0), cost_table)
    with pytest.raises(BudgetError, match='feasible peak_ms limits are >= 12'):
        solve_budget(Budget(peak_ms=5.0), cost_table, latency=table)


def test_avg_ms_with_avg_gflops_meets_both(cost_table, calibration):
    table, llm = table_of(), exit_costs(cost_table)
    budget = Budget(avg_gflops=float(llm[3]), avg_ms=12.5, peak_ms=19.2)
    solution = solve_budget(budget, cost_table, calibration, latency=table)
    exits = first_exits(calibration.values[:, :solution.cap + 1], solution.criterion.thresholds)
    assert solution.cap == 4
    assert llm[exits].mean() <= 1.02 * llm[3] and table.average_costs()[exits].mean() <= 1.02 * 12.5


def test_controller_resolves_on_a_remeasured_table(cost_table, calibration):
    controller = ThresholdController(cost_table, calibration, budget=Budget(peak_ms=20.0), latency=table_of())
    assert controller.solution.cap == 4
    slower = table_of(p50=tuple(1.5 * v for v in P50), p99=tuple(1.5 * v for v in (12.0, 13.8, 15.6, 17.4, 19.2, 21.0)))
    solution = controller.use_latency(slower)
    assert solution.cap == 0 and controller.latency is slower
    controller.put_in_force(controller.budget, solution)
    assert 'latency table' in controller.describe()
    with pytest.raises(BudgetError):
        controller.use_latency(table_of(p50=tuple(3 * v for v in P50), p99=tuple(3 * v for v in P50)))
    assert controller.latency is slower
    described = ThresholdController(cost_table, calibration, budget=Budget(avg_ms=13.0), latency=table_of()).describe()
    assert float(described['calibration avg ms']) == pytest.approx(13.0, rel=0.02)
    assert described['avg_ms'] == '13'
    assert np.isfinite(float(described['calibration avg GFLOPs']))


def test_the_controller_describes_budgets_in_the_cost_unit(cost_table, calibration):
    llm = exit_costs(cost_table)
    budget = budget_in_gflops(Budget(avg_gflops=float(from_gflops(llm[3], 'gmacs'))), 'gmacs')
    assert budget.avg_gflops == pytest.approx(llm[3])
    described = ThresholdController(cost_table, calibration, budget=budget, cost_unit='gmacs').describe()
    assert described['cost_unit'] == 'gmacs' and float(described['avg_gflops']) == pytest.approx(llm[3] / 2, rel=1e-4)
    assert float(described['calibration avg GMACs']) == pytest.approx(llm[3] / 2, rel=0.05)
    with pytest.raises(ValueError, match='cost unit'):
        ThresholdController(cost_table, calibration, cost_unit='tflops')
