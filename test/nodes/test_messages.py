"""The generated deer_ros.msg interfaces: construction, the builders of deer_ros.nodes.messages, and delivery
over real DDS.

Covers both transports a deployment uses: two nodes in one process (intra-host
DDS through one participant per node) and two processes (the policy node and
the simulator bridge run as separate executables).
"""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from rclpy.node import Node
from ros_helpers import BackgroundSpinner, wait_for, write_params_file
from std_msgs.msg import Header

from deer_ros.calvin_layout import ORN_SCALE, POS_SCALE
from deer_ros.msg import ArmAction, ExitStats
from deer_ros.nodes.messages import arm_action_msg, exit_stats_msg, stamp_msg, stamp_ns, twist_msg
from deer_ros.policy.types import Action, ExitInfo


def test_arm_action_layout():
    action = ArmAction()
    assert (ArmAction.GRIPPER_CLOSE, ArmAction.GRIPPER_OPEN) == (-1, 1)
    assert action.delta.dtype == np.float32 and action.delta.shape == (6,)
    assert action.gripper == 0 and action.hold is False and action.header.frame_id == ''


def test_exit_stats_layout():
    stats = ExitStats(exit_index=3, thresholds=[0.1, math.inf], consistency=[math.nan, 0.2])
    assert (stats.exit_index, stats.exit_layer, stats.num_exits) == (3, 0, 0)
    assert list(stats.thresholds) == [pytest.approx(0.1), math.inf]
    assert math.isnan(stats.consistency[0])


def test_field_checks_catch_what_the_wire_would_silently_change():
    """Without check_fields (the default), rosidl pads a short delta and wraps an
    out-of-range gripper (200 arrives as -56); publishers must validate, and
    ROS_PYTHON_CHECK_FIELDS=1 turns these into errors."""
    action = ArmAction(check_fields=True)
    with pytest.raises(AssertionError, match='size of 6|length 6'):
        action.delta = np.zeros(5, np.float32)
    with pytest.raises(AssertionError, match=r'\[-128, 127\]'):
        action.gripper = 200
    with pytest.raises(AssertionError, match='integer in \\[0, 255\\]'):
        ExitStats(check_fields=True).exit_index = 256


def test_policy_outputs_as_messages():
    header = Header(frame_id='world')
    action = Action(pose=np.array([1.0, -0.5, 0.0, 0.0, 0.0, 0.2]), gripper=ArmAction.GRIPPER_CLOSE)
    arm = arm_action_msg(action, header, hold=False)
    np.testing.assert_allclose(arm.delta, action.pose, rtol=1e-6)
    assert arm.gripper == ArmAction.GRIPPER_CLOSE and not arm.hold and arm.header.frame_id == 'world'
    twist = twist_msg(action, header, rate_hz=30.0).twist  # velocity: per-step delta times steps per second
    assert (twist.linear.x, twist.linear.y) == pytest.approx((POS_SCALE * 30.0, -0.5 * POS_SCALE * 30.0))
    assert twist.angular.z == pytest.approx(0.2 * ORN_SCALE * 30.0)
    info = ExitInfo(exit_index=2, exit_layer=6, num_exits=6, llm_gflops=0.1, total_gflops=0.2, latency_ms=5.0,
                    consistency=[0.5], thresholds=[0.4])
    stats = exit_stats_msg(info, header)
    assert (stats.exit_index, stats.exit_layer, stats.num_exits) == (3, 6, 6)  # the message counts exits from 1
    assert list(stats.consistency) == [0.5] and list(stats.thresholds) == [pytest.approx(0.4)]
    scripted = exit_stats_msg(None, header)
    assert (scripted.exit_index, scripted.llm_gflops, scripted.step_latency_ms) == (0, 0.0, 0.0)


def test_stamps_as_integer_nanoseconds_are_exact():
    nanoseconds = 1_796_554_033_967_085_252
    assert stamp_ns(stamp_msg(nanoseconds)) == nanoseconds
    assert (stamp_msg(nanoseconds).sec, stamp_msg(nanoseconds).nanosec) == (1_796_554_033, 967_085_252)


