"""Plain data passed between the policy, the exit rule, the nodes and the simulator."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, GRIPPER_OPEN, POSE_DIM, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE


@dataclass
class Observation:
    """One synchronised observation, in CALVIN's layout (HWC uint8 RGB images)."""

    rgb_static: np.ndarray
    rgb_gripper: np.ndarray
    proprio: np.ndarray | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when shape, dtype or values are wrong."""
        for name, expected in (('rgb_static', STATIC_CAMERA_SHAPE), ('rgb_gripper', GRIPPER_CAMERA_SHAPE)):
            image = getattr(self, name)
            if not isinstance(image, np.ndarray):
                raise ValueError(f'{name} must be a numpy array, got {type(image).__name__}')
            if image.shape != expected:
                raise ValueError(f'{name} must have shape {expected} (HxWx3 RGB), got {image.shape}')
            if image.dtype != np.uint8:
                raise ValueError(f'{name} must have dtype uint8, got {image.dtype}')
        if self.proprio is not None:
            proprio = np.asarray(self.proprio)
            if proprio.shape != (ROBOT_OBS_DIM,):
                raise ValueError(f'proprio must have shape ({ROBOT_OBS_DIM},), got {proprio.shape}')
            if not np.all(np.isfinite(proprio)):
                raise ValueError('proprio contains NaN or infinite values')


@dataclass
class Action:
    """A 7-D relative action: 6 pose deltas in [-1, 1] (CALVIN scaling) and a gripper command (+1 open / -1 close)."""

    pose: np.ndarray
    gripper: int

    def as_array(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.pose, dtype=np.float64), [float(self.gripper)]])

    @classmethod
    def hold(cls, gripper: int = GRIPPER_OPEN) -> 'Action':
        """Zero pose delta, gripper unchanged: what is sent when no safe policy output exists."""
        return cls(pose=np.zeros(POSE_DIM), gripper=gripper)


@dataclass
class ExitInfo:
    """What the early-exit policy did for one step (0-based exit index; -1 for a scripted step)."""

    exit_index: int
    exit_layer: int
    num_exits: int
    llm_gflops: float
    total_gflops: float
    latency_ms: float
    consistency: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    scripted: bool = False  # a fixed controller acted (the ready-pose return): no model step, no cost

    @classmethod
    def scripted_step(cls) -> 'ExitInfo':
        """A step no model ran for: exit 0 in ExitStats' 1-based count, zero cost, kept out of the budget."""
        return cls(exit_index=-1, exit_layer=0, num_exits=0, llm_gflops=0.0, total_gflops=0.0, latency_ms=0.0,
                   scripted=True)
