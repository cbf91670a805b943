"""Realised step times against the measured table: what diagnostics report, and when to re-measure.

A table measured at start stops describing the machine when another process
starts loading the CPU, the clock throttles, or the load goes away again.
Each step's time is divided by the table's p50 at the exit the step stopped
at, so steps at different exits pool into one ratio; when the median ratio
of the last ``window`` steps leaves ``[1/factor, factor]``, the watch reports
a :class:`Drift` once and starts a fresh window. A median over a window
ignores the odd slow step (that is what p99 is for) and reacts to a
persistent change within ``window`` steps (50 steps: under 2 s at 30 Hz).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from deer_ros.budget.latency import LatencyTable
from deer_ros.budget.solver import DEFAULT_TOLERANCE

DEFAULT_WINDOW = 50
DEFAULT_FACTOR = 1.5


@dataclass(frozen=True)
class Drift:
    """The machine no longer runs at the table's speed: re-measure, then solve the budget again."""

    direction: Literal['slower', 'faster']
    ratio: float  # median of step time / table p50 at the step's exit, over the window
    steps: int

    def __str__(self) -> str:
        return (f'steps ran {self.direction} than the latency table: median {self.ratio:.2f}x its p50 '
                f'over the last {self.steps} steps')


@dataclass(frozen=True)
class RealisedLatency:
    """Step times since the table was put in force (mean over all steps, p99 and max over the recent window)."""

    steps: int
    mean_ms: float
    p99_ms: float
    max_ms: float
    last_ms: float

    def meets(self, *, peak_ms: float | None = None, avg_ms: float | None = None,
              tolerance: float = DEFAULT_TOLERANCE) -> bool:
        """Whether the budgets hold: the recent p99 within ``peak_ms``, the mean within ``avg_ms`` (+ tolerance)."""
        return ((peak_ms is None or self.p99_ms <= peak_ms)
                and (avg_ms is None or self.mean_ms <= avg_ms * (1.0 + tolerance)))


class LatencyWatch:
    """Record each model step's time; report :class:`Drift` and the realised figures. Thread-safe.

    Args:
        table: the measured table in force (its p50 per exit is the reference).
        window: steps per verdict and for the recent p99.
        factor: a median ratio above ``factor`` is slower, below ``1 / factor`` faster.
    """

    def __init__(self, table: LatencyTable, *, window: int = DEFAULT_WINDOW, factor: float = DEFAULT_FACTOR) -> None:
        if window < 1 or not factor > 1.0:
            raise ValueError(f'need window >= 1 and factor > 1, got {window}, {factor}')
        self.window = window
        self.factor = factor
        self._lock = threading.Lock()
        self.reset(table)

    def reset(self, table: LatencyTable) -> None:
        """Start over against ``table`` (after a re-measure)."""
        with self._lock:
            self._reference = np.asarray(table.p50_ms, dtype=np.float64)
            self._ratios: deque[float] = deque(maxlen=self.window)
            self._recent: deque[float] = deque(maxlen=self.window)
            self._steps = 0
            self._total_ms = 0.0

    def record(self, exit_index: int, latency_ms: float) -> Drift | None:
        """One model step (not a scripted one) stopped at ``exit_index``; a :class:`Drift` when the window says so."""
        if not 0 <= exit_index < self._reference.size:
            raise ValueError(f'exit {exit_index} is not in the latency table (0..{self._reference.size - 1})')
        with self._lock:
            self._steps += 1
            self._total_ms += latency_ms
            self._recent.append(latency_ms)
            self._ratios.append(latency_ms / self._reference[exit_index])
            if len(self._ratios) < self.window:
                return None
            ratio = float(np.median(self._ratios))
            direction: Literal['slower', 'faster'] | None = (
                'slower' if ratio > self.factor else 'faster' if ratio < 1.0 / self.factor else None)
            if direction is None:
                return None
            self._ratios.clear()  # one report per window: the caller re-measures meanwhile
            return Drift(direction, ratio, self.window)

    def realised(self) -> RealisedLatency | None:
        """The realised figures, ``None`` before the first step."""
        with self._lock:
            if not self._recent:
                return None
            recent = np.asarray(self._recent)
            return RealisedLatency(steps=self._steps, mean_ms=self._total_ms / self._steps,
                                   p99_ms=float(np.percentile(recent, 99)), max_ms=float(recent.max()),
                                   last_ms=float(recent[-1]))
