"""The simulator side of the ROS loop, without ROS: action hand-over, lock-step policy adapter, GFLOPs tally,
and the evaluation report the bridge publishes.

Why lock-step by default: a DeeR policy on a CPU takes tens to hundreds of
milliseconds per step, slower than CALVIN's 30 Hz. Stepping the simulator at a
fixed rate would fill the gaps with zero actions, so a chain's outcome would
measure inference latency rather than the policy, and it would change with
machine load. CALVIN's own evaluation is lock-step (the env waits for the
policy), so results through ROS match ``deer-ros evaluate``. ``fixed_rate``
stays available for real-time demos.

Actions are matched to observations by stamp: the policy stamps each
ArmAction with the stamp of the static frame it acted on, so an answer to an
older frame is never applied to a newer state.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from deer_ros.benchmark.evaluation import ChainResult, EvaluationReport
from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.sim.interface import Obs

StepMode = Literal['lockstep', 'fixed_rate']
STEP_MODES: tuple[str, ...] = ('lockstep', 'fixed_rate')


class PolicyTimeout(RuntimeError):
    """The policy sent no usable action in time: a lock-step evaluation cannot go on."""


@dataclass(frozen=True)
class ReceivedAction:
    """An ArmAction as the simulator sees it: ``delta`` finite and clamped, ``stamp_ns`` of the frame it answers."""

    delta: np.ndarray
    gripper: int
    hold: bool
    stamp_ns: int


def received_action(delta: Any, gripper: int, hold: bool, stamp_ns: int) -> ReceivedAction:
    """Normalise an incoming command; a non-finite delta becomes a hold so NaN never reaches the simulator."""
    delta = np.asarray(delta, dtype=np.float64)
    if hold or delta.shape != (6,) or not np.all(np.isfinite(delta)):
        return ReceivedAction(np.zeros(6), 0, True, stamp_ns)
    return ReceivedAction(np.clip(delta, -1.0, 1.0), int(gripper), False, stamp_ns)


class GripperLatch:
    """The gripper command in force: a hold, or a message without a valid command, keeps it."""

    def __init__(self) -> None:
        self.command = GRIPPER_OPEN

    def env_action(self, action: ReceivedAction | None) -> np.ndarray:
        """7-D CALVIN relative action; no action or a hold is a zero delta."""
        if action is None or action.hold:
            return np.array([0.0] * 6 + [float(self.command)])
        if action.gripper in (GRIPPER_OPEN, GRIPPER_CLOSE):
            self.command = action.gripper
        return np.concatenate([action.delta, [float(self.command)]])


class ActionMailbox:
    """Newest action from the policy; written by the subscription, taken by the simulator thread."""

    def __init__(self) -> None:
        self._action: ReceivedAction | None = None
        self._condition = threading.Condition()

    def put(self, action: ReceivedAction) -> None:
        with self._condition:
            self._action = action
            self._condition.notify_all()

    def take(self, *, newer_than_ns: int | None = None, timeout: float) -> ReceivedAction | None:
        """The newest action (stamped at or after ``newer_than_ns``), removed from the box; ``None`` on timeout."""
        def ready() -> bool:
            return self._action is not None and (newer_than_ns is None or self._action.stamp_ns >= newer_than_ns)

        with self._condition:
            if not self._condition.wait_for(ready, timeout):
                return None
            action, self._action = self._action, None
            return action


class StepStats:
    """ExitStats by stamp, so a chain's figures cover exactly the policy steps the simulator executed."""

    COLUMNS = ('llm_gflops', 'total_gflops', 'exit_index', 'step_latency_ms')

    def __init__(self, keep: int = 10_000) -> None:
        self._by_stamp: dict[int, tuple[float, float, int, float]] = {}
        self._keep = keep
        self._condition = threading.Condition()

    def record(self, stamp_ns: int, llm_gflops: float, total_gflops: float, exit_index: int,
               step_latency_ms: float) -> None:
        with self._condition:
            self._by_stamp[stamp_ns] = (llm_gflops, total_gflops, exit_index, step_latency_ms)
            while len(self._by_stamp) > self._keep:
                del self._by_stamp[next(iter(self._by_stamp))]
            self._condition.notify_all()

    def collect(self, stamps: list[int], timeout: float = 1.0) -> np.ndarray:
        """``(n, 4)`` rows (:attr:`COLUMNS`) for ``stamps``; waits up to ``timeout`` s for late messages.

        ExitStats travel on their own topic and can arrive after the action they
        describe; the bridge passes its action timeout, so a loaded machine
        delays the tally instead of dropping a step from it.
        """
        with self._condition:
            self._condition.wait_for(lambda: all(s in self._by_stamp for s in stamps), timeout)
            rows = [self._by_stamp.pop(s) for s in stamps if s in self._by_stamp]
        return np.asarray(rows, dtype=np.float64).reshape(-1, len(self.COLUMNS))


def step_summary(rows: np.ndarray) -> dict[str, object]:
    """Per executed model step: average and peak GFLOPs, mean exit, exit histogram, latency percentiles.

    The bridge publishes this with each evaluation, so a listener (the demo, the
    benchmark) reads complete figures without racing DDS discovery of ``exit_stats``.
    Rows with exit 0 are scripted steps (the return to the ready pose): counted
    as ``scripted_steps``, left out of every model figure.
    """
    scripted = int(np.sum(rows[:, 2] == 0))
    rows = rows[rows[:, 2] > 0]
    if rows.size == 0:
        return {'policy_steps': 0, 'scripted_steps': scripted}
    exits, counts = np.unique(rows[:, 2].astype(int), return_counts=True)
    return {'policy_steps': int(rows.shape[0]), 'scripted_steps': scripted,
            'avg_llm_gflops': float(rows[:, 0].mean()), 'peak_llm_gflops': float(rows[:, 0].max()),
            'avg_total_gflops': float(rows[:, 1].mean()), 'peak_total_gflops': float(rows[:, 1].max()),
            'mean_exit': float(rows[:, 2].mean()),
            'exit_histogram': {str(k): float(c / rows.shape[0]) for k, c in zip(exits, counts)},
            'latency_ms_p50': float(np.percentile(rows[:, 3], 50)),
            'latency_ms_p99': float(np.percentile(rows[:, 3], 99))}


