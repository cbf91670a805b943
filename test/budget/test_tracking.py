"""Closed-loop tracking of the average budget: the controller alone, then the runtime with the shipped policy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deer_ros.budget.caps import Budget
from deer_ros.budget.tracking import AverageBudgetTracker
from deer_ros.policy.runtime import PolicyRuntime
from deer_ros.policy.types import Observation
from deer_ros.resources import resolve_checkpoint


def _run(tracker: AverageBudgetTracker, spend: float, steps: int, rng: np.random.Generator) -> list[float]:
    """A policy that realises ``spend`` x the solver target, with step-to-step noise; returns each step's cost."""
    costs = []
    for _ in range(steps):
        cost = spend * tracker.target * rng.uniform(0.6, 1.4)
        tracker.record(cost)
        costs.append(cost)
    return costs


@pytest.mark.parametrize('spend', [0.8, 1.25])
def test_tracker_brings_the_realised_average_to_the_request(spend: float) -> None:
    tracker = AverageBudgetTracker(0.2, (0.1, 0.33), interval=25)
    costs = _run(tracker, spend, 2000, np.random.default_rng(0))
    assert tracker.steps == 2000 and tracker.realised == pytest.approx(np.mean(costs))
    assert tracker.realised == pytest.approx(0.2, rel=0.02)  # the run's average is what the budget promises
    assert tracker.target == pytest.approx(0.2 / spend, rel=0.1)


def test_tracker_meets_the_average_when_the_cost_jumps_with_the_target() -> None:
    """Measured on the shipped policy: near the cheap end one correction moves the cost from 0.76x to 1.4x.

    A controller on the last interval's mean cycles between the two and overspends by their mean (+8 %);
    the account dwells on the cheap side until the overspend is paid back.
    """
    tracker = AverageBudgetTracker(0.05, (0.038, 0.112), interval=25)
    rng = np.random.default_rng(2)
    for _ in range(2500):
        tracker.record(0.05 * (0.76 if tracker.target < 0.04 else 1.4) * rng.uniform(0.8, 1.2))
    assert tracker.realised == pytest.approx(0.05, rel=0.03)


def test_tracker_pays_back_an_overspend_within_a_few_horizons() -> None:
    """A warm-up that spends 2x the request is repaid: the run's average is back on the request soon after."""
    tracker = AverageBudgetTracker(0.05, (0.02, 0.11), interval=25, horizon=50)
    for _ in range(100):
        tracker.record(0.1)
    assert tracker.realised == pytest.approx(0.1) and tracker.target < 0.05  # the account is overdrawn
    rng = np.random.default_rng(3)
    for _ in range(300):
        tracker.record(1.1 * tracker.target * rng.uniform(0.8, 1.2))
    assert tracker.realised == pytest.approx(0.05, rel=0.03)


def test_tracker_target_stays_inside_the_feasible_range() -> None:
    tracker = AverageBudgetTracker(0.3, (0.1, 0.33), interval=5)
    _run(tracker, 0.5, 200, np.random.default_rng(1))  # the policy can never spend 0.3: the target saturates
    assert tracker.target == 0.33
    assert AverageBudgetTracker(0.2, (0.1, 0.33)).record(0.1) is None  # no correction before a full interval


def test_tracker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match='feasible'):
        AverageBudgetTracker(0.5, (0.1, 0.33))
    with pytest.raises(ValueError, match='gain'):
        AverageBudgetTracker(0.2, (0.1, 0.33), gain=0.0)
    with pytest.raises(ValueError, match='horizon'):
        AverageBudgetTracker(0.2, (0.1, 0.33), horizon=0)


def test_runtime_meets_the_average_budget_on_observations_unlike_its_calibration() -> None:
    """Random images are far from the demos the thresholds were solved on: tracking closes the gap."""
    torch.set_num_threads(1)  # 600 small steps: one thread is fastest on a shared 2-core machine
    rng = np.random.default_rng(0)
    frames = [Observation(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                          rng.integers(0, 256, (84, 84, 3), dtype=np.uint8), rng.normal(size=15) * 0.1)
              for _ in range(8)]
    low, high = PolicyRuntime(resolve_checkpoint('tiny')).thresholds.feasible_average()
    requested = low + 0.4 * (high - low)
    error = {}
    for track in (False, True):
        runtime = PolicyRuntime(resolve_checkpoint('tiny'), budget=Budget(avg_gflops=requested), track_average=track)
        costs = [runtime.step(frames[i % len(frames)], 'push the drawer shut')[1].llm_gflops for i in range(300)]
        # The whole run: with 8 distinct frames the per-interval cost jumps between a few values; the
        # average the operator sees still meets the request (measured: -11.6 % untracked, -1.2 % tracked).
        error[track] = abs(float(np.mean(costs)) / requested - 1.0)
        assert ('solver target' in runtime.describe()['avg tracking']) == track
    assert error[True] < 0.03 and error[True] < error[False]
