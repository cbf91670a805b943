"""What the policy node decides at each control tick, without ROS: input freshness, safety holds, the policy step.

Subscription callbacks only store the newest value of each input (or why it
was rejected) with its steady-clock arrival time; the control tick takes a
snapshot and either steps the policy or falls back to a hold. Nothing here
reads ROS time, so ``use_sim_time`` with a paused or absent ``/clock`` cannot
make a stale camera look fresh.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
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

StalePolicy = Literal['hold', 'silent']
STALE_POLICIES: tuple[str, ...] = ('hold', 'silent')


@dataclass
class _Slot:
    value: Any = None
    stamp: int = 0  # header stamp (ns) of the message the value came from; 0 = unstamped
    received: float | None = None  # steady-clock seconds
    sequence: int = 0  # counts accepted values, to tell a new frame from a repeated one
    error: str | None = None  # why the newest message was rejected; cleared by the next good one


@dataclass(frozen=True)
class Snapshot:
    """Newest accepted values and every reason they cannot be used now."""

    values: dict[str, Any]
    stamps: dict[str, int]
    sequences: dict[str, int]
    ages: dict[str, float | None]
    problems: list[str]

    def frame_key(self, name: str) -> tuple[str, int]:
        """What makes a frame new: its stamp, or its arrival count when the sender does not stamp.

        By stamp, a frame re-sent unchanged (to keep inputs fresh while the
        policy thinks) is not acted on twice.
        """
        return ('stamp', self.stamps[name]) if self.stamps[name] else ('sequence', self.sequences[name])


class InputBuffer:
    """Newest value of each input with its arrival time; written by subscriptions, read by the control tick."""

    def __init__(self, names: tuple[str, ...] = INPUTS) -> None:
        self._slots = {name: _Slot() for name in names}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        """The inputs this buffer requires, in order."""
        return tuple(self._slots)

    def put(self, name: str, value: Any, now: float, stamp_ns: int = 0) -> None:
        with self._lock:
            slot = self._slots[name]
            slot.value, slot.stamp, slot.received, slot.error = value, stamp_ns, now, None
            slot.sequence += 1

    def value(self, name: str) -> Any:
        with self._lock:
            return self._slots[name].value

    def reject(self, name: str, error: str) -> None:
        """Record a bad message: the input counts as unusable until a good one arrives."""
        with self._lock:
            self._slots[name].error = error

    def snapshot(self, now: float, max_age: float) -> Snapshot:
        with self._lock:
            slots = {name: _Slot(**vars(slot)) for name, slot in self._slots.items()}
        problems = []
        ages: dict[str, float | None] = {}
        for name, slot in slots.items():
            ages[name] = None if slot.received is None else now - slot.received
            if slot.error is not None:
                problems.append(f'{name}: {slot.error}')
            elif slot.value is None or (name == INSTRUCTION and not slot.value):
                problems.append(f'{name}: none received yet')
            elif name in STREAMED_INPUTS and ages[name] > max_age:
                problems.append(f'{name}: stale, last message {ages[name]:.2f} s ago (max_input_age_s {max_age:g})')
        return Snapshot({name: slot.value for name, slot in slots.items()},
                        {name: slot.stamp for name, slot in slots.items()},
                        {name: slot.sequence for name, slot in slots.items()}, ages, problems)


def check_image(image: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why a decoded camera image cannot feed the policy, or ``None``."""
    if image.shape != shape:
        return f'expected {shape[1]}x{shape[0]} RGB image, got {image.shape[1]}x{image.shape[0]}'
    return None


def check_joint_positions(positions: np.ndarray) -> str | None:
    """Why a JointState cannot be trusted, or ``None`` (NaN/inf means the driver lost the arm)."""
    if positions.size == 0:
        return 'no joint positions in the message'
    if not np.all(np.isfinite(positions)):
        return f'non-finite joint positions {np.round(positions, 4).tolist()}'
    return None


