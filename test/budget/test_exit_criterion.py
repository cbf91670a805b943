"""The exit rule: first decision at exit 1, threshold semantics, batched form agrees with per-step form."""
from __future__ import annotations

import numpy as np
import pytest

from deer_ros.budget.exit_criterion import METRICS, ExitCriterion, exit_consistency, first_exits


def test_exit_zero_is_never_chosen():
    criterion = ExitCriterion([np.inf, 0.1, np.inf])
    assert not criterion.should_exit(0, 0.0)
    assert criterion.should_exit(1, 0.1) and not criterion.should_exit(1, 0.11)
    assert criterion.select_exits(np.array([[np.nan, 0.0, 5.0]])).tolist() == [1]


def test_infinite_thresholds():
    criterion = ExitCriterion([-np.inf, -np.inf, 0.5, np.inf])
    assert not criterion.should_exit(1, 0.0)
    assert criterion.should_exit(3, 1e9)
    values = np.array([[np.nan, 0.0, 0.6, 9.0], [np.nan, 0.0, 0.4, 9.0]])
    assert criterion.select_exits(values).tolist() == [3, 2]


def test_always_last_never_stops_early():
    criterion = ExitCriterion.always_last(4)
    assert criterion.select_exits(np.zeros((2, 4))).tolist() == [3, 3]
    assert not any(criterion.should_exit(k, 0.0) for k in range(3)) and criterion.should_exit(3, 0.0)
    assert ExitCriterion.always_last(1).select_exits(np.full((2, 1), np.nan)).tolist() == [0, 0]


def test_batched_rule_matches_step_by_step():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, size=(200, 5))
    criterion = ExitCriterion(np.array([np.inf, 0.3, -np.inf, 0.5, np.inf]))

    def step_by_step(row: np.ndarray) -> int:
        return next(k for k in range(1, 5) if k == 4 or criterion.should_exit(k, row[k]))

    assert first_exits(values, criterion.thresholds).tolist() == [step_by_step(row) for row in values]


@pytest.mark.parametrize('metric', sorted(METRICS))
def test_batched_consistency_matches_pairwise(metric):
    rng = np.random.default_rng(1)
    poses = rng.uniform(-1, 1, size=(7, 4, 6))
    criterion = ExitCriterion(np.full(4, np.inf), metric)
    values = exit_consistency(poses, metric)
    assert np.all(np.isnan(values[:, 0]))
    for i in range(7):
        for k in range(1, 4):
            assert values[i, k] == pytest.approx(criterion.consistency(poses[i, k], poses[i, k - 1]))


def test_rms_is_l2_over_sqrt6():
    a, b = np.zeros(6), np.array([0.6, 0, 0, 0, 0, 0])
    assert ExitCriterion([1.0]).consistency(a, b) == pytest.approx(0.6 / np.sqrt(6))


@pytest.mark.parametrize('thresholds, message', [([], 'non-empty'), ([[0.1]], 'non-empty'),
                                                 ([0.1, np.nan], '>= 0'), ([0.1, -0.2], '>= 0')])
def test_bad_thresholds(thresholds, message):
    with pytest.raises(ValueError, match=message):
        ExitCriterion(np.asarray(thresholds, dtype=float))


def test_bad_metric_and_batch_shape():
    with pytest.raises(ValueError, match='unknown exit metric'):
        ExitCriterion([0.1], 'l2')
    with pytest.raises(ValueError, match=r'shape \(N, 2\)'):
        ExitCriterion([0.1, 0.1]).select_exits(np.zeros((3, 3)))
