"""PolicyRuntime with the real tiny model: calibration sources, budgets without side effects, live caps."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from small_models import random_frame

from deer_ros.budget.calibration import CalibrationData, CalibrationFileError, calibration_path
from deer_ros.budget.caps import Budget, BudgetSolution, param_memory_mb
from deer_ros.budget.solver import BudgetError
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, STATIC_CAMERA_SHAPE
from deer_ros.model import load_config
from deer_ros.policy.runtime import PolicyRuntime
from deer_ros.policy.types import Observation


def _observations(count: int = 3) -> list[Observation]:
    rng = np.random.default_rng(1)
    return [Observation(random_frame(rng, STATIC_CAMERA_SHAPE), random_frame(rng, GRIPPER_CAMERA_SHAPE))
            for _ in range(count)]


def _episode(runtime: PolicyRuntime) -> tuple[np.ndarray, list[int]]:
    """Poses and 0-based exits of a fixed 3-step episode from a reset state."""
    runtime.reset()
    steps = [runtime.step(observation, 'open the drawer') for observation in _observations()]
    return np.array([action.pose for action, _ in steps]), [info.exit_index for _, info in steps]


def _set_budget(runtime: PolicyRuntime, budget: Budget) -> BudgetSolution:
    """Solve once, apply that solution (as the node does)."""
    solution = runtime.thresholds.solve(budget)
    runtime.apply(budget, solution)
    return solution


def test_checkpoint_cap_lowered_live_and_raised_by_reload(tiny_checkpoint):
    warnings: list[str] = []
    runtime = PolicyRuntime(tiny_checkpoint, warn=warnings.append)
    assert not warnings and runtime.calibration_source == str(calibration_path(tiny_checkpoint))
    full_poses, full_exits = _episode(runtime)
    assert full_exits == [5, 5, 5]  # no budget: every step runs to the last exit

    peak = runtime.cost_table.llm_gflops[2]
    solution = _set_budget(runtime, Budget(peak_gflops=peak))
    assert solution.cap == 2 and runtime.num_exits == 3
    _, capped_exits = _episode(runtime)
    assert capped_exits == [2, 2, 2]

    _set_budget(runtime, Budget())  # raising the cap reloads the dropped layers from the checkpoint
    assert runtime.num_exits == 6
    poses, exits = _episode(runtime)
    np.testing.assert_allclose(poses, full_poses, atol=1e-6)
    assert exits == full_exits


def test_config_source_rebuilds_identical_weights_after_a_memory_cap():
    warnings: list[str] = []
    runtime = PolicyRuntime('tiny', seed=3, warn=warnings.append)
    assert len(warnings) == 1 and 'no calibration file for tiny' in warnings[0]
    assert runtime.calibration_source == 'synthetic'
    full_poses, _ = _episode(runtime)
    memory = param_memory_mb(runtime.cost_table)
    _set_budget(runtime, Budget(max_memory_mb=float(memory[1]) + 1e-3))
    assert runtime.num_exits == 2
    _set_budget(runtime, Budget())
    np.testing.assert_allclose(_episode(runtime)[0], full_poses, atol=1e-6)


def test_solve_reports_the_feasible_range_and_changes_nothing(tiny_checkpoint):
    runtime = PolicyRuntime(tiny_checkpoint)
    low, high = runtime.thresholds.feasible_average()
    costs = runtime.cost_table.llm_gflops
    assert (low, high) == (costs[1], costs[-1])
    before = runtime.thresholds.solution
    with pytest.raises(BudgetError, match=r'feasible range is \['):
        runtime.thresholds.solve(Budget(avg_gflops=high * 2))
    with pytest.raises(BudgetError, match='feasible memory MB limits are >='):
        runtime.thresholds.solve(Budget(max_memory_mb=1e-3))
    with pytest.raises(BudgetError, match='capped at exit 2'):  # average infeasible under a peak cap
        runtime.thresholds.solve(Budget(avg_gflops=high * 0.9, peak_gflops=costs[1]))
    assert runtime.thresholds.solution is before and runtime.num_exits == 6

    solution = _set_budget(runtime, Budget(avg_gflops=(low + high) / 2))
    assert runtime.thresholds.solution is solution and solution.average is not None
    assert abs(solution.average.realised_cost - (low + high) / 2) <= 0.02 * (low + high) / 2
    assert runtime.describe()['avg_gflops'] == f'{(low + high) / 2:g}'


def test_a_calibration_file_for_other_weights_or_metric_is_refused(tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / 'ckpt'
    shutil.copytree(tiny_checkpoint, checkpoint)
    with pytest.raises(ValueError, match="exit metric 'rms', not 'l1'"):
        PolicyRuntime(checkpoint, metric='l1')
    data = CalibrationData.load(calibration_path(checkpoint))
    data.metadata['checkpoint_sha256'] = 'someone else'
    data.save(calibration_path(checkpoint))
    with pytest.raises(CalibrationFileError, match='re-run calibration'):
        PolicyRuntime(checkpoint)


def test_a_proprioceptive_model_steps_only_with_the_robot_state(tmp_path):
    config = dataclasses.replace(load_config('tiny'), use_proprio=True)
    config.save(tmp_path / 'proprio.json')
    runtime = PolicyRuntime(tmp_path / 'proprio.json')
    rng = np.random.default_rng(0)
    images = random_frame(rng, STATIC_CAMERA_SHAPE), random_frame(rng, GRIPPER_CAMERA_SHAPE)
    action, _ = runtime.step(Observation(*images, proprio=np.zeros(15)), 'open the drawer')
    assert np.all(np.abs(action.pose) <= 1.0)
    with pytest.raises(ValueError, match='needs proprioception'):
        runtime.step(Observation(*images), 'open the drawer')

def test_every_step_runs_under_the_thresholds_the_controller_has_in_force(tiny_checkpoint):
    runtime = PolicyRuntime(tiny_checkpoint)
    low, high = runtime.thresholds.feasible_average()
    solution = _set_budget(runtime, Budget(avg_gflops=(low + high) / 2))
    [observation] = _observations(1)
    _, info = runtime.step(observation, 'open the drawer')
    np.testing.assert_array_equal(info.thresholds, solution.criterion.thresholds)

    explicit = np.array([np.inf, -np.inf, -np.inf, -np.inf, -np.inf, np.inf])  # never stop before the last exit
    runtime.thresholds.use_thresholds(explicit)
    _, info = runtime.step(observation, 'open the drawer')
    assert info.exit_index == 5
    np.testing.assert_array_equal(info.thresholds, explicit)


def test_a_first_exit_reference_model_stops_below_the_two_layer_floor(tmp_path):
    """One layer per exit: with the reference the rule decides exit 0, so averages under 2 layers are met."""
    config = dataclasses.replace(load_config('tiny'), exit_interval=1, num_exits=12, first_exit_reference=True)
    config.save(tmp_path / 'referenced.json')
    runtime = PolicyRuntime(tmp_path / 'referenced.json', warn=lambda message: None)  # synthetic calibration
    costs = runtime.cost_table.llm_gflops
    assert runtime.thresholds.calibration.first_exit_checked
    assert runtime.thresholds.feasible_average() == (costs[0], costs[-1])
    below_the_floor = 0.5 * (costs[0] + costs[1])
    solution = _set_budget(runtime, Budget(avg_gflops=below_the_floor))
    assert solution.criterion.first_exit_checked and solution.average.exit_histogram[0] > 0
    assert abs(solution.average.realised_cost - below_the_floor) <= 0.02 * below_the_floor
    runtime.thresholds.use_thresholds(np.full(12, np.inf))  # stop wherever the rule first decides: exit 0
    runtime.reset()
    infos = [runtime.step(observation, 'open the drawer')[1] for observation in _observations()]
    assert [info.exit_index for info in infos] == [0, 0, 0]
    assert all(len(info.consistency) == 1 and np.isfinite(info.consistency[0]) for info in infos)
    assert infos[0].llm_gflops == costs[0] < costs[1]
