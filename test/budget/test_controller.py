"""ThresholdController: pure solves, one way into force, tracker re-solves and explicit thresholds, refined entries."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.caps import Budget, exit_costs, solve_budget
from deer_ros.budget.controller import ThresholdController
from deer_ros.budget.refined import RefinedEntry
from deer_ros.budget.solver import BudgetError, feasible_range


@pytest.fixture
def calibration(make_values, cost_table) -> CalibrationData:
    return CalibrationData(make_values('converging', 2000, cost_table.num_exits, seed=3), 'rms',
                           cost_table.exit_layers)


@pytest.fixture
def middle(cost_table) -> float:
    """An average budget halfway through the feasible range of the uncapped model."""
    low, high = feasible_range(exit_costs(cost_table))
    return (low + high) / 2


def test_solve_is_pure_and_put_in_force_runs_exactly_that_solution(cost_table, calibration, middle):
    controller = ThresholdController(cost_table, calibration)
    budget, before = controller.budget, controller.solution
    assert budget == Budget() and before.cap == cost_table.num_exits - 1  # no budget: run to the last exit

    solution = controller.solve(Budget(avg_gflops=middle))
    again = controller.solve(Budget(avg_gflops=middle))
    np.testing.assert_array_equal(solution.criterion.thresholds, again.criterion.thresholds)
    with pytest.raises(BudgetError, match=r'feasible range is \['):
        controller.solve(Budget(avg_gflops=middle * 100))
    assert controller.budget is budget and controller.solution is before  # solving changed nothing

    controller.put_in_force(Budget(avg_gflops=middle), solution)
    assert controller.solution is solution and controller.budget == Budget(avg_gflops=middle)
    described = controller.describe()
    assert described['avg_gflops'] == f'{middle:g}' and described['avg tracking'] == 'off'
    assert described['thresholds'] == ', '.join(f'{t:.4g}' for t in solution.criterion.thresholds)


def test_a_peak_cap_limits_the_feasible_average(cost_table, calibration):
    costs = exit_costs(cost_table)
    controller = ThresholdController(cost_table, calibration, budget=Budget(peak_gflops=costs[2]))
    assert controller.solution.cap == 2
    assert controller.feasible_average() == feasible_range(costs[:3])
    assert controller.describe()['exits allowed'] == f'3 of {cost_table.num_exits}'


def test_explicit_thresholds_replace_the_solve_until_the_next_budget_and_pause_tracking(cost_table, calibration,
                                                                                      middle):
    budget = Budget(avg_gflops=middle)
    controller = ThresholdController(cost_table, calibration, budget=budget, track_average=True)
    assert controller.describe()['avg tracking'].startswith('solver target')
    explicit = np.array([np.inf, 0.01, 0.02, 0.03, 0.04, np.inf])
    controller.use_thresholds(explicit)
    np.testing.assert_array_equal(controller.solution.criterion.thresholds, explicit)
    assert controller.budget == budget and controller.describe()['avg tracking'] == 'off'

    in_force = controller.solution
    with pytest.raises(ValueError, match='3 thresholds for 6 exits'):
        controller.use_thresholds(explicit[:3])
    assert controller.solution is in_force

    solution = controller.solve(budget)
    controller.put_in_force(budget, solution)  # the next budget change replaces them and tracking resumes
    assert controller.solution is solution and controller.describe()['avg tracking'].startswith('solver target')


def test_the_tracker_re_solves_for_its_target_and_off_restores_the_offline_solve(cost_table, calibration, middle):
    budget = Budget(avg_gflops=middle)
    controller = ThresholdController(cost_table, calibration, budget=budget, track_average=True)
    offline = controller.solution
    cheap = exit_costs(cost_table)[1]
    for _ in range(24):  # the tracker corrects every 25 steps
        controller.record(controller.solution, llm_gflops=cheap, total_gflops=0.0)
    assert controller.solution is offline
    controller.record(controller.solution, llm_gflops=cheap, total_gflops=0.0)

    # Every step far under the request: the target moves up and the thresholds are solved for it.
    tracked = controller.solution
    assert tracked is not offline and controller.budget == budget and tracked.cap == offline.cap
    target = float(controller.describe()['avg tracking'].split()[2].rstrip(','))
    assert target > middle
    assert tracked.average is not None and tracked.average.realised_cost == pytest.approx(target, rel=0.01)

    controller.record(offline, llm_gflops=cheap, total_gflops=0.0)  # a step under thresholds since replaced
    assert 'over 25 steps' in controller.describe()['avg tracking']

    controller.set_tracking(False)
    assert controller.describe()['avg tracking'] == 'off' and not controller.track_average
    np.testing.assert_array_equal(controller.solution.criterion.thresholds, offline.criterion.thresholds)
    controller.set_tracking(True)
    assert 'over 0 steps' in controller.describe()['avg tracking']


def test_total_cost_kind_tracks_total_gflops(cost_table, calibration):
    low, high = feasible_range(exit_costs(cost_table, 'total'))
    controller = ThresholdController(cost_table, calibration, cost_kind='total',
                                     budget=Budget(avg_gflops=(low + high) / 2), track_average=True)
    for _ in range(25):
        controller.record(controller.solution, llm_gflops=0.0, total_gflops=high)
    assert float(controller.describe()['avg tracking'].split()[4]) == pytest.approx(high)


def test_refined_thresholds_for_exactly_their_budget_cap_and_kind(cost_table, calibration, middle):
    offline = solve_budget(Budget(avg_gflops=middle), cost_table, calibration)
    refined = tuple(float(t) for t in offline.criterion.thresholds * 1.5)
    entry = RefinedEntry(middle, offline.cap, 'llm', refined, 1.0, middle)
    controller = ThresholdController(cost_table, calibration, refined=[entry], budget=Budget(avg_gflops=middle),
                                     track_average=True)
    np.testing.assert_allclose(controller.solution.criterion.thresholds, refined)
    assert controller.describe()['avg tracking'] == 'off'  # tuned in closed loop already: never re-solved
    np.testing.assert_allclose(controller.solve(Budget(avg_gflops=middle), refined=False).criterion.thresholds,
                               offline.criterion.thresholds)

    other = controller.solve(Budget(avg_gflops=middle * 1.1))
    assert not np.allclose(other.criterion.thresholds[1:-1], np.array(refined)[1:-1])
    capped = controller.solve(Budget(avg_gflops=middle, peak_gflops=exit_costs(cost_table)[-2]))
    assert capped.cap == offline.cap - 1 and capped.criterion.num_exits == offline.cap  # other cap: offline solve
    other_kind = ThresholdController(cost_table, calibration, refined=[dataclasses.replace(entry, cost_kind='total')])
    np.testing.assert_allclose(other_kind.solve(Budget(avg_gflops=middle)).criterion.thresholds,
                               offline.criterion.thresholds)


def test_a_calibration_that_decides_exit_0_puts_the_first_exit_rule_in_force(cost_table, calibration,
                                                                             make_decided_values):
    """Every criterion the controller solves or is given checks exit 0; averages below exit 1's cost are met."""
    costs = exit_costs(cost_table)
    plain = ThresholdController(cost_table, calibration, budget=Budget(avg_gflops=costs[2]))
    assert not plain.solution.criterion.first_exit_checked and plain.feasible_average()[0] == costs[1]
    decided = CalibrationData(make_decided_values(2000, cost_table.num_exits, seed=3), 'rms', cost_table.exit_layers)
    below_the_floor = 0.5 * (costs[0] + costs[1])
    controller = ThresholdController(cost_table, decided, budget=Budget(avg_gflops=below_the_floor),
                                     track_average=True)
    solution = controller.solution
    assert solution.criterion.first_exit_checked and solution.average.realised_cost < costs[1]
    assert controller.feasible_average() == (costs[0], costs[-1])
    assert controller.describe()['avg tracking'].startswith('solver target')
    controller.use_thresholds(solution.criterion.thresholds)
    assert controller.solution.criterion.first_exit_checked
    entry = RefinedEntry(below_the_floor, solution.cap, 'llm', tuple(solution.criterion.thresholds), 1.0,
                         below_the_floor)  # refined by `deer-ros refine`: tuned under the calibration's rule
    refined = ThresholdController(cost_table, decided, refined=[entry], budget=Budget(avg_gflops=below_the_floor))
    assert refined.solution.criterion.first_exit_checked
