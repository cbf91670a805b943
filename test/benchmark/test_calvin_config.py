"""CALVIN's evaluation env config composed from calvin_env's conf/: checked on a copy of its conf files
(fixtures/calvin_env_conf, calvin_env 797142c, MIT), against hydra where hydra is installed, and as a real env
where calvin_env is."""
from __future__ import annotations

import gc
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deer_ros.benchmark.calvin_config import DATA_COLLECTION, EVALUATION_CHOICES, RENDERING, compose, evaluation_config

FIXTURE = Path(__file__).parent / 'fixtures' / 'calvin_env_conf'
CALVIN_ENV_MISSING = ('calvin_env is not installed (a git checkout installed with pip install -e, docs/install.md): '
                      'the composition is checked on the fixture copy of its conf/ only')
# PlayTableSimEnv.__init__'s parameters (calvin_env/envs/play_table_env.py), all given by the config's env node.
ENV_PARAMETERS = {'robot_cfg', 'seed', 'use_vr', 'bullet_time_step', 'cameras', 'show_gui', 'scene_cfg',
                  'use_scene_info', 'use_egl', 'control_freq'}


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A calvin_env conf/ folder laid out as in its checkout."""
    return Path(shutil.copytree(FIXTURE, tmp_path / 'calvin_env' / 'conf'))


def _interpolations(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [found for value in node.values() for found in _interpolations(value)]
    if isinstance(node, list):
        return [found for value in node for found in _interpolations(value)]
    return re.findall(r'\$\{([^}]+)\}', node) if isinstance(node, str) else []


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split('.'):
        node = node[key]
    return node


def test_the_composed_config_has_the_evaluation_cameras_scene_and_robot(conf_dir):
    config = evaluation_config(conf_dir)
    cameras = config['cameras']
    assert set(cameras) == {'static', 'gripper'}  # the rendering config's default is static + tactile
    assert (cameras['static']['width'], cameras['static']['height'], cameras['static']['fov']) == (200, 200, 10)
    assert (cameras['gripper']['width'], cameras['gripper']['height'], cameras['gripper']['fov']) == (84, 84, 75)
    assert cameras['gripper']['_target_'] == 'calvin_env.camera.gripper_camera.GripperCamera'
    assert 'tactile' not in yaml.safe_dump(config)  # nothing would import tacto

    scene = config['scene']
    assert scene['_target_'] == 'calvin_env.scene.play_table_scene.PlayTableScene'
    assert scene['objects']['fixed_objects']['table']['file'] == 'calvin_table_D/urdf/calvin_table_D.urdf'
    assert list(scene['objects']['movable_objects']) == ['block_red', 'block_blue', 'block_pink']  # scene D order
    assert {'data_path', 'global_scaling', 'euler_obs', 'surfaces', 'objects'} <= set(scene)

    robot = config['robot']  # panda_longer_finger over its base config panda
    assert robot['_target_'] == 'calvin_env.robot.robot.Robot'
    assert robot['filename'] == 'franka_panda/panda_longer_finger.urdf'
    assert (robot['tcp_link_id'], robot['gripper_joint_ids'], robot['end_effector_link_id']) == (15, [9, 11], 7)
    assert robot['arm_joint_ids'] == list(range(7)) and robot['use_target_pose'] and robot['euler_obs']


def test_the_env_node_gives_every_play_table_sim_env_parameter(conf_dir):
    config = evaluation_config(conf_dir)
    env = config['env']
    assert env['_target_'] == 'calvin_env.envs.play_table_env.PlayTableSimEnv' and env['_recursive_'] is False
    assert set(env) - {'_target_', '_recursive_'} == ENV_PARAMETERS
    assert (env['cameras'], env['robot_cfg'], env['scene_cfg']) == ('${cameras}', '${robot}', '${scene}')
    assert (env['bullet_time_step'], env['control_freq'], env['use_vr']) == (240.0, 30, False)
    assert env['show_gui'] == '${show_gui}' and config['show_gui'] is False  # from the rendering config
    assert config['data_path'] == 'data'  # the checkout's data/, where calvin_env finds its assets
    assert 'hydra' not in config and '???' not in yaml.safe_dump(config)


def test_every_interpolation_points_at_a_value(conf_dir):
    config = evaluation_config(conf_dir)
    found = _interpolations(config)
    assert {'cameras', 'robot', 'scene', 'scene.robot_base_position', 'robot.euler_obs', 'data_path'} <= set(found)
    for dotted in found:
        assert _lookup(config, dotted) is not None, dotted


def test_a_folder_that_is_not_calvin_env_conf_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='config_data_collection.yaml not found: not a calvin_env conf/'):
        evaluation_config(tmp_path)


def test_composition_matches_hydra():
    """Against hydra's own compose and OmegaConf's merge (hydra comes with calvin_env)."""
    if importlib.util.find_spec('hydra') is None:
        pytest.skip('hydra is not installed (it comes with calvin_env): compared with hydra only where it is')
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    overrides = {DATA_COLLECTION: [f'{group}={option}' for group, option in EVALUATION_CHOICES.items()],
                 RENDERING: [f'cameras={EVALUATION_CHOICES["cameras"]}']}  # its only group: hydra refuses others
    with initialize_config_dir(config_dir=str(FIXTURE.resolve()), version_base=None):
        composed = {name: OmegaConf.to_container(hydra_compose(name, overrides=overrides[name]))
                    for name in (DATA_COLLECTION, RENDERING)}
    merged = OmegaConf.to_container(OmegaConf.merge(*composed.values()))

    def comparable(config: dict[str, Any]) -> dict[str, Any]:
        # vr_input's `@package _group_` header: hydra >= 1.2 reads it literally (see calvin_config's docstring)
        return {k: v for k, v in config.items() if k not in ('vr_input', '_group_', 'hydra') and v != '???'}

    assert comparable(compose(FIXTURE, DATA_COLLECTION, EVALUATION_CHOICES)) == comparable(composed[DATA_COLLECTION])
    assert comparable(compose(FIXTURE, RENDERING, EVALUATION_CHOICES)) == comparable(composed[RENDERING])
    assert comparable(evaluation_config(FIXTURE)) == comparable(merged)


@pytest.mark.skipif(importlib.util.find_spec('calvin_env') is None, reason=CALVIN_ENV_MISSING)
def test_calvin_env_builds_its_evaluation_env_without_a_dataset(monkeypatch):
    """The real PlayTableSimEnv from the composed config: two cameras, no tactile sensor, a clean close."""
    from deer_ros.benchmark.calvin_adapter import CalvinSim

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
    sim = CalvinSim()()
    try:
        obs = sim.env.get_obs()
        assert obs['rgb_obs']['rgb_static'].shape == (200, 200, 3)
        assert obs['rgb_obs']['rgb_gripper'].shape == (84, 84, 3)
        assert set(obs['rgb_obs']) == {'rgb_static', 'rgb_gripper'}
        assert obs['robot_obs'].shape == (15,) and obs['scene_obs'].shape == (24,)
        assert sim.scene == 'D'
    finally:
        sim.env.close()
    del sim, obs
    gc.collect()
    assert unraisable == []  # PlayTableSimEnv.__del__ found nothing left to close