def _sample_action(seq: int) -> ArmAction:
    action = ArmAction(gripper=ArmAction.GRIPPER_CLOSE, hold=False)
    action.header.frame_id = 'base_link'
    action.header.stamp.sec = seq
    action.delta = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.25], np.float32)
    return action


def test_two_nodes_in_one_process(rclpy_context):
    sender = Node('stats_sender', context=rclpy_context)
    receiver = Node('stats_receiver', context=rclpy_context)
    received: list[ExitStats] = []
    got = threading.Event()

    def on_stats(msg: ExitStats) -> None:
        received.append(msg)
        got.set()

    receiver.create_subscription(ExitStats, 'exit_stats', on_stats, 10)
    publisher = sender.create_publisher(ExitStats, 'exit_stats', 10)
    sent = ExitStats(exit_index=2, exit_layer=10, num_exits=3, llm_gflops=1.25, total_gflops=4.5,
                     step_latency_ms=12.5, consistency=[math.nan, 0.03],
                     thresholds=[-math.inf, 0.05, math.inf])
    sent.header.frame_id = 'policy'
    try:
        with BackgroundSpinner(sender, receiver, context=rclpy_context):
            # Until discovery has matched the pair, publishes go nowhere: repeat.
            assert wait_for(lambda: publisher.publish(sent) or got.wait(0.1), timeout=15)
    finally:
        sender.destroy_node()
        receiver.destroy_node()
    msg = received[0]
    assert (msg.exit_index, msg.exit_layer, msg.num_exits, msg.header.frame_id) == (2, 10, 3, 'policy')
    assert (msg.llm_gflops, msg.total_gflops, msg.step_latency_ms) == (1.25, 4.5, 12.5)
    assert math.isnan(msg.consistency[0]) and msg.consistency[1] == pytest.approx(0.03)
    assert list(msg.thresholds) == [-math.inf, pytest.approx(0.05), math.inf]


def test_two_processes(rclpy_context, start_node, tmp_path):
    """ros_echo_node (another process) echoes ArmAction and answers with ExitStats.

    Its output depends on its parameters, so this also checks that a params file
    and a ``-p`` override (which wins over the file) reach the node.
    """
    params = write_params_file(tmp_path / 'echo.yaml', {'scale': 2.0, 'exit_index': 9,
                                                        'thresholds': [0.5, 0.25, math.inf]})
    echo = start_node('ros_echo_node', params_file=params, params={'exit_index': 3})
    node = Node('echo_client', context=rclpy_context)
    actions: list[ArmAction] = []
    stats: list[ExitStats] = []
    node.create_subscription(ArmAction, 'action_out', actions.append, 10)
    node.create_subscription(ExitStats, 'exit_stats', stats.append, 10)
    publisher = node.create_publisher(ArmAction, 'action_in', 10)
    try:
        assert echo.wait_for_log('echo ready'), echo.log
        with BackgroundSpinner(node, context=rclpy_context):
            seq = iter(range(1_000_000))
            assert wait_for(lambda: publisher.publish(_sample_action(next(seq))) or (actions and stats),
                            timeout=20, interval=0.1), echo.log
    finally:
        node.destroy_node()
    action, stat = actions[0], stats[0]
    assert action.header.frame_id == 'base_link' and action.gripper == ArmAction.GRIPPER_CLOSE
    np.testing.assert_allclose(action.delta, [0.2, -0.4, 0.6, -0.8, 1.0, -0.5])
    assert (stat.exit_index, stat.exit_layer, stat.num_exits) == (3, 15, 3)
    assert stat.header.stamp.sec == action.header.stamp.sec
    assert list(stat.thresholds) == [0.5, 0.25, math.inf]
    assert math.isnan(stat.consistency[0]) and list(stat.consistency[1:]) == [0.25, 0.25]
    assert echo.stop() == 0, echo.log
    assert 'echo stopped' in echo.log
