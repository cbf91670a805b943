"""What the policy node decides at each control tick, without ROS: matched inputs, safety holds, the policy step.

Subscription callbacks only store each accepted message (or why it was
rejected) with its stamp and steady-clock arrival; the control tick takes a
snapshot and either steps the policy on one consistent set of inputs, waits
for the rest of a frame, re-answers a frame sent again, or falls back to a
hold. Nothing here reads ROS time, so ``use_sim_time`` with a paused or absent
``/clock`` cannot make a stale camera look fresh.

The lock-step protocol with the simulator bridge (docs/nodes.md, "Lock-step"):
a frame is every input stamped alike; the policy acts on the newest static
frame once the other inputs have a message of that frame (matched by stamp
within ``sync_slop_s``, as ``message_filters`` synchronisers do), answers it
with actions stamped like it, answers it again, identically, when it is sent
again, and stamps holds with the newest static frame it has seen.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.nodes.robot_state import robot_obs_from_ros
from deer_ros.policy.deer_policy import DeerPolicy
from deer_ros.policy.early_exit import NonFiniteActionError
from deer_ros.policy.types import Action, ExitInfo, Observation

STATIC_CAMERA = 'static camera'
GRIPPER_CAMERA = 'gripper camera'
JOINT_STATES = 'joint states'
TCP_POSE = 'tcp pose'
INSTRUCTION = 'instruction'
INPUTS = (STATIC_CAMERA, GRIPPER_CAMERA, JOINT_STATES, INSTRUCTION)
# The instruction is latched (sent once per task), so its age says nothing about freshness.
STREAMED_INPUTS = (STATIC_CAMERA, GRIPPER_CAMERA, JOINT_STATES, TCP_POSE)
# Messages of distinct stamps kept per input to match frames from (message_filters' default queue size).
SYNC_QUEUE_LENGTH = 10
NS_PER_S = 1_000_000_000

StalePolicy = Literal['hold', 'silent']
STALE_POLICIES: tuple[str, ...] = ('hold', 'silent')


@dataclass(frozen=True, eq=False)
class _Message:
    value: Any
    stamp: int  # header stamp (ns); 0 = unstamped
    first_received: float  # steady-clock seconds of the first message with this stamp
    received: float  # of the newest one (a re-send refreshes it)


@dataclass
class _Input:
    queue: deque[_Message] = field(default_factory=lambda: deque(maxlen=SYNC_QUEUE_LENGTH))
    arrivals: int = 0  # accepted messages, re-sends included: tells a re-sent frame from a repeated tick
    error: str | None = None  # why the newest message was rejected; cleared by the next good one


@dataclass(frozen=True)
class Snapshot:
    """The inputs one tick may act on, and every reason it cannot act now.

    ``values``/``stamps``: for each input, the message of the newest static
    frame (matched by stamp) or, where that frame has none yet, the newest one.
    ``problems``: inputs unusable now (missing, stale, rejected, or no message
    of the static frame within ``max_input_age_s``): hold. ``unmatched``: inputs
    still missing a message of the static frame: wait for it. ``warnings``:
    usable but suspicious (a stream whose stamp stopped moving).
    """

    values: dict[str, Any]
    stamps: dict[str, int]
    ages: dict[str, float | None]
    problems: list[str]
    unmatched: list[str]
    warnings: list[str]
    frame: tuple[str, int]  # the static frame's key: its stamp, or its arrival count when unstamped
    arrivals: int  # static camera messages accepted so far


class InputBuffer:
    """Recent messages of each input with their stamps and arrival times; written by subscriptions, read by ticks.

    Args:
        names: the inputs the policy needs, in order.
        sync_slop_s: how far a message's stamp may be from the static frame's
            to belong to it (bridge-stamped frames match exactly).
    """

    def __init__(self, names: tuple[str, ...] = INPUTS, sync_slop_s: float = 0.01) -> None:
        self._inputs = {name: _Input() for name in names}
        self._lock = threading.Lock()
        self.sync_slop_s = sync_slop_s

    @property
    def names(self) -> tuple[str, ...]:
        """The inputs this buffer requires, in order."""
        return tuple(self._inputs)

    def put(self, name: str, value: Any, now: float, stamp_ns: int = 0) -> None:
        """Store an accepted message; one with the stamp of a queued message replaces it (a re-sent frame)."""
        with self._lock:
            state = self._inputs[name]
            first = now
            same = [m for m in state.queue if m.stamp == stamp_ns] if stamp_ns else []
            if same:
                first = same[0].first_received
                state.queue = deque((m for m in state.queue if m.stamp != stamp_ns), maxlen=SYNC_QUEUE_LENGTH)
            state.queue.append(_Message(value, stamp_ns, first, now))
            state.arrivals += 1
            state.error = None

    def value(self, name: str) -> Any:
        with self._lock:
            queue = self._inputs[name].queue
            return queue[-1].value if queue else None

    def reject(self, name: str, error: str) -> None:
        """Record a bad message: the input counts as unusable until a good one arrives."""
        with self._lock:
            self._inputs[name].error = error

    def arrivals(self, name: str) -> int:
        with self._lock:
            return self._inputs[name].arrivals

    def newest_stamp(self, name: str) -> int:
        """Stamp (ns) of the newest accepted message of ``name``; 0 when none or unstamped."""
        with self._lock:
            queue = self._inputs[name].queue
            return queue[-1].stamp if queue else 0

    def snapshot(self, now: float, max_age: float) -> Snapshot:
        with self._lock:
            inputs = {name: (list(state.queue), state.arrivals, state.error) for name, state in self._inputs.items()}
        static_queue, arrivals, _ = inputs[STATIC_CAMERA]
        static = static_queue[-1] if static_queue else None
        values: dict[str, Any] = {}
        stamps: dict[str, int] = {}
        ages: dict[str, float | None] = {}
        problems, unmatched, warnings = [], [], []
        for name, (queue, _, error) in inputs.items():
            newest = queue[-1] if queue else None
            ages[name] = None if newest is None else now - newest.received
            chosen = newest
            if error is not None:
                problems.append(f'{name}: {error}')
            elif newest is None or (name == INSTRUCTION and not newest.value):
                problems.append(f'{name}: none received yet')
            elif name in STREAMED_INPUTS and ages[name] > max_age:
                problems.append(f'{name}: stale, last message {ages[name]:.2f} s ago (max_input_age_s {max_age:g})')
            elif name in STREAMED_INPUTS:
                frozen_s = now - newest.first_received
                if newest.stamp and newest.received > newest.first_received and frozen_s > max_age:
                    warnings.append(f'{name}: frozen, the same stamp for {frozen_s:.2f} s while messages keep '
                                    f'arriving (max_input_age_s {max_age:g})')
                if name != STATIC_CAMERA and static is not None and static.stamp and newest.stamp:
                    chosen = self._match(queue, static.stamp, [m.stamp for m in static_queue])
                    if chosen is None:
                        reason = (f'{name}: no message of the static frame ({static.stamp} ns) within sync_slop_s '
                                  f'{self.sync_slop_s:g}; its newest is {(newest.stamp - static.stamp) / NS_PER_S:+.3f}'
                                  f' s from it')
                        waited = now - static.first_received
                        if waited > max_age:
                            problems.append(f'{reason}, waited {waited:.2f} s (max_input_age_s {max_age:g})')
                        else:
                            unmatched.append(reason)
                        chosen = newest
            values[name] = None if chosen is None else chosen.value
            stamps[name] = 0 if chosen is None else chosen.stamp
        frame = ('stamp', static.stamp) if static is not None and static.stamp else ('sequence', arrivals)
        return Snapshot(values, stamps, ages, problems, unmatched, warnings, frame, arrivals)

    def _match(self, queue: list[_Message], stamp: int, static_stamps: list[int]) -> _Message | None:
        """The message closest to ``stamp`` within the slop whose own nearest static frame is ``stamp``.

        The second condition keeps a message of the previous frame (a camera
        running late) from completing the next one when frames come closer
        together than the slop.
        """
        slop = self.sync_slop_s * NS_PER_S
        candidates = [m for m in queue if m.stamp and abs(m.stamp - stamp) <= slop
                      and min(static_stamps, key=lambda s: abs(m.stamp - s)) == stamp]
        return min(candidates, key=lambda m: abs(m.stamp - stamp), default=None)


def check_image(image: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why a decoded camera image cannot feed the policy, or ``None``."""
    if image.shape != shape:
        return f'expected {shape[1]}x{shape[0]} RGB image, got {image.shape[1]}x{image.shape[0]}'
    return None


