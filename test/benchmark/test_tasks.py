"""The oracle on real env snapshots: every task is reported when it happened and not otherwise.

Joint, light and block-pose tasks are checked on states set through ``reset`` (contacts come from
the physics engine); tasks whose predicate needs the robot to hold a block are checked along
scripted-expert rollouts.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deer_ros.benchmark.tasks import SUPPORTED_TASKS, TaskOracle
from deer_ros.calvin_layout import HOME_ROBOT_OBS
from deer_ros.expert.scenarios import run_task, sample_start
from deer_ros.expert.scripted_expert import ScriptedExpert
from deer_ros.sim import layout as L
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state

ORACLE = TaskOracle()
CONDITIONS = {'led': 0, 'lightbulb': 0, 'slider': 'right', 'drawer': 'open', 'red_block': 'table',
              'blue_block': 'table', 'pink_block': 'slider_left', 'grasped': 0}


@pytest.fixture(scope='module')
def env() -> Iterator[PlayTableEnv]:
    env = PlayTableEnv('D', seed=0, cameras=False)
    yield env
    env.close()


@pytest.fixture(scope='module')
def start_obs() -> np.ndarray:
    return initial_state(CONDITIONS, np.random.default_rng(0), 'D')[1]


def _info(env: PlayTableEnv, scene_obs: np.ndarray) -> dict:
    env.reset(HOME_ROBOT_OBS, scene_obs)
    return env.get_info()


def _block(scene_obs: np.ndarray, colour: str) -> np.ndarray:
    """A writable view of one block's pose (xyz, Euler xyz) inside ``scene_obs``."""
    index = [c for c, _ in L.get_scene('D').blocks].index(colour)
    return scene_obs[6 + 6 * index: 12 + 6 * index]


def test_all_calvin_tasks_are_supported() -> None:
    assert len(SUPPORTED_TASKS) == len(set(SUPPORTED_TASKS)) == 34
    assert {'open_drawer', 'push_into_drawer', 'stack_block', 'lift_pink_block_drawer'} <= set(SUPPORTED_TASKS)
    with pytest.raises(ValueError, match='unknown tasks'):
        ORACLE.get_task_info_for_set({}, {}, {'fly_away'})


@pytest.mark.parametrize('task, index, before, achieved, short', [
    ('open_drawer', 1, 0.0, 0.2, 0.1), ('close_drawer', 1, 0.22, 0.05, 0.15),
    ('move_slider_left', 0, 0.0, 0.2, 0.1), ('move_slider_right', 0, 0.28, 0.1, 0.2),
    ('turn_on_lightbulb', 3, 0.0, 0.088, 0.03), ('turn_off_lightbulb', 3, 0.088, 0.0, 0.06),
    ('turn_on_led', 5, 0.0, 1.0, 0.0), ('turn_off_led', 5, 1.0, 0.0, 1.0),
])
def test_joint_and_light_tasks(env: PlayTableEnv, start_obs: np.ndarray, task: str, index: int,
                               before: float, achieved: float, short: float) -> None:
    def state(value: float) -> np.ndarray:
        scene_obs = start_obs.copy()
        scene_obs[index] = value
        return scene_obs

    start = _info(env, state(before))
    assert ORACLE.get_task_info(start, _info(env, state(achieved))) == {task}
    assert ORACLE.get_task_info(start, _info(env, state(short))) == set()


def _alone_on_table(colour: str) -> np.ndarray:
    """A start where ``colour`` is the only block on the table, so a 12 cm push hits nothing."""
    others = [c for c in ('red', 'blue', 'pink') if c != colour]
    conditions = {**CONDITIONS, f'{colour}_block': 'table', f'{others[0]}_block': 'slider_left',
                  f'{others[1]}_block': 'slider_right'}
    return initial_state(conditions, np.random.default_rng(0), 'D')[1]


@pytest.mark.parametrize('colour', ['red', 'blue', 'pink'])
@pytest.mark.parametrize('side, sign', [('left', -1), ('right', 1)])
def test_push_needs_the_block_to_slide_on_its_surface(env: PlayTableEnv, colour: str, side: str,
                                                      sign: int) -> None:
    task = f'push_{colour}_block_{side}'
    start_obs = _alone_on_table(colour)
    start = _info(env, start_obs)
    slid, nudged, airborne = start_obs.copy(), start_obs.copy(), start_obs.copy()
    _block(slid, colour)[0] += sign * 0.12
    _block(nudged, colour)[0] += sign * 0.06
    _block(airborne, colour)[[0, 2]] += (sign * 0.12, 0.1)
    assert ORACLE.get_task_info(start, _info(env, slid)) == {task}
    assert ORACLE.get_task_info(start, _info(env, nudged)) == set()
    assert ORACLE.get_task_info_for_set(start, _info(env, airborne), {task}) == set()


