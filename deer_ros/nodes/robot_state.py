"""CALVIN's ``robot_obs`` vector as a robot reports it over ROS, and back: the layout and the checks.

``robot_obs`` (15): TCP position (3), TCP orientation as Euler xyz (3),
gripper opening width (1), the 7 arm joint positions, and the last gripper
command (1 open, -1 close). The bridge splits it into a ``JointState`` (arm
joints, then each finger at half the opening width, Franka-style) and a TCP
``PoseStamped`` (:mod:`deer_ros.nodes.messages`); a policy that uses
proprioception puts it back together from those two and its own last gripper command.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

ARM_JOINTS = tuple(f'panda_joint{i}' for i in range(1, 8))
FINGER_JOINTS = ('panda_finger_joint1', 'panda_finger_joint2')


def check_tcp_pose(pose: np.ndarray) -> str | None:
    """Why a TCP pose cannot be used, or ``None``."""
    if not np.all(np.isfinite(pose)):
        return f'non-finite TCP pose {np.round(pose, 4).tolist()}'
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
