"""Small models shared by the model tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deer_ros.model import DeerVLA, load_config
from deer_ros.model.flops import count_cost_table
from deer_ros.policy.types import Observation


def open_gates(model: DeerVLA, seed: int = 0) -> DeerVLA:
    """Give the cross-attention gates non-zero values so the images really reach the decoder."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.cross_attention:
            block.attention_gate.copy_(torch.rand(1, generator=generator) + 0.5)
            block.feed_forward_gate.copy_(torch.rand(1, generator=generator) + 0.5)
    return model


@pytest.fixture()
def tiny_model() -> DeerVLA:
    torch.manual_seed(0)
    return open_gates(DeerVLA(load_config('tiny'))).eval()


@pytest.fixture()
def tiny_costs(tiny_model: DeerVLA):
    return count_cost_table(tiny_model)


def _random_observations(count: int, seed: int = 0) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                        rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture()
def random_observations():
    """Factory: ``random_observations(count, seed)`` -> list of valid random observations."""
    return _random_observations
