"""The embedded env's contract: CALVIN obs layout, action semantics, validation, determinism, variants."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from deer_ros.calvin_layout import HOME_ROBOT_OBS, ORN_SCALE, POS_SCALE
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state

CONDITIONS = {'led': 1, 'lightbulb': 1, 'slider': 'left', 'drawer': 'open', 'red_block': 'table',
              'blue_block': 'slider_right', 'pink_block': 'table', 'grasped': 0}


@pytest.fixture(scope='module')
def env() -> Iterator[PlayTableEnv]:
    env = PlayTableEnv('D', seed=0, cameras=False)
    yield env
    env.close()


def _start(scene: str = 'D') -> tuple[np.ndarray, np.ndarray]:
    return initial_state(CONDITIONS, np.random.default_rng(3), scene)


def _move(x: float = 0.0, yaw: float = 0.0, gripper: float = 1.0) -> np.ndarray:
    return np.array([x, 0.0, 0.0, 0.0, 0.0, yaw, gripper])


def test_observation_layout_matches_calvin() -> None:
    with PlayTableEnv('D', seed=0) as env:
        obs = env.reset(*_start())
        obs, reward, done, info = env.step(_move())
    assert obs['rgb_obs']['rgb_static'].shape == (200, 200, 3)
    assert obs['rgb_obs']['rgb_gripper'].shape == (84, 84, 3)
    assert obs['rgb_obs']['rgb_static'].dtype == obs['rgb_obs']['rgb_gripper'].dtype == np.uint8
    assert obs['robot_obs'].shape == (15,) and obs['robot_obs'].dtype == np.float64
    assert obs['scene_obs'].shape == (24,) and obs['scene_obs'].dtype == np.float64
    assert (reward, done) == (0.0, False)
    assert set(info) == {'robot_info', 'scene_info'}
    assert set(info['scene_info']) == {'fixed_objects', 'movable_objects', 'doors', 'buttons', 'switches', 'lights'}
    assert set(info['scene_info']['movable_objects']) == {'block_red', 'block_blue', 'block_pink'}


def test_reset_restores_the_given_state(env: PlayTableEnv) -> None:
    robot_obs, scene_obs = _start()
    obs = env.reset(robot_obs, scene_obs)
    np.testing.assert_allclose(obs['scene_obs'], scene_obs, atol=1e-6)
    np.testing.assert_allclose(obs['robot_obs'][6:], robot_obs[6:], atol=1e-6)
    # The tcp pose recorded in calvin's reset robot_obs is what its joints give on this robot too.
    np.testing.assert_allclose(obs['robot_obs'][:6], HOME_ROBOT_OBS[:6], atol=1e-3)
    lights = env.get_info()['scene_info']['lights']
    assert lights['lightbulb']['logical_state'] == 1 and lights['led']['logical_state'] == 1


def test_relative_actions_accumulate_on_the_target_not_the_measured_pose(env: PlayTableEnv) -> None:
    env.reset(*_start())
    start = env.robot.target_position.copy()
    start_yaw = env.robot.target_euler[2]
    for _ in range(3):
        env.step(_move(x=1.0, yaw=0.5))
    # The arm lags behind a 2 cm/step target, yet the target moved by exactly 3 full steps.
    np.testing.assert_allclose(env.robot.target_position - start, [3 * POS_SCALE, 0, 0], atol=1e-12)
    assert env.robot.target_euler[2] - start_yaw == pytest.approx(3 * 0.5 * ORN_SCALE)
    for _ in range(15):
        obs, *_ = env.step(_move())
    np.testing.assert_allclose(obs['robot_obs'][:3], env.robot.target_position, atol=3e-3)


def test_pose_components_are_clipped_and_gripper_is_a_sign(env: PlayTableEnv) -> None:
    env.reset(*_start())
    start = env.robot.target_position.copy()
    obs, *_ = env.step(_move(x=7.5, gripper=-0.2))
    np.testing.assert_allclose(env.robot.target_position - start, [POS_SCALE, 0, 0], atol=1e-12)
    assert obs['robot_obs'][14] == -1.0


def test_absolute_actions_set_the_target(env: PlayTableEnv) -> None:
    env.reset(*_start())
    goal = HOME_ROBOT_OBS[:3] + [0.05, 0.03, -0.04]
    for _ in range(20):
        obs, *_ = env.step((goal, HOME_ROBOT_OBS[3:6], (1,)))
    np.testing.assert_allclose(obs['robot_obs'][:3], goal, atol=3e-3)


@pytest.mark.parametrize('action', [
    np.full(7, np.nan), np.array([0, 0, np.inf, 0, 0, 0, 1.0]), np.zeros(6), np.zeros(8), 'open', None,
    (np.zeros(3), np.zeros(2), (1,)),
])
def test_bad_actions_raise_value_error(env: PlayTableEnv, action: object) -> None:
    with pytest.raises(ValueError):
        env.step(action)


def test_bad_states_raise_value_error(env: PlayTableEnv) -> None:
    with pytest.raises(ValueError):
        env.reset(scene_obs=np.zeros(23))
    with pytest.raises(ValueError):
        env.reset(robot_obs=np.full(15, np.nan))


def _rollout(env: PlayTableEnv, robot_obs: np.ndarray, scene_obs: np.ndarray) -> list[np.ndarray]:
    obs = env.reset(robot_obs, scene_obs)
    frames = [obs['rgb_obs']['rgb_static'], obs['rgb_obs']['rgb_gripper']]
    for step in range(12):
        obs, *_ = env.step(_move(x=np.sin(step), yaw=np.cos(step), gripper=(-1) ** step))
    return frames + [obs['robot_obs'], obs['scene_obs'], obs['rgb_obs']['rgb_static'], obs['rgb_obs']['rgb_gripper']]


def test_same_seed_and_state_give_identical_observations() -> None:
    with PlayTableEnv('D', seed=5) as first, PlayTableEnv('D', seed=5) as second:
        np.testing.assert_array_equal(first.get_obs()['scene_obs'], second.get_obs()['scene_obs'])
        state = _start()
        runs = [_rollout(first, *state), _rollout(second, *state), _rollout(first, *state)]
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            np.testing.assert_array_equal(a, b)


def test_reset_without_state_samples_from_the_seeded_rng(env: PlayTableEnv) -> None:
    starts = [PlayTableEnv('D', seed=seed, cameras=False) for seed in (1, 1, 2)]
    states = [e.get_obs()['scene_obs'] for e in starts]
    for e in starts:
        e.close()
    np.testing.assert_array_equal(states[0], states[1])
    assert not np.array_equal(states[0], states[2])


def test_scene_variants_differ_in_looks_and_block_order() -> None:
    obs, names = {}, {}
    for scene in ('A', 'D'):
        with PlayTableEnv(scene, seed=0) as env:
            obs[scene] = env.reset(*_start(scene))
            names[scene] = list(env.get_info()['scene_info']['movable_objects'])
            assert names[scene] == [f'block_{colour}' for colour, _ in env.config.blocks]
    assert names['A'] == ['block_pink', 'block_blue', 'block_red']  # scene_obs order, as in CALVIN's A
    assert names['D'] == ['block_red', 'block_blue', 'block_pink']
    difference = np.abs(obs['A']['rgb_obs']['rgb_static'].astype(int) - obs['D']['rgb_obs']['rgb_static'])
    assert (difference.sum(axis=-1) > 60).mean() > 0.2
    with pytest.raises(ValueError, match='unknown scene'):
        PlayTableEnv('Z')


def test_switch_drives_the_bulb_and_each_button_press_toggles_the_led(env: PlayTableEnv) -> None:
    robot_obs, scene_obs = _start()
    scene_obs[3] = 0.0  # switch off although the conditions said lightbulb on
    env.reset(robot_obs, scene_obs)
    lights = env.get_info()['scene_info']['lights']
    assert lights['lightbulb']['logical_state'] == 0
    led = lights['led']['logical_state']
    button = env.config.button_top()
    hover = (button + [0, 0, 0.04], np.array([np.pi, 0.0, 1.5]), (-1,))
    press = (button + [0, 0, -0.008], np.array([np.pi, 0.0, 1.5]), (-1,))
    history = []
    for target in [hover] * 25 + [press] * 10 + [hover] * 10 + [press] * 10 + [hover] * 10:
        _, _, _, info = env.step(target)
        history.append(info['scene_info']['lights']['led']['logical_state'])
    assert history[30] == 1 - led and history[-1] == led  # toggled once per press, held in between
    assert len([i for i in range(1, len(history)) if history[i] != history[i - 1]]) == 2
