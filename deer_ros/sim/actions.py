"""Validate CALVIN-style actions once, at the env boundary, so the robot only ever sees finite commands."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from deer_ros.calvin_layout import ACTION_DIM, ORN_SCALE, POS_SCALE


@dataclass(frozen=True)
class PoseCommand:
    """A validated command: either a delta (metres / radians, already scaled) or an absolute tcp pose."""

    relative: bool
    position: np.ndarray  # (3,)
    euler: np.ndarray  # (3,)
    gripper: int  # +1 open, -1 close


def _finite(values: Any, length: int, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{what} must be numeric, got {values!r}') from error
    if array.shape != (length,):
        raise ValueError(f'{what} must have {length} values, got {array.size}')
    if not np.all(np.isfinite(array)):
        raise ValueError(f'{what} contains NaN or infinite values: {array}')
    return array


def _gripper_sign(value: float) -> int:
    # calvin's wrapper maps any float to the two commands the gripper knows.
    return 1 if value > 0 else -1


def parse_action(action: Any) -> PoseCommand:
    """Turn a 7-D relative action or a ``(pos, orn, gripper)`` absolute tuple into a :class:`PoseCommand`.

    Relative pose components are clipped to [-1, 1] before scaling, so a policy cannot command
    more than 2 cm / 0.05 rad per step; absolute orientations may be Euler (3) or quaternion (4).
    """
    if isinstance(action, tuple) and len(action) == 3:
        position = _finite(action[0], 3, 'absolute position')
        orientation = np.asarray(action[1], dtype=np.float64).reshape(-1)
        if orientation.size == 4:
            orientation = Rotation.from_quat(_finite(orientation, 4, 'absolute quaternion')).as_euler('xyz')
        euler = _finite(orientation, 3, 'absolute orientation')
        gripper = _finite(action[2], 1, 'gripper action')[0]
        return PoseCommand(False, position, euler, _gripper_sign(gripper))
    values = _finite(action, ACTION_DIM, 'relative action')
    pose = np.clip(values[:6], -1.0, 1.0)
    return PoseCommand(True, pose[:3] * POS_SCALE, pose[3:] * ORN_SCALE, _gripper_sign(values[6]))
