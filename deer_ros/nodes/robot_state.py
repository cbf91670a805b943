"""CALVIN's ``robot_obs`` vector and the ROS messages that carry it, in both directions.

``robot_obs`` (15): TCP position (3), TCP orientation as Euler xyz (3),
gripper opening width (1), the 7 arm joint positions, and the last gripper
command (1 open, -1 close). The bridge splits it into a ``JointState`` (arm
joints, then each finger at half the opening width, Franka-style) and a TCP
``PoseStamped``; a policy that uses proprioception puts it back together from
those two messages and its own last gripper command.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

ARM_JOINTS = tuple(f'panda_joint{i}' for i in range(1, 8))
FINGER_JOINTS = ('panda_finger_joint1', 'panda_finger_joint2')


def joint_state_msg(robot_obs: np.ndarray, header: Header) -> JointState:
    """CALVIN robot_obs -> JointState: 7 arm joints, and each finger at half the gripper opening width."""
    half_width = float(robot_obs[6]) / 2.0
    return JointState(header=header, name=[*ARM_JOINTS, *FINGER_JOINTS],
                      position=[float(q) for q in robot_obs[7:14]] + [half_width, half_width])


def tcp_pose_msg(robot_obs: np.ndarray, header: Header) -> PoseStamped:
    """CALVIN robot_obs tcp position + Euler xyz -> PoseStamped."""
    pose = PoseStamped(header=header)
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in robot_obs[:3])
    x, y, z, w = Rotation.from_euler('xyz', robot_obs[3:6]).as_quat()
    pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z, pose.pose.orientation.w = (
        float(x), float(y), float(z), float(w))
    return pose


def tcp_pose_array(msg: PoseStamped) -> np.ndarray:
    """PoseStamped -> (7,) position xyz + quaternion xyzw, as stored by the policy node."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)


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