@dataclass
class Decision:
    """What to publish for one tick.

    ``kind``: ``action`` (a policy output), ``ready_pose`` (a scripted step
    back to the ready pose; no model ran), ``hold`` (zero delta, gripper
    unchanged), ``silent`` (publish nothing: the robot driver's own command
    timeout stops the arm) or ``wait`` (nothing new to act on yet; not a fault).
    """

    kind: Literal['action', 'ready_pose', 'hold', 'silent', 'wait']
    action: Action | None = None
    info: ExitInfo | None = None
    stamp_ns: int | None = None  # stamp of the static frame the action was computed from
    problems: list[str] = field(default_factory=list)


def safe_action(action: Action) -> Action:
    """Clamp the pose to [-1, 1] and refuse NaN: the last check before anything reaches the robot."""
    pose = np.asarray(action.pose, dtype=np.float64)
    if pose.shape != (6,) or not np.all(np.isfinite(pose)) or action.gripper not in (GRIPPER_OPEN, GRIPPER_CLOSE):
        raise NonFiniteActionError(f'unusable action: pose={pose.tolist()}, gripper={action.gripper}')
    return Action(np.clip(pose, -1.0, 1.0), int(action.gripper))


class PolicyController:
    """Turns input snapshots into decisions; owns the last gripper command so holds keep it.

    Args:
        policy: the policy (with its ready-pose return, if any); stepped once per decision that acts.
        max_input_age_s: camera/joint-state age beyond which the input is stale.
        on_stale_input: ``hold`` publishes explicit holds on bad input, ``silent`` publishes nothing.
        require_new_frame: step only on a static frame the policy has not seen,
            so a simulator stepped in lock-step gets exactly one action per frame.

    When the policy needs the robot state (a model with ``use_proprio``, or
    the ready-pose return), a fresh TCP pose is required too: the robot state
    is rebuilt from the TCP pose, the joint states and the controller's own
    last gripper command (:func:`robot_obs_from_ros`).
    """

    def __init__(self, policy: DeerPolicy, *, max_input_age_s: float, on_stale_input: StalePolicy = 'hold',
                 require_new_frame: bool = True) -> None:
        self.policy = policy
        self.needs_robot_state = policy.needs_robot_state
        self.inputs = InputBuffer(INPUTS + ((TCP_POSE,) if self.needs_robot_state else ()))
        self.max_input_age_s = max_input_age_s
        self.on_stale_input = on_stale_input
        self.require_new_frame = require_new_frame
        self.gripper = GRIPPER_OPEN  # CALVIN starts every episode open
        self._instruction_lock = threading.Lock()
        self._last_frame: tuple[str, int] | None = None

    def set_instruction(self, text: str, now: float) -> bool:
        """Store a new instruction; a changed text resets the policy (new task). Returns whether it reset."""
        with self._instruction_lock:
            changed = text != self.inputs.value(INSTRUCTION)
            self.inputs.put(INSTRUCTION, text, now)
            if changed:
                self.reset()
            return changed

    def reset(self) -> None:
        """New task: the policy forgets its step history and, with a ready pose, goes there first."""
        self.policy.reset()

    def tick(self, now: float) -> Decision:
        snapshot = self.inputs.snapshot(now, self.max_input_age_s)
        if snapshot.problems:
            return self._fallback(snapshot.problems)
        frame = snapshot.frame_key(STATIC_CAMERA)
        if self.require_new_frame and frame == self._last_frame:
            return Decision('wait')
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
        if info.scripted:  # a ready-pose step: no model ran, so no exit to report
            return self._acted(frame, 'ready_pose', action, None, snapshot)
        return self._acted(frame, 'action', action, info, snapshot)

    def _acted(self, frame: tuple[str, int], kind: Literal['action', 'ready_pose'], action: Action,
               info: ExitInfo | None, snapshot: Snapshot) -> Decision:
        self._last_frame = frame
        self.gripper = action.gripper
        return Decision(kind, action, info, snapshot.stamps[STATIC_CAMERA] or None)

    def _fallback(self, problems: list[str]) -> Decision:
        if self.on_stale_input == 'silent':
            return Decision('silent', problems=problems)
        return Decision('hold', Action.hold(self.gripper), problems=problems)
