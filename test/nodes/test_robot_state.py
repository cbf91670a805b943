"""CALVIN robot_obs survives the trip through the bridge's JointState + PoseStamped and back."""
from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header

from deer_ros.nodes.messages import joint_state_msg, tcp_pose_array, tcp_pose_msg
from deer_ros.nodes.robot_state import check_tcp_pose, robot_obs_from_ros


def test_robot_obs_round_trip() -> None:
    robot_obs = np.array([0.1, -0.2, 0.6, 3.0, -0.1, 1.5, 0.07, 0.0, 0.3, 0.0, -2.0, 0.0, 2.2, 0.8, -1.0])
    joints = joint_state_msg(robot_obs, Header())
    rebuilt = robot_obs_from_ros(tcp_pose_array(tcp_pose_msg(robot_obs, Header())), np.array(joints.position), -1)
    np.testing.assert_allclose(rebuilt, robot_obs, atol=1e-9)


def test_missing_fingers_mean_zero_width_and_missing_arm_joints_are_an_error() -> None:
    pose = np.array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0])
    assert robot_obs_from_ros(pose, np.zeros(7), 1)[6] == 0.0
    with pytest.raises(ValueError, match='needs the 7 arm joints'):
        robot_obs_from_ros(pose, np.zeros(6), 1)


def test_bad_tcp_poses_are_named() -> None:
    assert check_tcp_pose(np.array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0])) is None
    assert 'non-finite' in check_tcp_pose(np.array([np.nan, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]))
    assert 'unit quaternion' in check_tcp_pose(np.zeros(7))
