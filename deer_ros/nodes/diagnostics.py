"""Running statistics of the policy node and their ``diagnostic_msgs`` form for ``/diagnostics``.

``diagnostic_updater`` is not on PyPI, so this is the small part of it the
node needs: message rates, latency percentiles, the exit histogram and the
budget in force (with the realised step ms against a millisecond budget), with
ERROR whenever the node is not driving the robot, WARN while it answers a frozen
input or its steps are over the millisecond budget (and the reason as the status message, which
is what rqt_robot_monitor shows).
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Iterable, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from deer_ros.nodes.control import INPUTS, Decision, Snapshot


class RateMeter:
    """Messages per second over the last ``window`` seconds of steady time."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def record(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._times) / self.window

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()


def _values(pairs: Iterable[tuple[str, object]]) -> list[KeyValue]:
    return [KeyValue(key=key, value=str(value)) for key, value in pairs]


class PolicyDiagnostics:
    """What the policy node reports once a second; fed from subscriptions and the control tick.

    Latency and exit statistics cover the last ``window`` policy steps, so a
    budget change shows up within seconds; counts cover the node's lifetime.
    Thread-safe: subscriptions, the control tick and the diagnostics timer
    may run on different executor threads.
    """

    def __init__(self, name: str, num_exits: int, window: int = 100, inputs: tuple[str, ...] = INPUTS) -> None:
        self.name = name
        self.rates = {input_name: RateMeter() for input_name in inputs}
        self.latencies_ms: deque[float] = deque(maxlen=window)
        self.exits: deque[int] = deque(maxlen=window)
        self.gflops: deque[tuple[float, float]] = deque(maxlen=window)
        self.exit_counts = np.zeros(num_exits, dtype=np.int64)
        self.decisions: Counter[str] = Counter()
        self.incomplete_waits = 0  # ticks that found the newest frame without all its inputs yet
        self.last_decision: Decision | None = None
        self._lock = threading.Lock()

    def record_input(self, name: str, now: float) -> None:
        with self._lock:
            self.rates[name].record(now)

    def record(self, decision: Decision) -> None:
        with self._lock:
            self._record(decision)

    def _record(self, decision: Decision) -> None:
        self.decisions[decision.kind] += 1
        if decision.kind == 'wait':
            self.incomplete_waits += bool(decision.problems)
            return
        self.last_decision = decision
        if decision.kind == 'action':  # a re-answer repeats a step that is already counted
            info = decision.info
            self.latencies_ms.append(info.latency_ms)
            self.exits.append(info.exit_index + 1)
            self.gflops.append((info.llm_gflops, info.total_gflops))
            self.exit_counts[info.exit_index] += 1

    def statuses(self, now: float, snapshot: Snapshot, budget: Mapping[str, str]) -> list[DiagnosticStatus]:
        """An ``inputs`` and a ``policy`` status: ERROR with the reason while inputs are bad or the node holds,
        WARN while an input is frozen (re-sent with one stamp for longer than ``max_input_age_s``)."""
        with self._lock:
            return self._statuses(now, snapshot, budget)

    def _statuses(self, now: float, snapshot: Snapshot, budget: Mapping[str, str]) -> list[DiagnosticStatus]:
        ages, problems, warnings = snapshot.ages, snapshot.problems, snapshot.warnings
        if problems:
            level, message = DiagnosticStatus.ERROR, '; '.join(problems + warnings)
        elif warnings:
            level, message = DiagnosticStatus.WARN, '; '.join(warnings)
        else:
            level, message = DiagnosticStatus.OK, 'all inputs fresh'
        inputs = DiagnosticStatus(name=f'{self.name}: inputs', hardware_id=self.name, level=level, message=message)
        inputs.values = _values(
            [(f'{name} rate (Hz)', f'{rate.rate(now):.2f}') for name, rate in self.rates.items()]
            + [(f'{name} age (s)', 'never' if ages[name] is None else f'{ages[name]:.3f}') for name in self.rates])

        last = self.last_decision
        if last is None:
            level, message = DiagnosticStatus.WARN, 'no control tick yet'
        elif last.kind in ('hold', 'silent'):
            level = DiagnosticStatus.ERROR
            message = f'{"holding" if last.kind == "hold" else "silent"}: {"; ".join(last.problems)}'
        elif warnings:  # acting, but on inputs that stopped moving: what it answers is an old frame
            level, message = DiagnosticStatus.WARN, f'frozen input, answering the same frame: {"; ".join(warnings)}'
        elif last.kind == 'ready_pose':
            level, message = DiagnosticStatus.OK, 'returning to the ready pose'
        else:
            level, message = DiagnosticStatus.OK, 'acting'
        if level == DiagnosticStatus.OK and budget.get('ms budget holds') == 'False':  # acting, but too slow
            level, message = DiagnosticStatus.WARN, f"{message}; over the ms budget: {budget['realised step ms']}"
        policy = DiagnosticStatus(name=f'{self.name}: policy', hardware_id=self.name, level=level, message=message)
        pairs: list[tuple[str, object]] = [(kind, self.decisions[kind])
                                           for kind in ('action', 'ready_pose', 'reanswer', 'hold', 'silent')]
        pairs.append(('ticks waiting for a complete input set', self.incomplete_waits))
        if self.latencies_ms:
            latencies = np.asarray(self.latencies_ms)
            llm, total = np.mean(np.asarray(self.gflops), axis=0)
            pairs += [('step latency p50 (ms)', f'{np.percentile(latencies, 50):.1f}'),
                      ('step latency p99 (ms)', f'{np.percentile(latencies, 99):.1f}'),
                      ('step latency max (ms)', f'{latencies.max():.1f}'),
                      ('mean exit (recent, 1-based)', f'{np.mean(self.exits):.2f}'),
                      ('mean llm GFLOPs (recent)', f'{llm:.4g}'),
                      ('mean total GFLOPs (recent)', f'{total:.4g}')]
        pairs.append(('exit histogram (1-based)',
                      ', '.join(f'{k + 1}: {count}' for k, count in enumerate(self.exit_counts))))
        pairs += [(f'budget {key}', value) for key, value in budget.items()]
        policy.values = _values(pairs)
        return [inputs, policy]
