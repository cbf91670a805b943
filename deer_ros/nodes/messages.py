"""ROS messages from plain data and back, for both nodes: stamps, the policy's outputs, the robot state.

One place for the field-by-field conversions, so the node modules only wire
topics to logic. Images have their own codec (:mod:`deer_ros.nodes.image_conversion`).
Stamps are integer nanoseconds: exact to compare, which is how actions are matched to frames.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from deer_ros.calvin_layout import ORN_SCALE, POS_SCALE
from deer_ros.msg import ArmAction, ExitStats
from deer_ros.nodes.robot_state import ARM_JOINTS, FINGER_JOINTS
from deer_ros.policy.types import Action, ExitInfo

NS_PER_S = 1_000_000_000


# ---- stamps
def stamp_ns(stamp: Time) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def stamp_msg(nanoseconds: int) -> Time:
    return Time(sec=nanoseconds // NS_PER_S, nanosec=nanoseconds % NS_PER_S)


# ---- the policy's outputs
def arm_action_msg(action: Action, header: Header, hold: bool) -> ArmAction:
    return ArmAction(header=header, delta=np.asarray(action.pose, dtype=np.float32), gripper=int(action.gripper),
                     hold=hold)


def twist_msg(action: Action, header: Header, rate_hz: float) -> TwistStamped:
    """MoveIt Servo style velocity: CALVIN units per step (0.02 m, 0.05 rad) times steps per second."""
    twist = TwistStamped(header=header)
    linear = np.asarray(action.pose[:3], dtype=np.float64) * POS_SCALE * rate_hz
    angular = np.asarray(action.pose[3:], dtype=np.float64) * ORN_SCALE * rate_hz
    twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = (float(v) for v in linear)
    twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = (float(v) for v in angular)
    return twist


def exit_stats_msg(info: ExitInfo | None, header: Header) -> ExitStats:
    """ExitStats with a 1-based exit index, as the message defines; ``None`` (a scripted step): exit 0, no cost.

    Scripted steps get a message too, so a consumer that tallies the stats of
    every executed action (the bridge) hears about each one instead of waiting.
    """
    info = ExitInfo.scripted_step() if info is None else info
    return ExitStats(header=header, exit_index=info.exit_index + 1, exit_layer=info.exit_layer,
                     num_exits=info.num_exits, llm_gflops=info.llm_gflops, total_gflops=info.total_gflops,
                     step_latency_ms=info.latency_ms, consistency=[float(v) for v in info.consistency],
                     thresholds=[float(v) for v in info.thresholds])


# ---- the robot state: CALVIN's robot_obs split into JointState + PoseStamped (layout: deer_ros.nodes.robot_state)
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
