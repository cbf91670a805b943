"""The simulator side of the ROS loop, without ROS: action hand-over, lock-step policy adapter, GFLOPs tally,
and the evaluation report the bridge publishes.

Why lock-step by default: a DeeR policy on a CPU takes tens to hundreds of
milliseconds per step, slower than CALVIN's 30 Hz. Stepping the simulator at a
fixed rate would fill the gaps with zero actions, so a chain's outcome would
measure inference latency rather than the policy, and it would change with
machine load. CALVIN's own evaluation is lock-step (the env waits for the
policy), so results through ROS match ``deer-ros evaluate``. ``fixed_rate``
stays available for real-time demos.

The lock-step protocol (issue 18 §1, shared with ``deer_policy``): every message
of one simulator frame carries the same stamp S; the policy answers frame S with an
ArmAction stamped S; the bridge keeps answers by stamp until it takes the one for
the frame it waits on (:class:`ActionMailbox`), so no later message can replace
it; while it waits it re-sends S, and the policy answers a re-sent frame again, so
a lost answer heals itself. An answer to an older frame is never applied to a newer state.
An evaluation survives its policy: a silent one fails the chain, a lost or restarted
one is waited for and the chain starts again (:func:`run_chain_surviving`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from deer_ros.benchmark.chains import Chain
from deer_ros.benchmark.evaluation import ChainResult, EvaluationReport
from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.sim.interface import Obs

StepMode = Literal['lockstep', 'fixed_rate']
STEP_MODES: tuple[str, ...] = ('lockstep', 'fixed_rate')


MAX_CHAIN_RESTARTS = 3  # a chain whose policy is lost more often than this is recorded as failed


class PolicyTimeout(RuntimeError):
    """The policy sent no usable action for a frame in time, re-sends included: the chain cannot finish."""


class PolicyLost(RuntimeError):
    """The policy went away or was replaced mid-chain: its history is gone, so the chain must start again."""


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
    """The policy's answers, kept by the frame they answer until the simulator thread takes one.

    Written by the subscription, taken by the simulator thread. Answers (non-hold)
    are kept per frame stamp, at most ``keep`` of them (the oldest go first), so
    nothing published later, a hold in particular, can replace an answer before
    it is taken: under load the policy's inputs go stale while its answer waits,
    and a single-slot box lost the answer to the holds that followed it (issue 18
    §1). A hold only tells something about the frame it is stamped with; the
    newest one is kept.
    """

    def __init__(self, keep: int = 64) -> None:
        self._answers: dict[int, ReceivedAction] = {}
        self._hold: ReceivedAction | None = None
        self._keep = keep
        self._condition = threading.Condition()

    def put(self, action: ReceivedAction) -> None:
        with self._condition:
            if action.hold:
                self._hold = action
            else:
                self._answers.pop(action.stamp_ns, None)  # a re-sent answer counts as the newest
                self._answers[action.stamp_ns] = action
                while len(self._answers) > self._keep:
                    del self._answers[next(iter(self._answers))]
            self._condition.notify_all()

    def take(self, stamp_ns: int, timeout: float) -> ReceivedAction | None:
        """The answer to the frame ``stamp_ns``, else a hold stamped with it, removed; ``None`` on timeout.

        Answers to older frames can never be used (the simulator has moved on) and are dropped.
        """
        with self._condition:
            if not self._condition.wait_for(lambda: self._for(stamp_ns) is not None, timeout):
                return None
            action = self._for(stamp_ns)
            if action.hold:
                self._hold = None
            self._answers = {stamp: answer for stamp, answer in self._answers.items() if stamp > stamp_ns}
            return action

    def _for(self, stamp_ns: int) -> ReceivedAction | None:
        answer = self._answers.get(stamp_ns)
        if answer is None and self._hold is not None and self._hold.stamp_ns == stamp_ns:
            return self._hold
        return answer

    def take_newest(self) -> ReceivedAction | None:
        """Fixed rate: the newest-stamped answer or hold, whatever frame it answers; the box is emptied."""
        with self._condition:
            candidates = [*self._answers.values(), *([self._hold] if self._hold is not None else [])]
            self._answers, self._hold = {}, None
            return max(candidates, key=lambda action: (action.stamp_ns, not action.hold), default=None)

    def clear(self) -> None:
        """Forget everything: a new episode must not take an answer meant for the last one."""
        with self._condition:
            self._answers, self._hold = {}, None


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


def encode_rows(rows: np.ndarray) -> list[list[float]]:
    """:class:`StepStats` rows as a results file keeps them: each value as the shortest text of its float32.

    ExitStats fields are float32, so this is exact (:func:`decode_rows` gives the same rows back) at about a
    third of the size of float64 text: a resumed evaluation's GFLOPs figures equal an uninterrupted one's.
    """
    return [[float(str(value)) for value in row] for row in np.asarray(rows, dtype=np.float32)]


def decode_rows(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).astype(np.float64).reshape(-1, len(StepStats.COLUMNS))


@dataclass
class EvaluationTally:
    """One evaluation run through ROS: each chain's result with the GFLOPs of the policy steps it executed.

    Assembles what the bridge publishes (``evaluation/chain_result`` per chain,
    ``evaluation/summary`` at the end) and the lines of its results file, so the
    node only wires and the figures are tested without ROS. ``settings`` are
    the bridge's, echoed in the summary. Per chain it also keeps how often the
    chain started again because the policy was lost (``restarted``) and how long
    its last attempt took (``seconds``).
    """

    settings: dict[str, Any]
    results: list[ChainResult] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)  # per chain, the StepStats rows of its executed steps
    restarted: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    error: str | None = None  # why the run ended before its last chain

    def add(self, result: ChainResult, rows: np.ndarray, restarted: int = 0, seconds: float = 0.0) -> dict[str, Any]:
        """Record a finished chain and its :class:`StepStats` rows; return its ``evaluation/chain_result``."""
        self.results.append(result)
        self.rows.append(rows)
        self.restarted[result.index] = restarted
        self.seconds[result.index] = seconds
        return {**result.to_json(), 'gflops': step_summary(rows), 'restarted': restarted, 'seconds': seconds}

    def add_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A chain taken from a results file (:meth:`record`), as if it had just run."""
        return self.add(ChainResult.from_record(record), decode_rows(record['step_rows']), record['restarted'],
                        record['seconds'])

    def record(self, index: int) -> dict[str, Any]:
        """The results-file line of chain ``index``: everything :meth:`add_record` needs to add it again."""
        position = next(i for i, result in enumerate(self.results) if result.index == index)
        return {**self.results[position].to_record(), 'restarted': self.restarted[index],
                'seconds': self.seconds[index], 'step_rows': encode_rows(self.rows[position])}

    @property
    def report(self) -> EvaluationReport:
        return EvaluationReport(sorted(self.results, key=lambda result: result.index))

    @property
    def ok(self) -> bool:
        """Every chain ran to its end and nothing stopped the run early."""
        return self.error is None and not self.report.failed

    def gflops(self) -> dict[str, object]:
        """:func:`step_summary` over every executed step of every chain."""
        return step_summary(np.concatenate(self.rows) if self.rows else np.zeros((0, len(StepStats.COLUMNS))))

    def summary(self) -> dict[str, Any]:
        """``evaluation/summary``: CALVIN's metrics without the per-chain list, GFLOPs, settings, and the error.

        Failed chains are counted (``num_failed``) and listed with their reasons (``failed_chains``); chains
        that started again after the policy was lost are listed with how often (``restarted_chains``).
        """
        report = self.report
        summary = {key: value for key, value in report.to_json().items() if key != 'chains'}
        summary['failed_chains'] = [{'index': result.index, 'error': result.error} for result in report.failed]
        summary['restarted_chains'] = {str(index): n for index, n in sorted(self.restarted.items()) if n}
        summary['gflops'] = self.gflops()
        summary['settings'] = dict(self.settings)
        if self.error is not None:
            summary['error'] = self.error
        return summary

    def format_table(self) -> str:
        """The report's table, restarted chains and the GFLOPs, for the log."""
        restarted = ''.join(f'\n  chain {index} started again {n} times (policy lost)'
                            for index, n in sorted(self.restarted.items()) if n)
        return self.report.format_table() + restarted + f'\n  gflops: {self.gflops()}'