@pytest.mark.parametrize('colour', ['red', 'blue', 'pink'])
@pytest.mark.parametrize('side, sign', [('left', 1), ('right', -1)])
def test_rotate_needs_a_yaw_turn_in_place(env: PlayTableEnv, colour: str, side: str, sign: int) -> None:
    task = f'rotate_{colour}_block_{side}'
    start_obs = _alone_on_table(colour)
    start = _info(env, start_obs)
    turned, small, wrong_way, tipped = (start_obs.copy() for _ in range(4))
    _block(turned, colour)[5] += sign * np.radians(70)
    _block(small, colour)[5] += sign * np.radians(40)
    _block(wrong_way, colour)[5] -= sign * np.radians(70)
    pose = _block(tipped, colour)
    pose[3:] = Rotation.from_euler('xyz', [np.pi / 2, 0, pose[5] + sign * np.radians(70)]).as_euler('xyz')
    assert ORACLE.get_task_info(start, _info(env, turned)) == {task}
    for end in (small, wrong_way, tipped):
        assert ORACLE.get_task_info_for_set(start, _info(env, end), {task}) == set()


def test_stack_and_unstack(env: PlayTableEnv, start_obs: np.ndarray) -> None:
    stacked = start_obs.copy()
    blue = _block(stacked, 'blue')
    _block(stacked, 'red')[:3] = (blue[0], blue[1], L.resting_z(blue[2] + L.BLOCK_HEIGHT / 2))
    apart, on_top = _info(env, start_obs), _info(env, stacked)
    assert ORACLE.get_task_info(apart, on_top) == {'stack_block'}
    assert ORACLE.get_task_info(on_top, apart) == {'unstack_block'}
    assert ORACLE.get_task_info(on_top, _info(env, stacked)) == set()
    assert ORACLE.get_task_info(apart, _info(env, start_obs)) == set()


def test_push_into_drawer_needs_a_block_leaving_the_table_for_the_drawer(env: PlayTableEnv,
                                                                        start_obs: np.ndarray) -> None:
    in_drawer = start_obs.copy()
    centre = L.drawer_centre(L.DRAWER_TRAVEL)
    _block(in_drawer, 'red')[:3] = (centre[0], centre[1], L.resting_z(L.DRAWER_FLOOR))
    assert ORACLE.get_task_info(_info(env, start_obs), _info(env, in_drawer)) == {'push_into_drawer'}
    assert ORACLE.get_task_info(_info(env, in_drawer), _info(env, in_drawer)) == set()


def _rollout(env: PlayTableEnv, task: str, obs: dict) -> tuple[dict, list[dict], list[float]]:
    """Start info, then the info and gripper command of every step until the expert is done."""
    expert = ScriptedExpert(env)
    expert.reset(task)
    start, infos, grippers = env.get_info(), [], []
    while not expert.done:
        action = expert.act(obs)
        obs, _, _, info = env.step(action)
        infos.append(info)
        grippers.append(action[6])
    return start, infos, grippers


@pytest.mark.parametrize('task', [f'lift_{colour}_block_{source}' for colour in ('red', 'blue', 'pink')
                                  for source in ('table', 'slider', 'drawer')])
def test_lift_is_reported_once_the_block_is_up_and_held(env: PlayTableEnv, task: str) -> None:
    robot_obs, scene_obs, _ = sample_start(task, np.random.default_rng(1), 'D')
    start, infos, grippers = _rollout(env, task, env.reset(robot_obs, scene_obs))
    grasped = grippers.index(-1.0) + 3  # fingers closing on the block, which still rests on its support
    assert ORACLE.get_task_info(start, infos[grasped]) == set()
    assert task in ORACLE.get_task_info(start, infos[-1])
    other = task.replace('table', 'slider') if 'table' in task else task.replace(task.split('_')[-1], 'table')
    assert ORACLE.get_task_info_for_set(start, infos[-1], {other}) == set()


@pytest.mark.parametrize('task', ['place_in_slider', 'place_in_drawer'])
def test_place_is_reported_after_release_on_the_right_support(env: PlayTableEnv, task: str) -> None:
    robot_obs, scene_obs, setup = sample_start(task, np.random.default_rng(2), 'D')
    lifted, _, obs = run_task(env, ScriptedExpert(env), setup, env.reset(robot_obs, scene_obs))
    assert lifted
    start, infos, grippers = _rollout(env, task, obs)
    released = len(grippers) - grippers[::-1].index(-1.0)  # first step with the gripper opening
    assert all(not ORACLE.get_task_info(start, info) for info in infos[:released])
    assert ORACLE.get_task_info(start, infos[-1]) == {task}
    other = 'place_in_drawer' if task == 'place_in_slider' else 'place_in_slider'
    assert ORACLE.get_task_info_for_set(start, infos[-1], {other}) == set()
