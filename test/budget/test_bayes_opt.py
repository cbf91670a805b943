"""BO refinement on a real, cheap objective: agreement of the chosen exit's action with full depth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deer_ros.budget.bayes_opt import BayesOptStateError, objective, refine_thresholds, search_space
from deer_ros.budget.exit_criterion import METRICS, exit_consistency, first_exits
from deer_ros.budget.solver import solve_average_budget

NUM_EXITS = 5


class AgreementProxy:
    """Rollout stand-in: 'success' = 5 × share of samples whose executed pose matches full depth.

    Deterministic and computed with the real exit rule on held-out synthetic
    calibration samples; counts its calls so resumption can be checked.
    """

    def __init__(self, poses: np.ndarray, costs: np.ndarray, fail_after: int | None = None) -> None:
        self.poses, self.costs, self.fail_after = poses, costs, fail_after
        self.values = exit_consistency(poses)
        self.calls = 0

    def __call__(self, thresholds: np.ndarray) -> tuple[float, float]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt('simulated crash')
        self.calls += 1
        exits = first_exits(self.values, thresholds)
        executed = self.poses[np.arange(len(exits)), exits]
        agree = METRICS['rms'](executed, self.poses[:, -1]) < 0.01
        return 5.0 * float(agree.mean()), float(self.costs[exits].mean())


@pytest.fixture
def problem(make_poses, make_costs):
    costs = make_costs(NUM_EXITS)
    calibration = exit_consistency(make_poses(2000, NUM_EXITS, seed=1))
    offline = solve_average_budget(calibration, costs, 0.5 * (costs[1] + costs[-1]))
    return offline, AgreementProxy(make_poses(1000, NUM_EXITS, seed=2), costs)


def test_refinement_never_worse_than_offline_and_stays_in_the_box(tmp_path, problem):
    offline, proxy = problem
    result = refine_thresholds(proxy, offline.thresholds, offline.budget, tmp_path / 'bo.json',
                               n_calls=8, n_initial_points=3, progress=False)
    first = result.evaluations[0]
    assert proxy.calls == 8 and len(result.evaluations) == 8
    assert first.point == offline.thresholds[1:-1].tolist()
    assert result.objective <= objective(first.success, first.cost, offline.budget, 1.0)
    space = search_space(offline.thresholds)
    free = result.thresholds[space.free]
    assert np.all(free >= space.low) and np.all(free <= space.high)
    assert result.thresholds[0] == offline.thresholds[0] and np.isposinf(result.thresholds[-1])
    assert json.loads((tmp_path / 'bo.json').read_text())['budget'] == offline.budget


def test_resumes_after_a_crash_without_repeating_rollouts(tmp_path, problem):
    offline, proxy = problem
    state = tmp_path / 'bo.json'
    proxy.fail_after = 4
    with pytest.raises(KeyboardInterrupt):
        refine_thresholds(proxy, offline.thresholds, offline.budget, state, n_calls=9, n_initial_points=3,
                          progress=False)
    stored = json.loads(state.read_text())['evaluations']
    assert len(stored) == 4
    proxy.fail_after = None
    result = refine_thresholds(proxy, offline.thresholds, offline.budget, state, n_calls=9, n_initial_points=3,
                               progress=False)
    assert proxy.calls == 9
    assert [vars(e) for e in result.evaluations[:4]] == stored
    again = refine_thresholds(proxy, offline.thresholds, offline.budget, state, n_calls=9, progress=False)
    assert proxy.calls == 9 and again.objective == result.objective


def test_state_of_another_search_is_refused(tmp_path, problem):
    offline, proxy = problem
    state = tmp_path / 'bo.json'
    refine_thresholds(proxy, offline.thresholds, offline.budget, state, n_calls=1, progress=False)
    with pytest.raises(BayesOptStateError, match='different search'):
        refine_thresholds(proxy, offline.thresholds, offline.budget * 1.1, state, n_calls=2, progress=False)
    state.write_text('{not json')
    with pytest.raises(BayesOptStateError, match='unreadable'):
        refine_thresholds(proxy, offline.thresholds, offline.budget, state, n_calls=2, progress=False)


def test_search_space_keeps_unused_and_last_exits_fixed():
    space = search_space(np.array([-np.inf, 0.02, -np.inf, 0.0, np.inf]), radius=0.5)
    assert space.free.tolist() == [1, 3]
    assert space.low.tolist() == [0.01, 0.0] and space.high[0] == pytest.approx(0.03)
    assert space.high[1] > 0
    with pytest.raises(ValueError, match='no finite thresholds'):
        search_space(np.array([-np.inf, -np.inf, np.inf]))
    with pytest.raises(ValueError, match='radius'):
        search_space(np.array([-np.inf, 0.02, np.inf]), radius=0.0)


def test_objective_penalises_only_overspending():
    assert objective(3.0, 9.0, 10.0, 1.0) == -3.0
    assert objective(3.0, 12.0, 10.0, 0.5) == -2.0
