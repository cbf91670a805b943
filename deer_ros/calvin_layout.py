"""CALVIN's data layout, in one place: what a frame, a robot state and an action look like.

Every layer (model, policy, nodes, simulator, benchmark, training) reads these
numbers from here, so a change of layout is one edit. Values are CALVIN's
(``calvin_env`` ``PlayTableSimEnv`` and the CALVIN dataset), except the home
pose, which is the embedded simulator's start pose (close to CALVIN's).
"""
from __future__ import annotations

import numpy as np

# Cameras: HWC uint8 RGB.
STATIC_CAMERA_SIZE = 200
GRIPPER_CAMERA_SIZE = 84
STATIC_CAMERA_SHAPE = (STATIC_CAMERA_SIZE, STATIC_CAMERA_SIZE, 3)
GRIPPER_CAMERA_SHAPE = (GRIPPER_CAMERA_SIZE, GRIPPER_CAMERA_SIZE, 3)

# robot_obs (15,): tcp xyz (3), tcp Euler xyz (3), gripper width (1), 7 arm joints, last gripper action (1).
ROBOT_OBS_DIM = 15
# scene_obs (24,): slide, drawer, button, switch, lightbulb, led, then xyz + Euler xyz per block (3 blocks).
SCENE_OBS_DIM = 24

# Actions: 6 relative pose deltas in [-1, 1] (scaled below) + a gripper sign.
POSE_DIM = 6
ACTION_DIM = POSE_DIM + 1
POS_SCALE = 0.02  # metres per unit of relative action
ORN_SCALE = 0.05  # radians per unit of relative action
GRIPPER_OPEN = 1
GRIPPER_CLOSE = -1

CONTROL_HZ = 30
EP_LEN = 360  # CALVIN's step budget per subtask (12 s at 30 Hz)

# Home state every episode starts from: tcp pose, gripper width (two fingers open at 0.04 m), joints, gripper open.
HOME_ARM_JOINTS = (-1.21779206, 1.03987646, 2.11978261, -2.34205014, -0.87015947, 1.64119353, 0.55344866)
HOME_TCP_POSE = (0.0259, -0.2313, 0.5713, 3.0905, -0.0291, 1.5001)  # x y z (m), Euler xyz (rad)
HOME_GRIPPER_WIDTH = 0.08
HOME_ROBOT_OBS = np.array([*HOME_TCP_POSE, HOME_GRIPPER_WIDTH, *HOME_ARM_JOINTS, float(GRIPPER_OPEN)])
HOME_ROBOT_OBS.setflags(write=False)


def wrap_angle(angles: np.ndarray | float) -> np.ndarray | float:
    """Angles (or Euler differences) mapped to [-pi, pi): the short way round."""
    return (angles + np.pi) % (2 * np.pi) - np.pi
