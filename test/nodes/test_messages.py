"""The generated deer_ros.msg interfaces: construction, and delivery over real DDS.

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

from deer_ros.msg import ArmAction, ExitStats
from ros_helpers import BackgroundSpinner, wait_for, write_params_file


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
