"""The DeeR exit rule: stop at the first exit whose action agrees with the previous exit's.

Decision at exit k (0-based) compares the pose action of exit k with that of
exit k-1 and stops when the difference is at most ``thresholds[k]``.
Exit 0 has no predecessor exit, so by default it is never chosen by the rule:
the first decision happens at exit 1, and exit 0 is executed only when the
model is capped to a single exit. A model with ``first_exit_reference``
compares exit 0 with the action read from the states one layer before it
(upstream DeeR's rule, ``first_exit_checked``): its calibration holds exit 0's
differences in column 0 (:func:`first_exit_decided`), and imported DeeR-VLA
thresholds were solved with it. The gripper is not part of the difference, as
in the paper.

Threshold values: ``inf`` means "always stop once this exit is reached" (the
last allowed exit gets it), ``-inf`` means "never stop here" (an exit the
budget leaves unused). The batched form :func:`first_exits` applies the same
rule to a whole consistency matrix; the budget solvers use it, so calibration
and run time share one definition of the rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# Each metric compares pose actions along the last axis, so it works for one
# step (1-D) and for calibration batches (..., 6) alike.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'rms': lambda a, b: np.sqrt(np.mean((a - b) ** 2, axis=-1)),
    'l1': lambda a, b: np.mean(np.abs(a - b), axis=-1),
    'linf': lambda a, b: np.max(np.abs(a - b), axis=-1),
    'cosine': lambda a, b: 1.0 - np.sum(a * b, axis=-1) / np.maximum(
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12),
}


def check_metric(metric: str) -> None:
    """Raise ``ValueError`` for a metric name the rule does not know."""
    if metric not in METRICS:
        raise ValueError(f'unknown exit metric {metric!r}; choose one of {sorted(METRICS)}')


def exit_consistency(poses: np.ndarray, metric: str = 'rms') -> np.ndarray:
    """Consistency of consecutive exits' pose actions.

    Args:
        poses: ``(..., num_exits, pose_dim)`` pose actions, one per exit.
    Returns:
        ``(..., num_exits)``: column k is the difference between exits k and
        k-1; column 0 is NaN because exit 0 has nothing to be compared with.
    """
    check_metric(metric)
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim < 2:
        raise ValueError(f'poses must have shape (..., num_exits, pose_dim), got {poses.shape}')
    first = np.full(poses.shape[:-2] + (1,), np.nan)
    return np.concatenate([first, METRICS[metric](poses[..., 1:, :], poses[..., :-1, :])], axis=-1)


def first_exit_decided(values: np.ndarray) -> bool:
    """Whether a consistency matrix decides exit 0: column 0 holds exit 0's differences from the reference.

    A model without ``first_exit_reference`` leaves that column NaN; the
    solvers then use exits 1.. only.
    """
    values = np.asarray(values, dtype=np.float64)
    return bool(values.ndim == 2 and values.shape[0] > 0 and np.all(np.isfinite(values[:, 0])))


def first_exits(values: np.ndarray, thresholds: np.ndarray, first_exit_checked: bool = False) -> np.ndarray:
    """Exit chosen by the rule for every row of a consistency matrix.

    Row i stops at the first k >= 1 (k >= 0 with ``first_exit_checked``) with
    ``values[i, k] <= thresholds[k]``, else at the last exit. With a single
    exit, every row stops at exit 0.

    Args:
        values: ``(N, num_exits)`` consistency values (column 0 is ignored unless ``first_exit_checked``).
        thresholds: ``(num_exits,)`` per-exit thresholds.
        first_exit_checked: exit 0 is decided too (upstream DeeR's rule).
    Returns:
        ``(N,)`` int exit indices.
    """
    values = np.asarray(values)
    last = values.shape[1] - 1
    if last == 0:
        return np.zeros(values.shape[0], dtype=np.int64)
    first = 0 if first_exit_checked else 1
    stops = values[:, first:] <= np.asarray(thresholds)[first:]
    stops[:, -1] = True
    return np.argmax(stops, axis=1) + first


@dataclass
class ExitCriterion:
    """Per-exit thresholds and the difference metric.

    ``inf`` = always stop at this exit, ``-inf`` = never stop here; finite
    thresholds must be >= 0 because every metric is >= 0.
    ``first_exit_checked``: exit 0 is decided too, from its difference with
    the action read one layer before it (upstream DeeR's rule, which the
    thresholds of its checkpoints assume, and the rule of every model with
    ``first_exit_reference`` calibrated with it); the policy then asks the
    model for that reference.
    """

    thresholds: np.ndarray
    metric: str = 'rms'
    first_exit_checked: bool = False
    _distance: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_metric(self.metric)
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise ValueError('thresholds must be a non-empty 1-D array, one per exit')
        finite = self.thresholds[np.isfinite(self.thresholds)]
        if np.any(np.isnan(self.thresholds)) or np.any(finite < 0):
            raise ValueError(f'thresholds must be >= 0, inf or -inf, got {self.thresholds.tolist()}')
        self._distance = METRICS[self.metric]

    @classmethod
    def always_last(cls, num_exits: int, metric: str = 'rms') -> 'ExitCriterion':
        """A criterion that never stops early: every step runs to the largest allowed exit.

        With the model capped at exit k this is the static-truncation baseline.
        """
        thresholds = np.full(num_exits, -np.inf)
        thresholds[-1] = np.inf
        return cls(thresholds, metric)

    @property
    def num_exits(self) -> int:
        return int(self.thresholds.size)

    def consistency(self, pose: np.ndarray, previous_pose: np.ndarray) -> float:
        """Difference between two exits' pose actions under the configured metric."""
        return float(self._distance(np.asarray(pose, dtype=np.float64), np.asarray(previous_pose, dtype=np.float64)))

    def should_exit(self, exit_index: int, consistency: float) -> bool:
        """True when the step may stop at ``exit_index`` given its consistency value."""
        if exit_index == 0 and not self.first_exit_checked:
            return False
        return bool(consistency <= self.thresholds[exit_index])

    def select_exits(self, values: np.ndarray) -> np.ndarray:
        """Exits the rule picks for a batch of consistency rows ``(N, num_exits)``."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.num_exits:
            raise ValueError(f'values must have shape (N, {self.num_exits}), got {values.shape}')
        return first_exits(values, self.thresholds, self.first_exit_checked)
