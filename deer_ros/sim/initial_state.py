"""CALVIN-style symbolic start conditions turned into concrete robot/scene states.

The conditions are calvin's vocabulary (``led``, ``lightbulb``, ``slider``, ``drawer``, one place per
block, ``grasped``); blocks on the table take CALVIN's two table slots in shuffled order and every
block gets a yaw drawn from U(pi/2 - pi/8, pi/2 + pi/8), both from the caller's rng, so a chain's
start state is reproducible from its seed.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from deer_ros.calvin_layout import HOME_ROBOT_OBS, SCENE_OBS_DIM
from deer_ros.sim import layout as L

BLOCK_PLACES = ('table', 'slider_left', 'slider_right')
YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)


def _check(conditions: Mapping[str, int | str], colours: list[str]) -> None:
    if int(conditions.get('grasped', 0)) != 0:
        raise ValueError('initial states with a grasped block are not supported (calvin never starts that way)')
    places = [conditions[f'{colour}_block'] for colour in colours]
    unknown = set(places) - set(BLOCK_PLACES)
    if unknown:
        raise ValueError(f'unknown block places {sorted(unknown)}; choose from {BLOCK_PLACES}')
    if places.count('table') > len(L.TABLE_SLOTS):
        raise ValueError(f'at most {len(L.TABLE_SLOTS)} blocks fit on the table, got {places.count("table")}')
    for slot in L.SLIDER_SLOTS:
        if places.count(slot) > 1:
            raise ValueError(f'two blocks cannot share {slot}')


def initial_state(conditions: Mapping[str, int | str], rng: np.random.Generator,
                  scene: str) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs, scene_obs) for symbolic ``conditions`` in scene variant ``scene``."""
    config = L.get_scene(scene)
    colours = [colour for colour, _ in config.blocks]
    _check(conditions, colours)
    lightbulb = int(conditions['lightbulb'])
    scene_obs = np.zeros(SCENE_OBS_DIM)
    scene_obs[0] = L.SLIDE_TRAVEL if conditions['slider'] == 'left' else 0.0
    scene_obs[1] = L.DRAWER_TRAVEL if conditions['drawer'] == 'open' else 0.0
    scene_obs[3] = L.SWITCH_TRAVEL if lightbulb else 0.0
    scene_obs[4] = lightbulb
    scene_obs[5] = int(conditions['led'])
    table_slots = [L.TABLE_SLOTS[i] for i in rng.permutation(len(L.TABLE_SLOTS))]
    for i, colour in enumerate(colours):
        place = conditions[f'{colour}_block']
        if place == 'table':
            (x, y), surface = table_slots.pop(0), L.TABLE_TOP
        else:
            (x, y), surface = L.SLIDER_SLOTS[place], L.PLANK_TOP
        scene_obs[6 + 6 * i: 12 + 6 * i] = (x, y, L.resting_z(surface), 0.0, 0.0, rng.uniform(*YAW_RANGE))
    return HOME_ROBOT_OBS.copy(), scene_obs


def random_conditions(rng: np.random.Generator) -> dict[str, int | str]:
    """A uniformly drawn valid start condition: 1-2 blocks on the table, at most one per cabinet slot."""
    while True:
        places = [BLOCK_PLACES[i] for i in rng.integers(len(BLOCK_PLACES), size=len(L.BLOCK_RGBA))]
        if 1 <= places.count('table') <= 2 and all(places.count(slot) <= 1 for slot in L.SLIDER_SLOTS):
            break
    return {'led': int(rng.integers(2)), 'lightbulb': int(rng.integers(2)),
            'slider': ('right', 'left')[rng.integers(2)], 'drawer': ('closed', 'open')[rng.integers(2)],
            **{f'{colour}_block': place for colour, place in zip(L.BLOCK_RGBA, places)}, 'grasped': 0}
