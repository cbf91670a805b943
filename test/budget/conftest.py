"""Synthetic calibration data with the structure of the real thing.

Per-exit pose actions converge towards the full-depth action as depth grows,
and the consistency matrix is computed from them with the real exit metric,
so solver tests see realistic (correlated, heavy-tailed) columns.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from deer_ros.budget.exit_criterion import exit_consistency
from deer_ros.model.cost import CostTable

DISTRIBUTIONS = ('converging', 'halfnormal', 'lognormal', 'uniform', 'rounded')


def converging_poses(num_samples: int, num_exits: int, seed: int = 0) -> np.ndarray:
    """(N, n, 6) pose actions: exit k = full action + noise shrinking with depth, squashed by tanh."""
    rng = np.random.default_rng(seed)
    final = rng.normal(0.0, 0.6, size=(num_samples, 1, 6))
    hardness = rng.lognormal(0.0, 0.7, size=(num_samples, 1, 1))
    scale = np.geomspace(0.5, 0.01, num_exits).reshape(1, num_exits, 1)
    scale[:, -1] = 0.0
    return np.tanh(final + hardness * scale * rng.normal(size=(num_samples, num_exits, 6)))


def consistency_values(kind: str, num_samples: int, num_exits: int, seed: int = 0) -> np.ndarray:
    """(N, n) consistency matrix (column 0 NaN) drawn from one of DISTRIBUTIONS."""
    rng = np.random.default_rng(seed)
    shape = (num_samples, num_exits)
    decay = np.geomspace(1.0, 0.05, num_exits)
    if kind == 'converging':
        return exit_consistency(converging_poses(num_samples, num_exits, seed))
    if kind == 'halfnormal':
        values = np.abs(rng.normal(size=shape)) * decay
    elif kind == 'lognormal':
        values = rng.lognormal(-3.0, 1.5, size=shape)
    elif kind == 'uniform':
        values = rng.uniform(0.0, 0.1, size=shape)
    elif kind == 'rounded':  # many exact ties, as with low-precision actions
        values = np.round(rng.exponential(0.02, size=shape), 3)
    else:
        raise ValueError(kind)
    values[:, 0] = np.nan
    return values


def decided_values(num_samples: int, num_exits: int, seed: int = 0) -> np.ndarray:
    """(N, n) consistency matrix of a model with ``first_exit_reference``: column 0 is exit 0 against a reference
    (converging poses with one more, shallower "exit" in front)."""
    return exit_consistency(converging_poses(num_samples, num_exits + 1, seed))[:, 1:]


def layer_costs(num_exits: int) -> np.ndarray:
    """MPT-1B-like cumulative LLM GFLOPs: 1.3 per layer, exits every 2 layers."""
    return 1.3 * 2 * np.arange(1, num_exits + 1) + 0.1


@pytest.fixture(params=DISTRIBUTIONS)
def distribution(request: pytest.FixtureRequest) -> str:
    """Each synthetic consistency distribution in turn."""
    return request.param


@pytest.fixture
def make_values() -> Callable[..., np.ndarray]:
    return consistency_values


@pytest.fixture
def make_decided_values() -> Callable[..., np.ndarray]:
    return decided_values


@pytest.fixture
def make_poses() -> Callable[..., np.ndarray]:
    return converging_poses


@pytest.fixture
def make_costs() -> Callable[[int], np.ndarray]:
    return layer_costs


@pytest.fixture
def cost_table() -> CostTable:
    """Six exits after 2, 4, ..., 12 layers, like DeeR-B on MPT-1B."""
    layers = tuple(range(2, 13, 2))
    return CostTable(exit_layers=layers, llm_gflops=tuple(1.3 * layer + 0.1 for layer in layers),
                     vision_gflops=20.0, head_gflops=0.05, history_gflops=0.5,
                     param_bytes=tuple(int((300 + 100 * layer) * 2 ** 20) for layer in layers))