class Interrupted(Exception):
    """The node asked the simulator thread to stop what it is doing (shutdown, or an evaluation request)."""


@dataclass
class ChainOutcome:
    """How one chain of a ROS evaluation ended; ``policy_gone``: no policy came back, the run cannot go on."""

    result: ChainResult
    restarted: int = 0
    policy_gone: bool = False


def run_chain_surviving(attempt: Callable[[], ChainResult], index: int, chain: Chain,
                        policy_back: Callable[[str], bool], max_restarts: int = MAX_CHAIN_RESTARTS) -> ChainOutcome:
    """Run a chain (``attempt`` runs it from its initial state) through the policy's faults; never raises them.

    A silent policy (:class:`PolicyTimeout`) or a simulator error fails the
    chain with the reason, and the evaluation goes on. A lost policy
    (:class:`PolicyLost`: nothing publishes actions, or a new node does)
    is waited for (``policy_back(reason)`` says whether one came back); its
    history went with it, so the chain starts again from its initial state
    rather than mid-subtask, at most ``max_restarts`` times. Only
    :class:`Interrupted` passes through.
    """
    restarted = 0
    while True:
        try:
            return ChainOutcome(attempt(), restarted)
        except PolicyLost as lost:
            if restarted == max_restarts:
                return ChainOutcome(ChainResult.failed(index, chain, f'PolicyLost: {lost} (the chain started again '
                                                                     f'{restarted} times)'), restarted)
            if not policy_back(str(lost)):
                return ChainOutcome(ChainResult.failed(index, chain, f'PolicyLost: {lost}; none came back'),
                                    restarted, policy_gone=True)
            restarted += 1
        except Interrupted:
            raise
        except Exception as error:  # noqa: BLE001 - whatever stops one chain is that chain's result
            return ChainOutcome(ChainResult.failed(index, chain, f'{type(error).__name__}: {error}'), restarted)


