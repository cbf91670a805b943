"""The latency table measured on a real model: every exit timed on the live weights, cached, reused."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.budget.latency import LatencyCache
from deer_ros.budget.latency_budget import latency_cap
from deer_ros.model import load_model
from deer_ros.model.flops import cost_table_for
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.latency_probe import (
    PROBE_INSTRUCTION,
    cached_latency_table,
    latency_key,
    measure_latency_table,
    source_identity,
)
from deer_ros.policy.types import Observation


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two threads spin against other processes (seconds per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def policy(tiny_checkpoint) -> EarlyExitPolicy:
    model = load_model(tiny_checkpoint)
    return EarlyExitPolicy(model, ExitCriterion.always_last(model.num_exits), cost_table_for(model.config))


def observation(seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                       rng.integers(0, 256, (84, 84, 3), dtype=np.uint8))


def test_a_step_capped_at_an_exit_stops_there_without_truncating(policy):
    exits = policy.num_exits
    for exit_index in (0, 2, exits - 1):
        _, info = policy.step(observation(), 'open the drawer', max_exit=exit_index)
        assert info.exit_index == exit_index and info.latency_ms > 0
    assert policy.num_exits == policy.model.num_exits == exits
    with pytest.raises(ValueError, match='max_exit must be in'):
        policy.step(observation(), 'open the drawer', max_exit=exits)


def test_every_exit_is_measured_on_the_live_model(policy, tiny_checkpoint):
    key = latency_key(source_identity(tiny_checkpoint, policy.model.config), 'cpu')
    assert key.threads == torch.get_num_threads() and key.torch_version == torch.__version__
    assert key.device.startswith('cpu: ') and len(key.checkpoint) == 64
    policy.step(observation(), 'open the drawer')
    history, exits = list(policy._history), policy.num_exits
    table = measure_latency_table(policy.model, key, instruction_encoder=policy.instruction_encoder,
                                  cost_table=policy.cost_table, repetitions=3, warmup=1)
    assert table.key == key and table.exit_layers == policy.model.exit_layers and table.repetitions == 3
    assert all(p99 >= p50 > 0 for p50, p99 in zip(table.p50_ms, table.p99_ms))
    assert table.p50_ms[-1] > table.p50_ms[0]  # 12 decoder layers vs 2: far apart under any load
    assert policy.model.num_exits == exits and len(policy._history) == len(history)  # the live policy is untouched
    assert all(torch.equal(a, b) for a, b in zip(policy._history, history))
    assert latency_cap(table, float(table.peak_costs()[-1])) == exits - 1
    assert len(PROBE_INSTRUCTION) >= 20


def test_the_second_start_reuses_the_cached_table(policy, tiny_checkpoint, tmp_path):
    cache = LatencyCache(tmp_path)
    key = latency_key(source_identity(tiny_checkpoint, policy.model.config), 'cpu', threads=1)
    first, reused = cached_latency_table(policy.model, key, cache, repetitions=2, warmup=1)
    assert not reused
    stamp = cache.path(key).stat().st_mtime_ns
    second, reused = cached_latency_table(policy.model, key, cache, repetitions=2, warmup=1)
    assert reused and second == first and cache.path(key).stat().st_mtime_ns == stamp
    other = dataclasses.replace(key, threads=2)  # another thread count: its own measurement
    third, reused = cached_latency_table(policy.model, other, cache, repetitions=2, warmup=1)
    assert not reused and third.key == other and cache.load(key) == first


def test_a_config_source_is_keyed_by_its_config(policy):
    config = policy.model.config
    identity = source_identity('tiny', config)
    assert identity.startswith('config ') and identity == source_identity('tiny', config)
    assert identity != source_identity('tiny', dataclasses.replace(config, num_exits=3))
