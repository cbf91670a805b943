"""The scripted return to the ready pose: in the embedded simulator, and inside the DeeR chain policy."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN, HOME_ROBOT_OBS, HOME_TCP_POSE
from deer_ros.policy.chain_policy import ChainPolicyFactory
from deer_ros.policy.ready_pose import ReadyPose, ReadyPoseReturn
from deer_ros.resources import resolve_checkpoint
from deer_ros.sim.env import PlayTableEnv

DOWN_AND_CLOSE = np.array([0.6, -0.4, -1.0, 0.0, 0.0, 0.3, -1.0])  # away from home, low, gripper closed on nothing


def _moved_away(env: PlayTableEnv, steps: int = 8) -> dict:
    obs = env.reset()
    for _ in range(steps):
        obs, *_ = env.step(DOWN_AND_CLOSE)
    return obs


@pytest.fixture(scope='module')
def env() -> Iterator[PlayTableEnv]:
    env = PlayTableEnv('D', seed=0, cameras=False)
    yield env
    env.close()


def test_the_default_ready_pose_is_the_simulator_home_pose() -> None:
    np.testing.assert_allclose(HOME_TCP_POSE, HOME_ROBOT_OBS[:6])


def test_return_rises_first_then_reaches_home_with_the_gripper_open(env: PlayTableEnv) -> None:
    obs = _moved_away(env)
    assert obs['robot_obs'][2] < HOME_TCP_POSE[2] - 0.1 and obs['robot_obs'][14] == GRIPPER_CLOSE
    ready = ReadyPoseReturn(ReadyPose())
    ready.start()
    actions = []
    while (action := ready.next_action(obs['robot_obs'])) is not None:
        actions.append(action)
        obs, *_ = env.step(action.as_array())
    assert 0 < len(actions) < ReadyPose().max_steps, 'arrived, not timed out'
    np.testing.assert_array_equal(actions[0].pose[:2], [0.0, 0.0])  # straight up first: no sweep across the table
    assert actions[-1].gripper == GRIPPER_OPEN  # nothing held: opened, as every demo starts
    robot = obs['robot_obs']
    assert np.linalg.norm(robot[:3] - HOME_ROBOT_OBS[:3]) < 0.01
    assert np.abs(robot[3:6] - HOME_ROBOT_OBS[3:6]).max() < 0.05
    assert robot[6] == pytest.approx(HOME_ROBOT_OBS[6], abs=0.005) and robot[14] == GRIPPER_OPEN
    assert ready.next_action(robot) is None, 'the learned policy acts until the next start()'


def test_a_held_block_stays_held() -> None:
    robot = HOME_ROBOT_OBS.copy()
    robot[2] -= 0.2
    robot[14] = GRIPPER_CLOSE
    robot[6] = 0.045  # closed on a block
    assert ReadyPose().action(robot).gripper == GRIPPER_CLOSE
    robot[6] = 0.0  # closed on nothing
    assert ReadyPose().action(robot).gripper == GRIPPER_OPEN


def test_a_blocked_arm_gives_up_after_max_steps() -> None:
    stuck = HOME_ROBOT_OBS.copy()
    stuck[0] += 0.2
    ready = ReadyPoseReturn(ReadyPose(max_steps=3))
    ready.start()
    assert [ready.next_action(stuck) is not None for _ in range(5)] == [True, True, True, False, False]


@pytest.mark.parametrize('kwargs', [{'tcp': (0.0, 0.0, 0.5)}, {'tcp': (0.0, 0.0, np.nan, 0.0, 0.0, 0.0)},
                                    {'max_steps': -1}, {'position_tolerance_m': 0.0}])
def test_bad_ready_poses_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match='ready pose'):
        ReadyPose(**kwargs)


def test_chain_policy_returns_home_before_the_model_acts_and_reports_model_stats_only_for_model_steps() -> None:
    policy = ChainPolicyFactory(str(resolve_checkpoint('tiny')))()
    with PlayTableEnv('D', seed=0) as env:
        obs = _moved_away(env)
        policy.reset()
        stats = []
        for _ in range(40):
            obs, *_ = env.step(policy.step(obs, 'push the button to turn on the green light'))
            stats.append(policy.step_stats())
            if stats[-1]['ready_pose'] == 0.0:
                break
    scripted, model = stats[:-1], stats[-1]
    assert scripted and all(s == {'ready_pose': 1.0} for s in scripted), 'scripted steps carry no model cost'
    assert model['ready_pose'] == 0.0 and model['llm_gflops'] > 0 and 1 <= model['exit'] <= 12