@dataclass
class RosPolicy:
    """The evaluator's ``Policy`` protocol over ROS: publish the observation, wait for the policy's answer.

    Args:
        announce: publishes the (latched) instruction when it changed.
        publish: publishes an observation; returns the static frame's stamp (ns).
        republish: re-sends the last observation with its original stamp, so the
            policy's inputs stay fresh while it thinks without looking like a new
            frame; a policy re-answers a re-sent frame it already answered, so an
            answer lost on the way is sent again.
        reset_policy: resets the remote policy (its reset service); called before
            the first frame of each subtask, after the instruction went out.
        interrupted: polled while waiting; true raises :class:`Interrupted`.
        policy_problem: polled whenever a wait for an answer ran a re-send period
            without one; a reason (the policy is gone or was replaced) raises
            :class:`PolicyLost`, ``None`` keeps waiting.
        mode: ``lockstep`` waits for the answer to this frame (up to ``timeout``);
            ``fixed_rate`` steps every ``period`` s with the newest action, or a hold.
        holds_step: in lockstep, whether a hold for this frame answers it. Free
            play: yes, a hold is a command the arm executes. Evaluation: no, the
            paused simulator waits for the policy's action. A hold means the
            policy's inputs were not usable yet (under load one topic of the
            frame may still be in flight), and stepping on it would spend one of
            the subtask's steps on machine timing.
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
    policy_problem: Callable[[], str | None] = lambda: None
    gripper: GripperLatch = field(default_factory=GripperLatch)
    executed: list[int] = field(default_factory=list)  # stamps of the policy actions the simulator executed
    _needs_reset: bool = False
    _deadline: float = 0.0

    def reset(self) -> None:
        """New subtask: the remote policy is reset just before its first frame; the gripper latch and the
        mailbox start afresh with it, as the policy's own per-episode state does."""
        self._needs_reset = True
        self.gripper = GripperLatch()
        self.mailbox.clear()

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
            action = self.mailbox.take(stamp, timeout=min(self.republish_period, remaining))
            if action is not None and (self.holds_step or not action.hold):
                return action
            holds += action is not None
            if (problem := self.policy_problem()) is not None:
                raise PolicyLost(problem)
            self.republish()
        held = f'the policy answered with {holds} holds: see its log for why' if holds else 'the policy sent nothing'
        raise PolicyTimeout(f'no action for the frame stamped {stamp} ns within {self.timeout:g} s, re-sent every '
                            f'{self.republish_period:g} s ({held})')

    def _fixed_rate(self) -> ReceivedAction | None:
        if self.interrupted():
            raise Interrupted()
        self._deadline = max(self._deadline + self.period, time.monotonic())
        time.sleep(max(0.0, self._deadline - time.monotonic()))
        return self.mailbox.take_newest()
