"""An in-process stand-in for the robot and the operator of a policy node, shared by the node tests."""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import wait_for
from sensor_msgs.msg import Image, JointState
from small_models import random_frame
from std_msgs.msg import Header, String

from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, STATIC_CAMERA_SHAPE
from deer_ros.msg import ArmAction, ExitStats
from deer_ros.nodes.image_conversion import rgb_to_image_msg
from deer_ros.nodes.messages import stamp_ns

# Small and slow enough for 2 shared cores: one torch thread, 20 Hz ticks.
FAST_POLICY = {'control_rate_hz': 20.0, 'num_threads': 1, 'max_input_age_s': 5.0}  # loaded CI: 2 s went stale
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class PolicyDriver(Node):
    """Plays the robot and the operator for a policy node: sends inputs, records everything it publishes."""

    def __init__(self, context: Any) -> None:
        super().__init__('policy_driver', context=context)
        self.rng = np.random.default_rng(0)
        self.static_pub = self.create_publisher(Image, 'camera/static/image_raw', 10)
        self.gripper_pub = self.create_publisher(Image, 'camera/gripper/image_raw', 10)
        self.joint_pub = self.create_publisher(JointState, 'joint_states', 10)
        self.tcp_pub = self.create_publisher(PoseStamped, 'tcp_pose', 10)
        self.instruction_pub = self.create_publisher(String, 'instruction', LATCHED)
        self.lock = threading.Lock()
        self.actions: list[ArmAction] = []
        self.stats: list[ExitStats] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.outputs = [
            self.create_subscription(ArmAction, 'arm_action', self._record(self.actions), 100),
            self.create_subscription(ExitStats, 'exit_stats', self._record(self.stats), 100)]
        self.create_subscription(DiagnosticArray, '/diagnostics',
                                 lambda msg: self._record(self.diagnostics)(*msg.status), 100)

    def _record(self, into: list) -> Callable[..., None]:
        def record(*messages: Any) -> None:
            with self.lock:
                into.extend(messages)
        return record

    def wait_connected(self, timeout: float = 20.0) -> bool:
        """Until the policy matched our publishers and we matched its outputs: a reliable message sent
        before matching is lost (volatile durability), which would look like a missing action."""
        publishers = (self.static_pub, self.gripper_pub, self.joint_pub)
        return wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers)
                        and all(s.get_publisher_count() > 0 for s in self.outputs), timeout)

    def instruct(self, text: str) -> None:
        self.instruction_pub.publish(String(data=text))

    def send(self, *, static: Image | None = None, gripper: Image | None = None,
             joints: list[float] | None = None, tcp: list[float] | None = None) -> int:
        """One message of every input; returns the static frame's stamp (ns). Defaults are valid random frames,
        stamped now; a TCP pose (xyz + quaternion xyzw) only when ``tcp`` is given."""
        header = static.header if static is not None else Header(stamp=self.get_clock().now().to_msg())
        self.static_pub.publish(static or rgb_to_image_msg(random_frame(self.rng, STATIC_CAMERA_SHAPE), header))
        self.gripper_pub.publish(gripper or rgb_to_image_msg(random_frame(self.rng, GRIPPER_CAMERA_SHAPE), header))
        self.joint_pub.publish(JointState(header=header, name=[f'j{i}' for i in range(7)],
                                          position=joints if joints is not None else [0.1] * 7))
        if tcp is not None:
            pose = PoseStamped(header=header)
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = tcp[:3]
            pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z, pose.pose.orientation.w = tcp[3:]
            self.tcp_pub.publish(pose)
        return stamp_ns(header.stamp)

    def stats_for(self, stamp: int, timeout: float = 20.0) -> ExitStats | None:
        """The ExitStats answering the frame stamped ``stamp``; ``None`` if none came in time."""
        def find() -> ExitStats | None:
            with self.lock:
                return next((s for s in self.stats if stamp_ns(s.header.stamp) == stamp), None)
        wait_for(lambda: find() is not None, timeout)
        return find()

    def send_until_answered(self, attempts: int = 5, timeout: float = 10.0) -> int | None:
        """Send valid frames until the policy answers one (its stamp), ``None`` after ``attempts`` unanswered.

        On a loaded machine a control tick can come late enough for a single frame to go stale
        first (tests that lower ``max_input_age_s``); a real camera would simply send the next one.
        """
        for _ in range(attempts):
            stamp = self.send()
            if self.stats_for(stamp, timeout) is not None:
                return stamp
        return None

    def action_for(self, stamp: int, timeout: float = 20.0, hold_grace: float = 2.0) -> ArmAction | None:
        """The node's answer to the frame stamped ``stamp``: its action, else the hold it sent for that frame.

        A hold carries the newest frame's stamp, so a hold sent before the frame's last input arrived (the latched
        instruction can come after the first frame on a loaded machine) is followed by the real answer: after a
        hold, wait ``hold_grace`` s for an action to the same frame.
        """
        def answers() -> list[ArmAction]:
            with self.lock:
                return [a for a in self.actions if stamp_ns(a.header.stamp) == stamp]
        if not wait_for(lambda: bool(answers()), timeout):
            return None
        wait_for(lambda: any(not a.hold for a in answers()), hold_grace)
        found = answers()
        return next((a for a in found if not a.hold), found[0])

    def count(self) -> tuple[int, int]:
        """(actions, diagnostics) recorded so far: marks to look only at what comes after."""
        with self.lock:
            return len(self.actions), len(self.diagnostics)
