"""The CALVIN ``PlayTableSimEnv`` contract, so policies, evaluators and the ROS bridge can run on any backend.

Observation layout (all arrays in CALVIN order, float64 states):

* ``rgb_obs``: ``{'rgb_static': (200, 200, 3) uint8, 'rgb_gripper': (84, 84, 3) uint8}``
  (empty when an env was built without cameras, for physics-only runs);
* ``robot_obs`` (15,): tcp xyz, tcp Euler xyz, gripper width, 7 arm joints, last gripper action;
* ``scene_obs`` (24,): slide, drawer, button, switch, lightbulb, led, then xyz + Euler xyz per block.

Actions are 7-D relative (6 pose deltas in [-1, 1], scaled by :data:`~deer_ros.calvin_layout.POS_SCALE` / ``ORN_SCALE``,
plus a gripper sign) or absolute ``((x, y, z), (ex, ey, ez), (g,))`` tuples, as calvin_env accepts.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

PHYSICS_HZ = 240

Obs = dict[str, Any]
Info = dict[str, Any]


class SimEnv(ABC):
    """Abstract play-table environment with calvin_env's method names, arguments and return shapes."""

    @abstractmethod
    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> Obs:
        """Restore the given robot/scene state (or a default/sampled one) and return the first observation."""

    @abstractmethod
    def step(self, action: Any) -> tuple[Obs, float, bool, Info]:
        """Apply one 30 Hz action; reward and done stay 0/False as in CALVIN (success comes from the oracle)."""

    @abstractmethod
    def get_obs(self) -> Obs:
        """Current observation without stepping."""

    @abstractmethod
    def get_info(self) -> Info:
        """``{'robot_info': ..., 'scene_info': ...}`` with the fields the task oracle reads."""

    @abstractmethod
    def close(self) -> None:
        """Release the simulator."""

    def __enter__(self) -> 'SimEnv':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
