"""calvin_bridge's camera transports over real DDS: a compressed bridge drives a compressed policy through a
lock-step evaluation (issue 21 §3)."""
from __future__ import annotations

import json

from policy_driver import FAST_POLICY, LATCHED
from rclpy.node import Node
from ros_helpers import BackgroundSpinner, wait_for
from std_msgs.msg import String

BRIDGE = 'deer_ros.nodes.calvin_bridge_node'
STARTUP_S = 120.0


def test_compressed_bridge_evaluates_against_a_compressed_policy(start_node, rclpy_context, tiny_checkpoint):
    """JPEG frames on <camera>/compressed are all the policy sees: every step of the chain is a policy action."""
    policy = start_node('deer_ros.nodes.policy_node', params={
        **FAST_POLICY, 'checkpoint': str(tiny_checkpoint),
        'camera.static.transport': 'compressed', 'camera.gripper.transport': 'compressed'})
    bridge = start_node(BRIDGE, params={'evaluate_on_start': True, 'shutdown_after_evaluation': True,
                                        'num_chains': 1, 'max_steps': 3, 'image_transport': 'compressed',
                                        'compressed_format': 'jpeg'})
    listener = Node('transport_listener', context=rclpy_context)
    summaries: list[dict] = []
    listener.create_subscription(String, 'evaluation/summary', lambda msg: summaries.append(json.loads(msg.data)),
                                 LATCHED)
    with BackgroundSpinner(listener, context=rclpy_context):
        assert wait_for(lambda: summaries, STARTUP_S), bridge.log + policy.log
    [summary] = summaries
    assert 'error' not in summary, summary
    assert summary['num_chains'] == 1 and summary['gflops']['policy_steps'] == 3, summary
    assert wait_for(lambda: not bridge.running(), 20.0), 'shutdown_after_evaluation should end the bridge'
    assert bridge.stop() == 0, bridge.log

