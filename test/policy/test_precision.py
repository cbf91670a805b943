"""Inference precision: bf16 autocast on CPU acts like fp32, fp16 is refused off CUDA, the node offers the choice."""
from __future__ import annotations

import numpy as np
import pytest
from small_models import random_frame

from deer_ros.budget.caps import Budget
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, GRIPPER_CLOSE, GRIPPER_OPEN, STATIC_CAMERA_SHAPE
from deer_ros.nodes.policy_node import PARAMETERS
from deer_ros.policy.deer_policy import DeerPolicy
from deer_ros.policy.types import Observation

INSTRUCTION_TEXT = 'open the drawer'


def _observations(count: int, seed: int = 3) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation(random_frame(rng, STATIC_CAMERA_SHAPE), random_frame(rng, GRIPPER_CAMERA_SHAPE), None)
            for _ in range(count)]


def _episode(policy: DeerPolicy, observations: list[Observation]) -> list:
    policy.reset()
    return [policy.select_action(observation, INSTRUCTION_TEXT) for observation in observations]


def test_bf16_on_cpu_acts_close_to_fp32(tiny_checkpoint):
    observations = _observations(4)
    full = _episode(DeerPolicy.from_pretrained(tiny_checkpoint), observations)
    bf16 = DeerPolicy.from_pretrained(tiny_checkpoint, precision='bf16')
    assert bf16.runtime.precision == 'bf16'
    half = _episode(bf16, observations)
    for (action, info), (reference, reference_info) in zip(half, full):
        assert action.pose.dtype == reference.pose.dtype == np.float64 and np.all(np.isfinite(action.pose))
        assert np.all(np.abs(action.pose) <= 1.0)
        np.testing.assert_allclose(action.pose, reference.pose, atol=0.1)
        assert action.gripper in (GRIPPER_OPEN, GRIPPER_CLOSE)
        assert all(isinstance(value, float) for value in info.consistency)
        assert len(info.consistency) == len(reference_info.consistency)
        assert info.exit_index == reference_info.exit_index


def test_fp16_on_cpu_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match='fp16 autocast needs CUDA; use bf16 or fp32 on CPU'):
        DeerPolicy.from_pretrained(tiny_checkpoint, precision='fp16')
    with pytest.raises(ValueError, match='precision must be one of'):
        DeerPolicy.from_pretrained(tiny_checkpoint, precision='int8')  # type: ignore[arg-type]


def test_the_node_offers_the_precision_read_only():
    [spec] = [spec for spec in PARAMETERS if spec.name == 'precision']
    assert spec.default == 'fp32' and spec.read_only and set(spec.choices) == {'fp32', 'bf16', 'fp16'}
    assert 'autocast on CUDA' in spec.description


def test_a_reload_to_a_higher_cap_keeps_the_precision(tiny_checkpoint):
    costs = DeerPolicy.from_pretrained(tiny_checkpoint).cost_table
    policy = DeerPolicy.from_pretrained(tiny_checkpoint, precision='bf16',
                                        budget=Budget(peak_gflops=float(costs.llm_gflops[2])))
    runtime = policy.runtime
    assert runtime.num_exits == 3
    runtime.apply(Budget(), runtime.thresholds.solve(Budget()))  # raising the cap reloads the layers
    assert runtime.num_exits == costs.num_exits and runtime._policy.precision == 'bf16'
    [(action, info)] = _episode(policy, _observations(1))
    assert np.all(np.isfinite(action.pose)) and info.exit_index == costs.num_exits - 1
