"""The runtime measures (or reuses) the latency table when asked or needed, and solves ms budgets on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deer_ros.budget.caps import Budget
from deer_ros.budget.latency import LatencyCache
from deer_ros.budget.solver import BudgetError
from deer_ros.policy.runtime import PolicyRuntime
from deer_ros.policy.types import Observation


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_runtime_measures_once_then_reuses_and_caps_by_peak_ms(tiny_checkpoint, tmp_path):
    cache = LatencyCache(tmp_path)
    assert PolicyRuntime(tiny_checkpoint, latency_cache=cache).thresholds.latency is None  # not asked, not needed
    assert not any(tmp_path.iterdir())
    first = PolicyRuntime(tiny_checkpoint, latency_cache=cache, measure_latency=True)
    table = first.thresholds.latency
    assert not first.latency_reused and cache.path(table.key).is_file()
    peak = float(table.peak_costs()[2])  # exit 3 (1-based)
    capped = int(np.flatnonzero(table.peak_costs() <= peak)[-1])  # 2, unless noise flattened the running maximum
    runtime = PolicyRuntime(tiny_checkpoint, latency_cache=cache, budget=Budget(peak_ms=peak))
    assert runtime.latency_reused and runtime.thresholds.latency == table
    assert runtime.thresholds.solution.cap == capped and runtime.num_exits == capped + 1
    rng = np.random.default_rng(0)
    observation = Observation(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                              rng.integers(0, 256, (84, 84, 3), dtype=np.uint8))
    _, info = runtime.step(observation, 'open the drawer')
    assert info.exit_index == capped and runtime.latency_watch.realised().steps == 1 and runtime.take_drift() is None
    described = runtime.describe()
    assert 'realised step ms' in described and described['ms budget holds'] in ('True', 'False')
    with pytest.raises(BudgetError, match='feasible peak_ms limits'):
        runtime.thresholds.solve(Budget(peak_ms=0.01))
    solution = runtime.remeasure_latency()  # live model capped: a full one is loaded to time every exit
    assert runtime.thresholds.latency is not table and runtime.num_exits == solution.cap + 1
    assert 'latency table' in runtime.describe() and runtime.realised_latency() is None  # a fresh watch


def test_recalibrating_without_a_table_measures_one(tiny_checkpoint, tmp_path):
    runtime = PolicyRuntime(tiny_checkpoint, latency_cache=LatencyCache(tmp_path))
    with pytest.raises(BudgetError, match='need the measured latency table'):
        runtime.thresholds.solve(Budget(peak_ms=1000.0))
    runtime.remeasure_latency()
    assert runtime.thresholds.latency is not None and runtime.latency_watch is not None
    assert runtime.thresholds.solve(Budget(peak_ms=1000.0)).cap == runtime.config.num_exits - 1