@dataclass
class EvaluationTally:
    """One evaluation run through ROS: each chain's result with the GFLOPs of the policy steps it executed.

    Assembles what the bridge publishes (``evaluation/chain_result`` per chain,
    ``evaluation/summary`` at the end), so the node only wires and the figures
    are tested without ROS. ``settings`` are the bridge's, echoed in the summary.
    """

    settings: dict[str, Any]
    results: list[ChainResult] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)  # per chain, the StepStats rows of its executed steps
    error: str | None = None  # why the run ended before its last chain

    def add(self, result: ChainResult, rows: np.ndarray) -> dict[str, Any]:
        """Record a finished chain and its :class:`StepStats` rows; return its ``evaluation/chain_result``."""
        self.results.append(result)
        self.rows.append(rows)
        return {**result.to_json(), 'gflops': step_summary(rows)}

    @property
    def report(self) -> EvaluationReport:
        return EvaluationReport(self.results)

    def gflops(self) -> dict[str, object]:
        """:func:`step_summary` over every executed step of every chain."""
        return step_summary(np.concatenate(self.rows) if self.rows else np.zeros((0, len(StepStats.COLUMNS))))

    def summary(self) -> dict[str, Any]:
        """``evaluation/summary``: CALVIN's metrics without the per-chain list, GFLOPs, settings, and the error."""
        summary = {key: value for key, value in self.report.to_json().items() if key != 'chains'}
        summary['gflops'] = self.gflops()
        summary['settings'] = dict(self.settings)
        if self.error is not None:
            summary['error'] = self.error
        return summary

    def format_table(self) -> str:
        """The report's table and the GFLOPs, for the log."""
        return self.report.format_table() + f'\n  gflops: {self.gflops()}'


class Interrupted(Exception):
    """The node asked the simulator thread to stop what it is doing (shutdown, or an evaluation request)."""


@dataclass
class RosPolicy:
    """The evaluator's ``Policy`` protocol over ROS: publish the observation, wait for the policy's answer.

    Args:
        announce: publishes the (latched) instruction when it changed.
        publish: publishes an observation; returns the static frame's stamp (ns).
        republish: re-sends the last observation with its original stamp, so the
            policy's inputs stay fresh while it thinks without looking like a new frame.
        reset_policy: resets the remote policy (its reset service); called before
            the first frame of each subtask, after the instruction went out.
        interrupted: polled while waiting; true raises :class:`Interrupted`.
        mode: ``lockstep`` waits for an answer to this frame (up to ``timeout``);
            ``fixed_rate`` steps every ``period`` s with the newest action, or a hold.
        holds_step: in lockstep, whether a hold answers the frame. Free play: yes,
            a hold is a command the arm executes. Evaluation: no, the paused
            simulator waits for the policy's action. A hold means the policy's
            inputs were not usable yet (under load one topic of the frame may
            still be in flight; a hold carries no frame stamp), and stepping on it
            would spend one of the subtask's steps on machine timing.
    """

    announce: Callable[[str], None]
    publish: Callable[[Obs], int]
    republish: Callable[[], None]
    reset_policy: Callable[[], None]
    interrupted: Callable[[], bool]
    mailbox: ActionMailbox
    mode: StepMode = 'lockstep'
    timeout: float = 30.0
    period: float = 1.0 / 30.0
    holds_step: bool = True
    republish_period: float = 0.2
    gripper: GripperLatch = field(default_factory=GripperLatch)
    executed: list[int] = field(default_factory=list)  # stamps of the policy actions the simulator executed
    _needs_reset: bool = False
    _deadline: float = 0.0

    def reset(self) -> None:
        """New subtask: the remote policy is reset just before the subtask's first frame."""
        self._needs_reset = True
        self.gripper = GripperLatch()

    def step(self, obs: Obs, instruction: str) -> np.ndarray:
        self.announce(instruction)
        if self._needs_reset:
            self.reset_policy()
            self._needs_reset = False
        stamp = self.publish(obs)
        action = self._lockstep(stamp) if self.mode == 'lockstep' else self._fixed_rate()
        if action is not None and not action.hold:
            self.executed.append(action.stamp_ns)
        return self.gripper.env_action(action)

    def _lockstep(self, stamp: int) -> ReceivedAction:
        deadline = time.monotonic() + self.timeout
        holds = 0
        while (remaining := deadline - time.monotonic()) > 0:
            if self.interrupted():
                raise Interrupted()
            action = self.mailbox.take(newer_than_ns=stamp, timeout=min(self.republish_period, remaining))
            if action is not None and (self.holds_step or not action.hold):
                return action
            holds += action is not None
            self.republish()
        held = f' (the policy answered with {holds} holds: see its log for why)' if holds else ''
        raise PolicyTimeout(f'no action for the frame stamped {stamp} ns within {self.timeout:g} s{held}')

    def _fixed_rate(self) -> ReceivedAction | None:
        if self.interrupted():
            raise Interrupted()
        self._deadline = max(self._deadline + self.period, time.monotonic())
        time.sleep(max(0.0, self._deadline - time.monotonic()))
        return self.mailbox.take(timeout=0.0)
