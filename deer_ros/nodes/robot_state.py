"""CALVIN's ``robot_obs`` vector as a robot reports it over ROS, and back: the layout and the checks.

``robot_obs`` (15): TCP position (3), TCP orientation as Euler xyz (3),
gripper opening width (1), the 7 arm joint positions, and the last gripper
command (1 open, -1 close). The bridge splits it into a ``JointState`` (arm
joints, then each finger at half the opening width, Franka-style) and a TCP
``PoseStamped`` (:mod:`deer_ros.nodes.messages`); a policy that uses
proprioception puts it back together from those two and its own last gripper command.

The checks run where the messages arrive (the policy node's subscriptions):
a robot state outside physically plausible bounds is a broken driver or a bad
message, and finite but absurd values (1e30) would reach the model and come
out as NaN actions.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

ARM_JOINTS = tuple(f'panda_joint{i}' for i in range(1, 8))
FINGER_JOINTS = ('panda_finger_joint1', 'panda_finger_joint2')

# Physically plausible robot state, loose enough for any arm on a table (CALVIN's Franka Panda: joints within
# +-2.9 rad, fingers 0..0.04 m, TCP within about 1 m of the world origin).
MAX_JOINT_POSITION = 2 * math.pi  # |position| of every joint: rad (revolute arm joints) or m (fingers)
MAX_TCP_DISTANCE_M = 10.0  # TCP position's distance from the origin of its frame


_SHOWN_VALUES = 9  # of a rejected message in the reason: a fuzzed 1e6-joint message must not flood the log


def _shown(values: np.ndarray) -> str:
    shown = ', '.join(f'{v:.4g}' for v in values[:_SHOWN_VALUES])
    return f'[{shown}]' if values.size <= _SHOWN_VALUES else f'[{shown}, ...] ({values.size} values)'


def check_joint_positions(positions: np.ndarray, needs_arm: bool = False) -> str | None:
    """Why JointState positions cannot be trusted, or ``None``.

    NaN/inf means the driver lost the arm; with ``needs_arm`` (the robot
    state is rebuilt from them) the 7 arm joints must be there; beyond
    :data:`MAX_JOINT_POSITION` is not a real joint.
    """
    if positions.size == 0:
        return 'no joint positions in the message'
    if needs_arm and positions.size < len(ARM_JOINTS):
        return f'{positions.size} joint positions: the robot state needs the {len(ARM_JOINTS)} arm joints'
    if not np.all(np.isfinite(positions)):
        return f'non-finite joint positions {_shown(positions)}'
    if np.any(np.abs(positions) > MAX_JOINT_POSITION):
        return f'joint positions beyond +-{MAX_JOINT_POSITION:.4g} (not a physical arm): {_shown(positions)}'
    return None


def check_tcp_pose(pose: np.ndarray) -> str | None:
    """Why a TCP pose (xyz + quaternion xyzw) cannot be used, or ``None``."""
    if not np.all(np.isfinite(pose)):
        return f'non-finite TCP pose {_shown(pose)}'
    if np.linalg.norm(pose[:3]) > MAX_TCP_DISTANCE_M:
        return f'TCP position {_shown(pose[:3])} is more than {MAX_TCP_DISTANCE_M:g} m from the frame origin'
    if not 0.5 < np.linalg.norm(pose[3:]) < 1.5:
        return f'TCP orientation is not a unit quaternion (norm {np.linalg.norm(pose[3:]):.3g})'
    return None


def robot_obs_from_ros(tcp_pose: np.ndarray, joint_positions: np.ndarray, gripper_command: int) -> np.ndarray:
    """Rebuild CALVIN's robot_obs from a TCP pose (7,), JointState positions and the last gripper command.

    The first 7 joint positions are the arm joints; the opening width is the
    sum of the remaining (finger) positions, 0 when the message has none.

    Raises:
        ValueError: fewer than 7 joint positions.
    """
    joints = np.asarray(joint_positions, dtype=np.float64)
    if joints.size < len(ARM_JOINTS):
        raise ValueError(f'proprioception needs the {len(ARM_JOINTS)} arm joints, JointState has {joints.size}')
    euler = Rotation.from_quat(tcp_pose[3:7]).as_euler('xyz')
    width = float(joints[len(ARM_JOINTS):].sum())
    return np.concatenate([tcp_pose[:3], euler, [width], joints[:len(ARM_JOINTS)], [float(gripper_command)]])
