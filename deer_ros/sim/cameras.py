"""The static and wrist cameras at CALVIN's resolutions, rendered with pybullet's CPU TinyRenderer.

The static camera sits where calvin_env's does (same eye and up vector), aimed slightly further
left with a 12 instead of 10 degree field of view so the whole desk, which is a little wider than
CALVIN's, stays in the frame. The wrist camera looks along its link's z axis with the link's
x axis as image up (the fingertips appear at the bottom of the image).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from deer_ros.calvin_layout import GRIPPER_CAMERA_SIZE, STATIC_CAMERA_SIZE

STATIC_EYE = (2.8715, -2.1666, 2.5552)
STATIC_TARGET = (-0.05, -0.03, 0.39)
STATIC_UP = (0.4041, 0.2263, 0.8863)
STATIC_FOV = 12.0
GRIPPER_FOV = 75.0


def _render(client: Any, size: int, view: list[float], projection: list[float],
            background: np.ndarray) -> np.ndarray:
    """RGB image with pixels that hit nothing (depth at the far plane) set to ``background``."""
    _, _, rgba, depth, _ = client.getCameraImage(size, size, view, projection, renderer=client.ER_TINY_RENDERER,
                                                 flags=client.ER_NO_SEGMENTATION_MASK)
    image = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3].copy()
    image[np.asarray(depth).reshape(size, size) >= 1.0] = background
    return image


def _colour(rgba: tuple[float, float, float, float]) -> np.ndarray:
    return np.round(np.asarray(rgba[:3]) * 255).astype(np.uint8)


class StaticCamera:
    """Fixed 200x200 view of the whole table."""

    def __init__(self, client: Any, background: tuple[float, float, float, float]) -> None:
        self._p = client
        self._background = _colour(background)
        self._view = client.computeViewMatrix(STATIC_EYE, STATIC_TARGET, STATIC_UP)
        self._projection = client.computeProjectionMatrixFOV(STATIC_FOV, 1.0, 0.01, 10.0)

    def render(self) -> np.ndarray:
        return _render(self._p, STATIC_CAMERA_SIZE, self._view, self._projection, self._background)


class GripperCamera:
    """84x84 wrist view that follows a robot link (position and 3x3 rotation from ``pose()``)."""

    def __init__(self, client: Any, pose: Any, background: tuple[float, float, float, float]) -> None:
        self._p = client
        self._background = _colour(background)
        self._pose = pose
        self._projection = client.computeProjectionMatrixFOV(GRIPPER_FOV, 1.0, 0.01, 2.0)

    def render(self) -> np.ndarray:
        position, rotation = self._pose()
        view = self._p.computeViewMatrix(position.tolist(), (position + rotation[:, 2]).tolist(),
                                         rotation[:, 0].tolist())
        return _render(self._p, GRIPPER_CAMERA_SIZE, view, self._projection, self._background)
