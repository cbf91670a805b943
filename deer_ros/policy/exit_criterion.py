"""The DeeR exit rule: stop at the first exit whose action agrees with the previous exit's.

Decision at exit k (0-based) compares the pose action of exit k with that of
exit k-1 and stops when the difference is at most ``thresholds[k]``.
Exit 0 has no predecessor the action head was trained on, so it is never
chosen by the rule: the first decision happens at exit 1 (upstream DeeR
compares exit 0 against layer-1 features the head never saw). Exit 0 is
executed only when the model is capped to a single exit. The gripper is not
part of the difference, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    'rms': lambda a, b: float(np.sqrt(np.mean((a - b) ** 2))),
    'l1': lambda a, b: float(np.mean(np.abs(a - b))),
    'linf': lambda a, b: float(np.max(np.abs(a - b))),
    'cosine': lambda a, b: float(1.0 - np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)),
}


@dataclass
class ExitCriterion:
    """Per-exit thresholds and the difference metric. ``inf`` means "never stop here"."""

    thresholds: np.ndarray
    metric: str = 'rms'
    _distance: Callable[[np.ndarray, np.ndarray], float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f'unknown exit metric {self.metric!r}; choose one of {sorted(METRICS)}')
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise ValueError('thresholds must be a non-empty 1-D array, one per exit')
        if np.any(np.isnan(self.thresholds)) or np.any(self.thresholds < 0):
            raise ValueError(f'thresholds must be >= 0 (inf allowed), got {self.thresholds.tolist()}')
        self._distance = METRICS[self.metric]

    @classmethod
    def always_last(cls, num_exits: int, metric: str = 'rms') -> 'ExitCriterion':
        """A criterion that never stops early: every step runs to the largest allowed exit.

        With the model capped at exit k this is the static-truncation baseline.
        """
        return cls(np.full(num_exits, np.inf), metric)

    @property
    def num_exits(self) -> int:
        return int(self.thresholds.size)

    def consistency(self, pose: np.ndarray, previous_pose: np.ndarray) -> float:
        """Difference between two exits' pose actions under the configured metric."""
        return self._distance(np.asarray(pose, dtype=np.float64), np.asarray(previous_pose, dtype=np.float64))

    def should_exit(self, exit_index: int, consistency: float) -> bool:
        """True when the step may stop at ``exit_index`` given its consistency value."""
        if exit_index == 0:
            return False
        return bool(consistency <= self.thresholds[exit_index])
