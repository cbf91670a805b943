"""A tiny node for cross-process tests: echoes ArmAction, answers each with an ExitStats.

Run as ``python -m ros_echo_node --ros-args ...`` (test/ is on PYTHONPATH via
ros_helpers.NodeProcess). Parameters make its output depend on how it was
configured, so a test can tell that a params file and ``-p`` overrides arrived:
``scale`` multiplies ``delta``; ``exit_index`` and ``thresholds`` go into ExitStats.
"""
from __future__ import annotations

import math

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from deer_ros.msg import ArmAction, ExitStats


class EchoNode(Node):
    def __init__(self) -> None:
        super().__init__('echo')
        self.scale = self.declare_parameter('scale', 1.0).value
        self.exit_index = self.declare_parameter('exit_index', 1).value
        self.thresholds = self.declare_parameter('thresholds', [math.inf]).value
        self.actions = self.create_publisher(ArmAction, 'action_out', 10)
        self.stats = self.create_publisher(ExitStats, 'exit_stats', 10)
        self.create_subscription(ArmAction, 'action_in', self.on_action, 10)
        self.get_logger().info(f'echo ready: scale={self.scale} exit_index={self.exit_index}')

    def on_action(self, msg: ArmAction) -> None:
        echoed = ArmAction(header=msg.header, delta=np.clip(msg.delta * self.scale, -1.0, 1.0),
                           gripper=msg.gripper, hold=msg.hold)
        self.actions.publish(echoed)
        self.stats.publish(ExitStats(
            header=msg.header, exit_index=self.exit_index, exit_layer=5 * self.exit_index,
            num_exits=len(self.thresholds), llm_gflops=1.5, total_gflops=2.25, step_latency_ms=3.0,
            consistency=[math.nan] + [0.25] * (self.exit_index - 1), thresholds=self.thresholds))


def main() -> None:
    rclpy.init()
    node = EchoNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        print('echo stopped', flush=True)


if __name__ == '__main__':
    main()
