"""Fixtures for the node tests: a tiny checkpoint with its calibration, and an in-process driver node.

The checkpoint (random-init ``tiny`` saved once per session, with calibration
values collected on random images) lets node processes start without the
start-up calibration; one test keeps the no-file path covered.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deer_ros.budget.calibration import calibration_path, checkpoint_sha256
from deer_ros.model import DeerVLA, load_config
from deer_ros.policy.runtime import synthetic_calibration
from policy_driver import PolicyDriver


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (seed 0) as a checkpoint directory with ``calibration.npz`` beside the weights."""
    directory = tmp_path_factory.mktemp('tiny_checkpoint')
    torch.manual_seed(0)
    model = DeerVLA(load_config('tiny')).eval()
    model.save_pretrained(directory)
    calibration = synthetic_calibration(model, windows=8)  # 32 samples: enough for the budgets tested
    calibration.metadata['checkpoint_sha256'] = checkpoint_sha256(directory)
    calibration.save(calibration_path(directory))
    return directory


@pytest.fixture(scope='session')
def proprio_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` with ``use_proprio`` (seed 0, synthetic calibration): a policy that also needs the robot state.

    Its cross-attention gates are opened (random init closes them), so the
    visual and robot-state tokens do change the actions.
    """
    directory = tmp_path_factory.mktemp('proprio_checkpoint')
    torch.manual_seed(0)
    model = DeerVLA(dataclasses.replace(load_config('tiny'), use_proprio=True)).eval()
    for block in model.cross_attention:
        block.attention_gate.data.fill_(1.0)
    model.save_pretrained(directory)
    calibration = synthetic_calibration(model, windows=8)
    calibration.metadata['checkpoint_sha256'] = checkpoint_sha256(directory)
    calibration.save(calibration_path(directory))
    return directory


@pytest.fixture
def driver(rclpy_context: Any) -> Iterator[PolicyDriver]:
    node = PolicyDriver(rclpy_context)
    yield node
    node.destroy_node()