@dataclass
class Decision:
    """What to publish for one tick.

    ``kind``: ``action`` (a policy output), ``ready_pose`` (a scripted step
    back to the ready pose; no model ran), ``reanswer`` (the frame acted on
    was sent again: the same answer again, no step), ``hold`` (zero delta,
    gripper unchanged), ``silent`` (publish nothing: the robot driver's own
    command timeout stops the arm) or ``wait`` (nothing to act on yet; not a
    fault: ``problems`` then names what the newest static frame still lacks).
    """

    kind: Literal['action', 'ready_pose', 'reanswer', 'hold', 'silent', 'wait']
    action: Action | None = None
    info: ExitInfo | None = None
    stamp_ns: int | None = None  # the static frame answered (holds: the newest seen); None: unstamped
    problems: list[str] = field(default_factory=list)


def safe_action(action: Action) -> Action:
    """Clamp the pose to [-1, 1] and refuse NaN: the last check before anything reaches the robot."""
    pose = np.asarray(action.pose, dtype=np.float64)
    if pose.shape != (6,) or not np.all(np.isfinite(pose)) or action.gripper not in (GRIPPER_OPEN, GRIPPER_CLOSE):
        raise NonFiniteActionError(f'unusable action: pose={pose.tolist()}, gripper={action.gripper}')
    return Action(np.clip(pose, -1.0, 1.0), int(action.gripper))


