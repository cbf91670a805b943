"""QoS profiles shared by the nodes, so both ends of a topic agree."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# Per-step ExitStats, kept (transient local) for readers that match late: actions and ExitStats are separate
# DDS endpoints, and a reader that saw the writer does not prove the writer saw the reader, so the first
# steps' stats could be sent to nobody. 100 steps is far more than discovery takes at any control rate.
# Volatile subscribers (ros2 topic echo, dashboards) stay compatible.
EXIT_STATS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
