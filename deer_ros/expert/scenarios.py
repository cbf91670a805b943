"""Random single-task episodes: a start state where the task makes sense, and the oracle's verdict.

Used to measure the scripted expert (and any policy) one task at a time. Preconditions mirror
CALVIN's symbolic ones: e.g. ``lift_red_block_slider`` needs the red block in the uncovered cabinet
slot, ``place_in_drawer`` an open drawer and a block in the hand. States CALVIN's start conditions
cannot express (a block in the drawer, a stack, a block in the hand) are made by editing
``scene_obs`` or by first running the expert on a lift task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from deer_ros.benchmark.tasks import TaskOracle
from deer_ros.calvin_layout import EP_LEN
from deer_ros.sim import layout as L
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state, random_conditions

Conditions = dict[str, int | str]


class Policy(Protocol):
    def reset(self, task: str) -> None: ...

    def act(self, obs: dict) -> np.ndarray: ...


def _open_slot(conditions: Conditions) -> str:
    return 'slider_left' if conditions['slider'] == 'right' else 'slider_right'


def _on_table(conditions: Conditions) -> list[str]:
    return [colour for colour in L.BLOCK_RGBA if conditions[f'{colour}_block'] == 'table']


@dataclass(frozen=True)
class Recipe:
    """When a task applies, and how to finish preparing the scene after ``initial_state``."""

    applies: Callable[[Conditions], bool]
    edit: Callable[[Conditions, np.ndarray, L.SceneConfig], None] = lambda conditions, scene_obs, config: None
    setup_task: Callable[[Conditions], str | None] = lambda conditions: None


def _block_slice(config: L.SceneConfig, colour: str) -> slice:
    index = [c for c, _ in config.blocks].index(colour)
    return slice(6 + 6 * index, 12 + 6 * index)


def _into_drawer(colour: str) -> Callable[[Conditions, np.ndarray, L.SceneConfig], None]:
    def edit(conditions: Conditions, scene_obs: np.ndarray, config: L.SceneConfig) -> None:
        centre = L.drawer_centre(scene_obs[1])
        scene_obs[_block_slice(config, colour)][:3] = (centre[0], centre[1], L.resting_z(L.DRAWER_FLOOR))
    return edit


def _stack_first_two(conditions: Conditions, scene_obs: np.ndarray, config: L.SceneConfig) -> None:
    top, bottom = _on_table(conditions)[:2]
    below = scene_obs[_block_slice(config, bottom)]
    scene_obs[_block_slice(config, top)][:3] = (below[0], below[1], L.resting_z(below[2] + L.BLOCK_HEIGHT / 2))


def _recipes() -> dict[str, Recipe]:
    def state(key: str, value: int | str) -> Callable[[Conditions], bool]:
        return lambda conditions: conditions[key] == value

    lift_first = lambda conditions: f'lift_{_on_table(conditions)[0]}_block_table'  # noqa: E731
    recipes = {
        'move_slider_left': Recipe(state('slider', 'right')), 'move_slider_right': Recipe(state('slider', 'left')),
        'open_drawer': Recipe(state('drawer', 'closed')), 'close_drawer': Recipe(state('drawer', 'open')),
        'turn_on_lightbulb': Recipe(state('lightbulb', 0)), 'turn_off_lightbulb': Recipe(state('lightbulb', 1)),
        'turn_on_led': Recipe(state('led', 0)), 'turn_off_led': Recipe(state('led', 1)),
        'place_in_slider': Recipe(lambda c: not any(c[f'{b}_block'] == _open_slot(c) for b in L.BLOCK_RGBA),
                                  setup_task=lift_first),
        'place_in_drawer': Recipe(state('drawer', 'open'), setup_task=lift_first),
        'stack_block': Recipe(lambda c: len(_on_table(c)) == 2, setup_task=lift_first),
        'unstack_block': Recipe(lambda c: len(_on_table(c)) == 2, edit=_stack_first_two),
        'push_into_drawer': Recipe(state('drawer', 'open')),
    }
    for colour in L.BLOCK_RGBA:
        on_table = state(f'{colour}_block', 'table')
        for side in ('left', 'right'):
            recipes[f'rotate_{colour}_block_{side}'] = Recipe(on_table)
            recipes[f'push_{colour}_block_{side}'] = Recipe(on_table)
        recipes[f'lift_{colour}_block_table'] = Recipe(on_table)
        recipes[f'lift_{colour}_block_slider'] = Recipe(
            lambda c, colour=colour: c[f'{colour}_block'] == _open_slot(c))
        # Start from the table so the edit only has to move the block; the drawer must be open.
        recipes[f'lift_{colour}_block_drawer'] = Recipe(
            lambda c, colour=colour: c['drawer'] == 'open' and c[f'{colour}_block'] == 'table',
            edit=_into_drawer(colour))
    return recipes


RECIPES = _recipes()


def sample_start(task: str, rng: np.random.Generator, scene: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(robot_obs, scene_obs, setup task or None) for a random start state where ``task`` applies."""
    recipe = RECIPES[task]
    while True:
        conditions = random_conditions(rng)
        if recipe.applies(conditions):
            break
    robot_obs, scene_obs = initial_state(conditions, rng, scene)
    recipe.edit(conditions, scene_obs, L.get_scene(scene))
    return robot_obs, scene_obs, recipe.setup_task(conditions)


def run_task(env: PlayTableEnv, policy: Policy, task: str, obs: dict,
             max_steps: int = EP_LEN) -> tuple[bool, int, dict]:
    """Roll ``policy`` on ``task`` like calvin's evaluation: success as soon as the oracle reports it.

    Returns (success, steps used, last observation).
    """
    oracle = TaskOracle()
    policy.reset(task)
    start = env.get_info()
    for step in range(1, max_steps + 1):
        obs, _, _, info = env.step(policy.act(obs))
        if oracle.get_task_info_for_set(start, info, {task}):
            return True, step, obs
    return False, max_steps, obs


def run_episode(env: PlayTableEnv, policy: Policy, task: str, rng: np.random.Generator) -> tuple[bool, int]:
    """Sample a start for ``task``, run its setup task with ``policy`` if any, then ``task`` itself.

    A failed setup counts as a failure of ``task``.
    """
    robot_obs, scene_obs, setup = sample_start(task, rng, env.config.name)
    obs = env.reset(robot_obs, scene_obs)
    if setup is not None:
        done, _, obs = run_task(env, policy, setup, obs)
        if not done:
            return False, 0
    success, steps, _ = run_task(env, policy, task, obs)
    return success, steps
