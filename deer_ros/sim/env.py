"""``PlayTableEnv``: the embedded CALVIN-style simulator (pybullet DIRECT, CPU rendering, no GPU needed)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

from deer_ros.calvin_layout import CONTROL_HZ, HOME_ROBOT_OBS, ROBOT_OBS_DIM, SCENE_OBS_DIM
from deer_ros.sim.actions import parse_action
from deer_ros.sim.cameras import GripperCamera, StaticCamera
from deer_ros.sim.initial_state import initial_state, random_conditions
from deer_ros.sim.interface import PHYSICS_HZ, Info, Obs, SimEnv
from deer_ros.sim.layout import get_scene
from deer_ros.sim.robot import Robot, write_panda_urdf
from deer_ros.sim.scene import Scene

SUBSTEPS = PHYSICS_HZ // CONTROL_HZ


def _state(values: np.ndarray | None, size: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        raise ValueError(f'{what} must be {size} finite values, got shape {array.shape}')
    return array


class PlayTableEnv(SimEnv):
    """Panda at a desk with drawer, sliding door, button/LED, switch/bulb and three blocks.

    Every ``reset`` rebuilds the pybullet world, so no contact cache or solver warm start
    survives from the previous episode: the same seed and state give the same observations.
    ``reset()`` without a scene state samples a CALVIN-style start state from the env's seeded rng.
    """

    def __init__(self, scene: str = 'D', seed: int = 0, cameras: bool = True) -> None:
        self.config = get_scene(scene)
        self.rng = np.random.default_rng(seed)
        self._render = cameras
        self.cameras: dict[str, StaticCamera | GripperCamera] = {}
        self._p = BulletClient(connection_mode=pybullet.DIRECT)
        self._tmp = tempfile.TemporaryDirectory(prefix='deer_ros_sim_')
        self._urdf = write_panda_urdf(Path(self._tmp.name) / 'panda.urdf')
        self.robot: Robot
        self.scene: Scene
        self.reset()

    def _build(self) -> None:
        p = self._p
        p.resetSimulation()
        p.setPhysicsEngineParameter(fixedTimeStep=1.0 / PHYSICS_HZ, deterministicOverlappingPairs=1)
        p.setGravity(0, 0, -9.8)
        self.robot = Robot(p, self._urdf)
        self.scene = Scene(p, self.config)
        if self._render:
            floor = self.config.palette['floor']
            self.cameras = {'rgb_static': StaticCamera(p, floor),
                            'rgb_gripper': GripperCamera(p, self.robot.camera_pose, floor)}

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> Obs:
        robot_state = _state(robot_obs, ROBOT_OBS_DIM, 'robot_obs')
        scene_state = _state(scene_obs, SCENE_OBS_DIM, 'scene_obs')
        if scene_state is None:
            scene_state = initial_state(random_conditions(self.rng), self.rng, self.config.name)[1]
        self._build()
        self.robot.reset(HOME_ROBOT_OBS if robot_state is None else robot_state)
        self.scene.reset(scene_state)
        self._p.performCollisionDetection()  # contacts for get_info() before the first step
        return self.get_obs()

    def step(self, action: Any) -> tuple[Obs, float, bool, Info]:
        self.robot.apply(parse_action(action))
        for _ in range(SUBSTEPS):
            self._p.stepSimulation()
        self.scene.step()
        return self.get_obs(), 0.0, False, self.get_info()

    def get_obs(self) -> Obs:
        return {'rgb_obs': {name: camera.render() for name, camera in self.cameras.items()},
                'robot_obs': self.robot.get_obs(), 'scene_obs': self.scene.get_obs()}

    def get_info(self) -> Info:
        return {'robot_info': self.robot.get_info(), 'scene_info': self.scene.get_info()}

    def close(self) -> None:
        if self._p is not None:
            self._p.disconnect()
            self._p = None
            self._tmp.cleanup()
