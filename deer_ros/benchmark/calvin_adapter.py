"""The real CALVIN simulator (calvin_env's ``PlayTableSimEnv`` and ``Tasks`` oracle) as an evaluation backend.

Lets ``deer-ros evaluate --backend calvin`` score a policy on the original
benchmark env with the same chains, protocol and report as the embedded
simulator. calvin_env is not on any package index and is imported only here,
on first use; install steps are in docs/install.md.

The env is built from a dataset's own ``validation/.hydra/merged_config.yaml``
(the render settings the data was recorded with) when one is given, else from
the same configuration composed from calvin_env's ``conf/``
(:mod:`deer_ros.benchmark.calvin_config`); either way without the tactile camera
(which would pull in tacto), with CPU rendering unless ``use_egl`` is set. Both
load CALVIN's scene D, the scene CALVIN evaluates on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deer_ros.benchmark.calvin_config import evaluation_config
from deer_ros.benchmark.evaluation import Simulator
from deer_ros.sim.interface import Info, Obs, SimEnv

INSTALL_DOCS = 'docs/install.md ("Real CALVIN simulator")'
INSTALL_HINT = f'calvin_env is not installed: it needs a git checkout and `pip install -e`, see {INSTALL_DOCS}'
SCENE = 'D'  # what both config sources load; chains start from the embedded initial_state of the same scene


class CalvinNotInstalledError(ImportError):
    """calvin_env (or hydra/omegaconf, which it is configured with) cannot be imported."""


def _import_calvin() -> tuple[Any, Any, Any]:
    try:
        import calvin_env
        import hydra
        import omegaconf
    except ImportError as error:
        raise CalvinNotInstalledError(f'{INSTALL_HINT} ({error})') from error
    return calvin_env, hydra, omegaconf


def _closed() -> None:
    """Stands in for a closed ``PlayTableSimEnv.close``."""


class CalvinEnv(SimEnv):
    """``PlayTableSimEnv`` with the action handling CALVIN's own evaluation wrapper does.

    The gripper is snapped to +-1 (the env asserts on anything else) and the
    action is copied, because calvin_env 1431a46 scales the caller's array in place.
    """

    def __init__(self, env: Any) -> None:
        self._env = env

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> Obs:
        return self._env.reset(robot_obs=robot_obs, scene_obs=scene_obs)

    def step(self, action: Any) -> tuple[Obs, float, bool, Info]:
        command = np.array(action, dtype=np.float64)
        command[6] = 1.0 if command[6] > 0 else -1.0
        return self._env.step(command)

    def get_obs(self) -> Obs:
        return self._env.get_obs()

    def get_info(self) -> Info:
        return self._env.get_info()

    def close(self) -> None:
        """Close once: ``PlayTableSimEnv.__del__`` calls ``close()`` again, which would disconnect a second time and
        print ``Exception ignored in ... pybullet.error: Not connected to physics server`` at garbage collection."""
        self._env.close()
        self._env.close = _closed


@dataclass(frozen=True)
class CalvinSim:
    """Picklable factory for a real-CALVIN ``Simulator``.

    ``dataset_path``: a CALVIN split root (e.g. ``task_D_D`` or ``calvin_debug_dataset``) holding
    ``validation/.hydra/merged_config.yaml``; ``None``: that configuration composed from calvin_env's ``conf/``.
    ``tasks_config``: the oracle's task yaml; default is ``conf/tasks/new_playtable_tasks.yaml`` in the
    calvin_env checkout. Chains start from the embedded ``initial_state`` of scene D, which uses CALVIN's
    scene-D slots and block order.
    """

    dataset_path: str | None = None
    tasks_config: str | None = None
    use_egl: bool = False

    def check(self) -> None:
        """Raise what building the env would raise for a missing calvin_env or config, before anything starts."""
        calvin_env, _, omegaconf = _import_calvin()
        self._config(calvin_env, omegaconf)

    def _config(self, calvin_env: Any, omegaconf: Any) -> Any:
        """The env configuration, an OmegaConf node."""
        if self.dataset_path is None:
            conf_dir = Path(calvin_env.__file__).parents[1] / 'conf'
            if not conf_dir.is_dir():
                raise CalvinNotInstalledError(f'{conf_dir} not found: calvin_env must be installed from its git '
                                              f'checkout with `pip install -e`, see {INSTALL_DOCS}')
            return omegaconf.OmegaConf.create(evaluation_config(conf_dir))
        config_path = Path(self.dataset_path) / 'validation' / '.hydra' / 'merged_config.yaml'
        if not config_path.is_file():
            raise FileNotFoundError(f'{config_path} not found: dataset_path must be a CALVIN split root')
        config = omegaconf.OmegaConf.load(config_path)
        for owner in (config, config.env):  # cameras are top-level, referenced or copied into env
            cameras = owner.get('cameras')
            if isinstance(cameras, omegaconf.DictConfig) and 'tactile' in cameras:
                del cameras['tactile']
        return config

    def __call__(self) -> Simulator:
        calvin_env, hydra, omegaconf = _import_calvin()
        env = hydra.utils.instantiate(self._config(calvin_env, omegaconf).env, show_gui=False, use_vr=False,
                                      use_scene_info=True, use_egl=self.use_egl)
        tasks_path = Path(self.tasks_config or Path(calvin_env.__file__).parents[1] / 'conf' / 'tasks'
                          / 'new_playtable_tasks.yaml')
        oracle = hydra.utils.instantiate(omegaconf.OmegaConf.load(tasks_path))
        return Simulator(CalvinEnv(env), oracle, SCENE)
