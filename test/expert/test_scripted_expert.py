"""The scripted expert solves tasks from random starts (a few here; benchmarks/expert_success.py does all)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from deer_ros.expert.plans import SAFE_Z, Waypoint
from deer_ros.expert.scenarios import run_episode, run_task
from deer_ros.expert.scripted_expert import ScriptedExpert, resume_index
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state


@pytest.fixture(scope='module')
def env() -> Iterator[PlayTableEnv]:
    env = PlayTableEnv('D', seed=0, cameras=False)
    yield env
    env.close()


@pytest.mark.parametrize('task, seed', [
    ('open_drawer', 0), ('move_slider_left', 0), ('turn_off_lightbulb', 0), ('rotate_blue_block_left', 0),
    ('lift_pink_block_slider', 1), ('place_in_drawer', 0), ('stack_block', 0), ('push_into_drawer', 1),
])
def test_expert_solves_task_from_a_random_start(env: PlayTableEnv, task: str, seed: int) -> None:
    success, steps = run_episode(env, ScriptedExpert(env), task, np.random.default_rng(seed))
    assert success and steps <= 200


@pytest.mark.parametrize('tasks', [
    ('move_slider_left', 'lift_blue_block_slider'),  # door stops half way, over the block: slid off first
    ('open_drawer', 'lift_red_block_table', 'place_in_drawer'),  # drawer only just 'open': block still goes in
])
def test_expert_continues_from_where_the_previous_task_was_judged_done(env: PlayTableEnv,
                                                                       tasks: tuple[str, ...]) -> None:
    conditions = {'led': 0, 'lightbulb': 0, 'slider': 'right', 'drawer': 'closed', 'red_block': 'table',
                  'blue_block': 'slider_right', 'pink_block': 'slider_left', 'grasped': 0}
    obs = env.reset(*initial_state(conditions, np.random.default_rng(0), 'D'))
    expert = ScriptedExpert(env)
    for task in tasks:
        success, _, obs = run_task(env, expert, task, obs)
        assert success, task


def test_expert_adapts_to_another_scene_layout() -> None:
    with PlayTableEnv('A', seed=0, cameras=False) as env:  # button elsewhere, other block sizes
        for task in ('turn_on_led', 'lift_red_block_table'):
            assert run_episode(env, ScriptedExpert(env), task, np.random.default_rng(0))[0]


def test_actions_are_valid_relative_actions(env: PlayTableEnv) -> None:
    expert = ScriptedExpert(env)
    expert.reset('close_drawer')
    obs = env.reset()
    for _ in range(40):
        action = expert.act(obs)
        assert action.shape == (7,) and np.all(np.abs(action) <= 1.0) and action[6] in (-1.0, 1.0)
        obs, *_ = env.step(action)


def test_expert_rejects_unknown_tasks_and_acting_before_reset(env: PlayTableEnv) -> None:
    expert = ScriptedExpert(env)
    with pytest.raises(RuntimeError):
        expert.act(env.get_obs())
    with pytest.raises(ValueError):
        expert.reset('juggle')


def test_expert_holds_still_when_the_scene_does_not_allow_the_task(env: PlayTableEnv) -> None:
    expert = ScriptedExpert(env)
    expert.reset('unstack_block')  # a fresh start state never has a stack
    obs = env.reset()
    for _ in range(10):  # lifting the hand to travel height comes first
        action = expert.act(obs)
        obs, *_ = env.step(action)
    assert expert.done and np.all(expert.act(obs)[:6] == 0.0)


def test_resume_index_carries_on_along_the_plan_and_not_past_its_bottom() -> None:
    top, press = np.array([0.1, 0.2, 0.58]), np.array([0.1, 0.2, 0.40])
    waypoints = [Waypoint(top, 0.0, -1), Waypoint(press, 0.0, -1), Waypoint(top, 0.0, -1)]
    assert resume_index(waypoints, np.array([0.1, 0.21, 0.5])) == 1, 'half-way down: go on down to the press'
    assert resume_index(waypoints, press) == 1, 'at the bottom of a down-and-up line: the press is still to do'
    assert resume_index(waypoints, np.array([0.3, 0.2, 0.5])) == 0, 'off the plan: start it from the top'


def test_expert_taking_over_on_the_plan_does_not_rise_first(env: PlayTableEnv) -> None:
    conditions = {'led': 0, 'lightbulb': 0, 'slider': 'right', 'drawer': 'closed', 'red_block': 'table',
                  'blue_block': 'slider_right', 'pink_block': 'slider_left', 'grasped': 0}
    obs = env.reset(*initial_state(conditions, np.random.default_rng(0), 'D'))
    expert = ScriptedExpert(env)
    expert.reset('turn_on_led')
    risen = False
    for _ in range(100):  # follow the expert up to its travel height and part of the way down to the button
        obs, *_ = env.step(expert.act(obs))
        risen = risen or obs['robot_obs'][2] > SAFE_Z - 0.005
        if risen and obs['robot_obs'][2] < SAFE_Z - 0.05:
            break
    assert risen and obs['robot_obs'][2] < SAFE_Z - 0.05
    taking_over = ScriptedExpert(env)
    taking_over.reset('turn_on_led', resume=True)
    assert taking_over.act(obs)[2] < 0, 'it carries on down instead of rising to the travel height'
    starting_over = ScriptedExpert(env)
    starting_over.reset('turn_on_led')
    assert starting_over.act(obs)[2] > 0
