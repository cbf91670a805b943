"""Symbolic start conditions to concrete states: slots, yaw jitter, lights, validation."""
from __future__ import annotations

import numpy as np
import pytest

from deer_ros.sim import layout as L
from deer_ros.sim.initial_state import initial_state, random_conditions

CONDITIONS = {'led': 0, 'lightbulb': 1, 'slider': 'right', 'drawer': 'open', 'red_block': 'table',
              'blue_block': 'slider_left', 'pink_block': 'table', 'grasped': 0}


def _block(scene_obs: np.ndarray, scene: str, colour: str) -> np.ndarray:
    index = [c for c, _ in L.get_scene(scene).blocks].index(colour)
    return scene_obs[6 + 6 * index: 12 + 6 * index]


def test_conditions_set_joints_lights_and_slots() -> None:
    _, scene_obs = initial_state(CONDITIONS, np.random.default_rng(0), 'D')
    assert list(scene_obs[:6]) == [0.0, L.DRAWER_TRAVEL, 0.0, L.SWITCH_TRAVEL, 1.0, 0.0]
    np.testing.assert_allclose(_block(scene_obs, 'D', 'blue')[:2], L.SLIDER_SLOTS['slider_left'])
    table = {tuple(_block(scene_obs, 'D', colour)[:2]) for colour in ('red', 'pink')}
    assert table == set(L.TABLE_SLOTS)


def test_table_slots_are_shuffled_and_yaw_jittered_by_the_rng() -> None:
    red_slots, yaws = set(), []
    for seed in range(12):
        _, scene_obs = initial_state(CONDITIONS, np.random.default_rng(seed), 'D')
        red_slots.add(tuple(_block(scene_obs, 'D', 'red')[:2]))
        yaws += [_block(scene_obs, 'D', colour)[5] for colour in ('red', 'blue', 'pink')]
    assert red_slots == set(L.TABLE_SLOTS)
    assert np.pi / 2 - np.pi / 8 <= min(yaws) and max(yaws) <= np.pi / 2 + np.pi / 8
    assert np.std(yaws) > 0.1
    first = initial_state(CONDITIONS, np.random.default_rng(7), 'D')[1]
    np.testing.assert_array_equal(first, initial_state(CONDITIONS, np.random.default_rng(7), 'D')[1])


def test_block_order_follows_the_scene_variant() -> None:
    rng = np.random.default_rng(0)
    _, scene_obs = initial_state(CONDITIONS, rng, 'A')
    np.testing.assert_allclose(_block(scene_obs, 'A', 'blue')[:2], L.SLIDER_SLOTS['slider_left'])
    assert L.get_scene('A').blocks[0][0] == 'pink'


@pytest.mark.parametrize('change', [{'grasped': 1}, {'blue_block': 'table'}, {'red_block': 'slider_left'},
                                    {'pink_block': 'floor'}])
def test_impossible_conditions_raise_value_error(change: dict) -> None:
    with pytest.raises(ValueError):
        initial_state({**CONDITIONS, **change}, np.random.default_rng(0), 'D')


def test_random_conditions_are_valid_calvin_starts() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        conditions = random_conditions(rng)
        places = [conditions[f'{colour}_block'] for colour in ('red', 'blue', 'pink')]
        assert 1 <= places.count('table') <= 2
        initial_state(conditions, rng, 'C')