class PolicyController:
    """Turns input snapshots into decisions; owns the per-episode state the node keeps between ticks.

    Args:
        policy: the policy (with its ready-pose return, if any); stepped once per decision that acts.
        max_input_age_s: camera/joint-state age beyond which the input is
            stale, and the longest a frame waits for its other inputs.
        on_stale_input: ``hold`` publishes explicit holds on bad input, ``silent`` publishes nothing.
        require_new_frame: step only on a static frame the policy has not
            acted on, so a simulator stepped in lock-step gets exactly one
            action per frame (a re-sent frame gets that same action again).
        sync_slop_s: how far apart the stamps of one frame's messages may be.

    When the policy needs the robot state (a model with ``use_proprio``, or
    the ready-pose return), a fresh TCP pose is required too: the robot state
    is rebuilt from the TCP pose, the joint states and the controller's own
    last gripper command (:func:`robot_obs_from_ros`).
    """

    def __init__(self, policy: DeerPolicy, *, max_input_age_s: float, on_stale_input: StalePolicy = 'hold',
                 require_new_frame: bool = True, sync_slop_s: float = 0.01) -> None:
        self.policy = policy
        self.needs_robot_state = policy.needs_robot_state
        self.inputs = InputBuffer(INPUTS + ((TCP_POSE,) if self.needs_robot_state else ()), sync_slop_s)
        self.max_input_age_s = max_input_age_s
        self.on_stale_input = on_stale_input
        self.require_new_frame = require_new_frame
        self._instruction_lock = threading.Lock()
        self._episode_lock = threading.Lock()
        self.gripper = GRIPPER_OPEN  # CALVIN starts every episode open
        self._answer: Decision | None = None  # the last answer, published again when its frame is sent again
        self._answer_frame: tuple[str, int] | None = None
        self._consumed = 0  # static camera arrivals already acted on, re-answered or left behind by a reset

    @property
    def sync_slop_s(self) -> float:
        return self.inputs.sync_slop_s

    @sync_slop_s.setter
    def sync_slop_s(self, value: float) -> None:
        self.inputs.sync_slop_s = value

    def set_instruction(self, text: str, now: float) -> bool:
        """Store a new instruction; a changed text resets the policy (new task). Returns whether it reset."""
        with self._instruction_lock:
            changed = text != self.inputs.value(INSTRUCTION)
            self.inputs.put(INSTRUCTION, text, now)
            if changed:
                self.reset()
            return changed

    def reset(self) -> None:
        """New episode: every piece of per-episode state goes back to its start.

        The policy forgets its step history (with a ready pose, goes there
        first); the gripper command is open again (CALVIN starts every episode
        open, and it is part of the robot state the policy sees); the answer
        kept for re-sends is dropped. Frames that arrived before the reset are
        not acted on (their episode is over) unless they are sent again.
        """
        with self._episode_lock:
            self.policy.reset()
            self.gripper = GRIPPER_OPEN
            self._answer = self._answer_frame = None
            self._consumed = self.inputs.arrivals(STATIC_CAMERA)

    def hold(self, problems: list[str]) -> Decision:
        """A hold (zero delta, the gripper command kept) stamped with the newest static frame seen.

        That is the frame a lock-step bridge waits on; ``stamp_ns`` is ``None``
        (stamped now) before any stamped frame arrived.
        """
        return Decision('hold', Action.hold(self.gripper), stamp_ns=self.inputs.newest_stamp(STATIC_CAMERA) or None,
                        problems=problems)

    def tick(self, now: float) -> Decision:
        snapshot = self.inputs.snapshot(now, self.max_input_age_s)
        with self._episode_lock:
            if snapshot.problems:
                return self._fallback(snapshot.problems)
            if self.require_new_frame:
                if snapshot.frame == self._answer_frame and self._answer is not None:
                    if snapshot.arrivals > self._consumed:  # sent again: its answer may have been missed
                        self._consumed = snapshot.arrivals
                        return replace(self._answer, kind='reanswer')
                    return Decision('wait')
                if snapshot.arrivals <= self._consumed:
                    return Decision('wait')
            if snapshot.unmatched:
                return Decision('wait', problems=snapshot.unmatched)
            return self._step(snapshot)

    def _step(self, snapshot: Snapshot) -> Decision:
        values = snapshot.values
        try:
            robot_obs = robot_obs_from_ros(values[TCP_POSE], values[JOINT_STATES], self.gripper) \
                if self.needs_robot_state else None
            observation = Observation(values[STATIC_CAMERA], values[GRIPPER_CAMERA], robot_obs)
            action, info = self.policy.select_action(observation, values[INSTRUCTION])
            action = safe_action(action)
        except NonFiniteActionError as error:
            return self._fallback([f'policy output rejected: {error}'])
        except ValueError as error:
            return self._fallback([f'bad input: {error}'])
        except Exception as error:  # noqa: BLE001 - the safety boundary: whatever broke, the robot must hold
            return self._fallback([f'policy step failed: {type(error).__name__}: {error}'])
        decision = Decision('ready_pose' if info.scripted else 'action', action,
                            None if info.scripted else info,  # a ready-pose step: no model ran, no exit to report
                            snapshot.stamps[STATIC_CAMERA] or None)
        self.gripper = action.gripper
        self._answer, self._answer_frame, self._consumed = decision, snapshot.frame, snapshot.arrivals
        return decision

    def _fallback(self, problems: list[str]) -> Decision:
        if self.on_stale_input == 'silent':
            return Decision('silent', problems=problems)
        return self.hold(problems)
