"""Return to the ready pose before a new instruction: the start every training demo shares.

The embedded simulator's demos all start at the same home pose with the
gripper open, so a policy trained on them has never seen an instruction begin
anywhere else. In a 5-instruction chain every instruction after the first
begins where the previous one left the hand (often low, with the gripper
closed on a button), and the shipped policy finished 1 of 45 such subtasks
against 44 of 72 first ones (docs/training.md section 4). A scripted move back to the
ready pose before the learned policy takes over removes that mismatch; it is a
fixed controller, not a learned skill, costs no LLM compute and is counted
in the subtask's step budget like any other action.

A block held in the gripper (the gripper commanded closed and still wider
than ``holding_width_m``) stays held, so *lift* followed by *place* or *stack*
keeps its block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deer_ros.calvin_layout import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    HOME_TCP_POSE,
    ORN_SCALE,
    POS_SCALE,
    POSE_DIM,
    wrap_angle,
)
from deer_ros.policy.types import Action

_WIDTH, _GRIPPER_COMMAND = 6, 14  # robot_obs indices: opening width, last gripper command


@dataclass(frozen=True)
class ReadyPose:
    """Where the hand goes before a new instruction, and when it counts as there.

    Args:
        tcp: TCP position (m) and Euler xyz orientation (rad) of the ready pose.
        position_tolerance_m, orientation_tolerance_rad: arrival test.
        max_steps: the return gives up after this many actions (the arm may be
            blocked) and hands over to the policy wherever the hand is.
        holding_width_m: a closed gripper wider than this holds an object.
        lift_first_m: below the ready height by more than this, the hand first
            rises straight up, so it does not sweep across the table.
    """

    tcp: tuple[float, ...] = HOME_TCP_POSE
    position_tolerance_m: float = 0.01
    orientation_tolerance_rad: float = 0.05
    max_steps: int = 40
    holding_width_m: float = 0.01
    lift_first_m: float = 0.03

    def __post_init__(self) -> None:
        if len(self.tcp) != POSE_DIM or not np.all(np.isfinite(self.tcp)):
            raise ValueError(f'ready pose needs {POSE_DIM} finite values (x y z in m, Euler xyz in rad), '
                             f'got {self.tcp}')
        if self.max_steps < 0 or self.position_tolerance_m <= 0 or self.orientation_tolerance_rad <= 0:
            raise ValueError('ready pose: max_steps must be >= 0 and the tolerances > 0')

    def gripper_for(self, robot_obs: np.ndarray) -> int:
        """Open, unless the gripper is closed on something (then it stays closed)."""
        holding = robot_obs[_GRIPPER_COMMAND] < 0 and robot_obs[_WIDTH] > self.holding_width_m
        return GRIPPER_CLOSE if holding else GRIPPER_OPEN

    def action(self, robot_obs: np.ndarray) -> Action | None:
        """The next relative action towards the ready pose, or ``None`` once the hand is there."""
        target = np.asarray(self.tcp, dtype=np.float64)
        position_error = target[:3] - robot_obs[:3]
        orientation_error = wrap_angle(target[3:] - robot_obs[3:6])
        gripper = self.gripper_for(robot_obs)
        if (np.linalg.norm(position_error) < self.position_tolerance_m
                and np.abs(orientation_error).max() < self.orientation_tolerance_rad
                and gripper == robot_obs[_GRIPPER_COMMAND]):
            return None
        if position_error[2] > self.lift_first_m:
            position_error = np.array([0.0, 0.0, position_error[2]])
        pose = np.concatenate([position_error / POS_SCALE, orientation_error / ORN_SCALE])
        return Action(np.clip(pose, -1.0, 1.0), gripper)


class ReadyPoseReturn:
    """The return in progress: started by a new instruction, over when the hand arrives or the steps run out."""

    def __init__(self, ready_pose: ReadyPose) -> None:
        self.ready_pose = ready_pose
        self._steps_left = 0

    def start(self) -> None:
        self._steps_left = self.ready_pose.max_steps

    def next_action(self, robot_obs: np.ndarray) -> Action | None:
        """An action towards the ready pose, or ``None``: the learned policy acts (from now on, until ``start``)."""
        if self._steps_left == 0:
            return None
        action = self.ready_pose.action(np.asarray(robot_obs, dtype=np.float64))
        self._steps_left = 0 if action is None else self._steps_left - 1
        return action
