"""``TaskMix``: which tasks a collection draws and how often, on the symbolic model alone (no simulator)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from deer_ros.benchmark.chains import SymbolicState, applicable_tasks
from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.expert.task_mix import TaskMix, match_tasks

# LED and bulb off, slider right, drawer closed, red block on the table, blue and pink in the slider's slots.
STATE = SymbolicState(0, 0, 'right', 'closed', 'table', 'slider_left', 'slider_right')


def _draws(mix: TaskMix, seed: int, count: int = 2000) -> Counter:
    rng = np.random.default_rng(seed)
    options = mix.options(STATE)
    return Counter(mix.draw(options, rng)[0] for _ in range(count))


def test_the_default_mix_draws_exactly_as_uniform_collections_did() -> None:
    options = applicable_tasks(STATE, SUPPORTED_TASKS)
    assert TaskMix().options(STATE) == options
    # Explicit equal weights too: the same integer draws, so old seeds record the same demos.
    for mix in (TaskMix(), TaskMix.build(weights={'rotate_*': 2, 'push_*': 2, 'lift_*': 2, 'move_*': 2, 'open_*': 2,
                                                  'turn_*': 2})):
        rng, reference = np.random.default_rng(7), np.random.default_rng(7)
        for _ in range(50):
            assert mix.draw(mix.options(STATE), rng) == options[int(reference.integers(len(options)))]


def test_weights_shift_the_mix_and_zero_excludes() -> None:
    uniform = _draws(TaskMix(), seed=0)
    heavy = TaskMix.build(weights={'rotate_red_block_right': 20, 'turn_on_lightbulb': 0})
    weighted = _draws(heavy, seed=0)
    assert weighted['turn_on_lightbulb'] == 0 < uniform['turn_on_lightbulb']
    share = weighted['rotate_red_block_right'] / sum(weighted.values())
    others = len(heavy.options(STATE)) - 1
    assert share == pytest.approx(20 / (20 + others), abs=0.04) and share > 0.4
    assert _draws(heavy, seed=0) == weighted, 'deterministic with a seed'


def test_tasks_restrict_the_draw_and_patterns_expand() -> None:
    assert match_tasks('lift_*_slider') == ['lift_red_block_slider', 'lift_blue_block_slider',
                                             'lift_pink_block_slider']
    mix = TaskMix.build(['rotate_*', 'lift_*_slider', 'turn_on_lightbulb'], {'lift_*': 3})
    assert set(mix.tasks) == {*match_tasks('rotate_*'), *match_tasks('lift_*_slider'), 'turn_on_lightbulb'}
    assert mix.weights['lift_blue_block_slider'] == 3 and mix.weights['lift_red_block_table'] == 0
    # The door covers the right slot here, so pink cannot be lifted from it.
    assert set(_draws(mix, seed=1, count=200)) == {'rotate_red_block_left', 'rotate_red_block_right',
                                                   'lift_blue_block_slider', 'turn_on_lightbulb'}


def test_reachability_follows_the_symbolic_model() -> None:
    TaskMix().check_reachable(5)
    lift_then_place = TaskMix.build(['lift_*_table', 'place_in_slider'])
    lift_then_place.check_reachable(2)
    with pytest.raises(ValueError, match=r"\['place_in_slider'\] can never be drawn within 1"):
        lift_then_place.check_reachable(1)
    with pytest.raises(ValueError, match='none of the tasks'):
        TaskMix.build(['unstack_block']).check_reachable(5)
