"""The trained default policy that ships in the package: complete, small, and its calibration meets budgets.

The budget solver is tested on synthetic values elsewhere; here it runs on
the shipped checkpoint's real calibration file (consistency values collected
from the trained model on held-out demonstrations), over the whole feasible
range and at the budget the default params file sets.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from deer_ros.budget.calibration import calibration_path
from deer_ros.budget.caps import Budget, exit_costs
from deer_ros.cli.demo import default_source
from deer_ros.nodes.policy_node import PARAMETERS
from deer_ros.policy.runtime import PolicyRuntime
from deer_ros.resources import config_dir, resolve_checkpoint, shipped_policies

SHIPPED_FILES = {'config.json', 'model.safetensors', 'calibration.npz', 'train_config.json', 'evaluation.json'}


@pytest.fixture(scope='module')
def runtime() -> PolicyRuntime:
    return PolicyRuntime(resolve_checkpoint('tiny'))


def _realised(runtime: PolicyRuntime, avg_gflops: float) -> float:
    """Average LLM GFLOPs when the solved exit rule runs over the calibration rows."""
    solution = runtime.thresholds.solve(Budget(avg_gflops=avg_gflops))
    exits = solution.criterion.select_exits(runtime.thresholds.calibration.values)
    return float(exit_costs(runtime.cost_table)[exits].mean())


def test_the_package_ships_the_default_policy_complete_and_small() -> None:
    assert 'tiny' in shipped_policies()
    directory = resolve_checkpoint('tiny')
    assert default_source() == str(directory)
    assert SHIPPED_FILES <= {p.name for p in directory.iterdir()}
    assert sum(p.stat().st_size for p in directory.iterdir()) < 20 * 2 ** 20
    evaluation = json.loads((directory / 'evaluation.json').read_text())
    assert evaluation['num_chains'] >= 1 and 0.0 <= evaluation['average_length'] <= 5.0


def test_runtime_uses_the_shipped_calibration_not_a_synthetic_one(runtime: PolicyRuntime) -> None:
    assert runtime.calibration_source == str(calibration_path(runtime.checkpoint))
    assert runtime.thresholds.calibration.num_samples >= 200
    assert 'synthetic' not in json.dumps(runtime.thresholds.calibration.metadata)


def test_budgets_over_the_feasible_range_are_met_within_two_percent(runtime: PolicyRuntime) -> None:
    low, high = runtime.thresholds.feasible_average()
    realised = []
    for budget in np.linspace(low, high, 8):
        realised.append(_realised(runtime, budget))
        assert realised[-1] == pytest.approx(budget, rel=0.02)
    assert realised == sorted(realised)


def test_the_default_params_file_budget_is_feasible_and_met(runtime: PolicyRuntime) -> None:
    params = yaml.safe_load((config_dir() / 'deer.yaml').read_text())['deer_policy']['ros__parameters']
    default_checkpoint = next(spec.default for spec in PARAMETERS if spec.name == 'checkpoint')
    assert params.get('checkpoint', default_checkpoint) == 'tiny'  # the file overrides only what differs
    budget = params['budget']['avg_gflops']
    assert budget > 0, 'config/deer.yaml should run the shipped policy under an average budget'
    assert _realised(runtime, budget) == pytest.approx(budget, rel=0.02)
