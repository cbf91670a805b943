"""CALVIN's official evaluation list: the 1000 (start state, 5 tasks) sequences every CALVIN paper reports on.

This regenerates, bit for bit, what ``calvin_agent.evaluation.multistep_sequences.get_sequences(1000)``
returns (mees/calvin; the same list DeeR-VLA ships as ``eval_sequences.json``), from CALVIN's own
symbolic model and seeds, without CALVIN installed:

* **Model.** Each task has one or more cases, a condition on the symbolic state (a value, or a
  tuple of allowed values) and the effect it writes; this model is CALVIN's, not the project's
  (:mod:`deer_ros.benchmark.chains` has other rules). A sequence is valid when every task has
  exactly one applicable case in turn and no two tasks share a category.
* **Start states.** The 192 combinations of CALVIN's conditions (in CALVIN's order) with 1-2 blocks
  on the table and at most one block per cabinet slot; the first ``1000 % 192`` get one sequence more.
* **Sampling.** For start state ``i``, numpy's legacy ``RandomState(i)`` draws 5 distinct tasks
  (``choice(tasks, 5, replace=False)``, which is ``permutation(34)[:5]``) until that state has its
  share of valid sequences. The task order of :data:`TASKS` is CALVIN's dict order, since the draws
  index into it. CALVIN runs the states in a process pool, but each worker reseeds, so the pool
  changes nothing.
* **Order.** The whole list is shuffled by ``RandomState(0)``.

The legacy ``RandomState`` stream is frozen by numpy's compatibility policy (NEP 19), which is what
makes the list reproducible. :data:`SEQUENCES_SHA256` pins the result.

:func:`start_state` is CALVIN's ``get_env_state_for_initial_condition``: the scene-D robot and block
poses CALVIN resets to for a start state, with its legacy RNG seeded as pyhash seeds it (:func:`calvin_seed`).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

from deer_ros.benchmark.chains import CHAIN_LENGTH, Chain, SymbolicState, fnv1_32
from deer_ros.benchmark.language import BLOCK_COLOURS

NUM_SEQUENCES = 1000
SEQUENCES_SHA256 = '13bc4fad80a302e6405e5f4f800cc028789a245409cd12df39b783099ad4860f'
"""sha256 (:func:`sequences_digest`) of ``get_sequences(1000)``; DeeR-VLA's ``eval_sequences.json`` gives the same."""

Value = Union[int, str]
Condition = Mapping[str, Union[Value, tuple[str, ...]]]  # a tuple: any of these values
Effect = Mapping[str, Value]
State = dict[str, Value]


@dataclass(frozen=True)
class Task:
    """A task of CALVIN's symbolic model: its category and its (condition, effect) cases."""

    category: str
    cases: tuple[tuple[Condition, Effect], ...]


def _toggle(category: str, key: str, before: Value, after: Value) -> Task:
    return Task(category, (({key: before, 'grasped': 0}, {key: after}),))


def _build_tasks() -> dict[str, Task]:
    """CALVIN's tasks in CALVIN's order, each with CALVIN's cases; category names stand for CALVIN's numbers."""
    blocks = [f'{colour}_block' for colour in BLOCK_COLOURS]
    tasks: dict[str, Task] = {}
    for verb in ('rotate', 'push'):  # one category for both: a chain moves a table block at most once
        for block in blocks:
            for side in ('right', 'left'):
                tasks[f'{verb}_{block}_{side}'] = Task('table_block', (({block: 'table', 'grasped': 0},
                                                                         {block: 'table'}),))
    tasks['move_slider_left'] = _toggle('slider', 'slider', 'right', 'left')
    tasks['move_slider_right'] = _toggle('slider', 'slider', 'left', 'right')
    tasks['open_drawer'] = _toggle('drawer', 'drawer', 'closed', 'open')
    tasks['close_drawer'] = _toggle('drawer', 'drawer', 'open', 'closed')
    for block in blocks:
        lifted = {block: 'grasped', 'grasped': 1}
        tasks[f'lift_{block}_table'] = Task('lift_table', (({block: 'table', 'grasped': 0}, lifted),))
        tasks[f'lift_{block}_slider'] = Task('lift_slider', (  # a slot is open when the door is on the other side
            ({block: 'slider_left', 'slider': 'right', 'grasped': 0}, lifted),
            ({block: 'slider_right', 'slider': 'left', 'grasped': 0}, lifted)))
        tasks[f'lift_{block}_drawer'] = Task('lift_drawer', (({block: 'drawer', 'drawer': 'open', 'grasped': 0},
                                                              lifted),))
    # CALVIN's rule as it stands: the block lands in the slot on the side the door is on
    tasks['place_in_slider'] = Task('place', tuple(
        ({block: 'grasped', 'slider': side, 'grasped': 1}, {block: f'slider_{side}', 'grasped': 0})
        for block in blocks for side in ('right', 'left')))
    tasks['place_in_drawer'] = Task('place', tuple(
        ({block: 'grasped', 'drawer': 'open', 'grasped': 1}, {block: 'drawer', 'grasped': 0}) for block in blocks))
    pairs = [(top, bottom) for top in blocks for bottom in blocks if top != bottom]
    tasks['stack_block'] = Task('stack', tuple(
        ({top: 'grasped', bottom: 'table', 'grasped': 1}, {top: 'stacked_top', bottom: 'stacked_bottom', 'grasped': 0})
        for top, bottom in pairs))
    tasks['unstack_block'] = Task('unstack', tuple(
        ({top: 'stacked_top', bottom: 'stacked_bottom', 'grasped': 0}, {top: 'table', bottom: 'table'})
        for top, bottom in pairs))
    for light in ('lightbulb', 'led'):  # both lights share a category
        tasks[f'turn_on_{light}'] = _toggle('light', light, 0, 1)
        tasks[f'turn_off_{light}'] = _toggle('light', light, 1, 0)
    tasks['push_into_drawer'] = Task('push_into_drawer', tuple(
        ({block: 'table', **{other: ('slider_right', 'slider_left') for other in blocks if other != block},
          'drawer': 'open', 'grasped': 0}, {block: 'drawer', 'grasped': 0}) for block in blocks))
    return tasks


TASKS: dict[str, Task] = _build_tasks()
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
"""CALVIN's task order: the sampler's draws are indices into it."""

CONDITIONS: dict[str, tuple[Value, ...]] = {
    'led': (0, 1), 'lightbulb': (0, 1), 'slider': ('right', 'left'), 'drawer': ('closed', 'open'),
    **{f'{colour}_block': ('table', 'slider_right', 'slider_left') for colour in BLOCK_COLOURS}, 'grasped': (0,)}
"""CALVIN's start conditions, in its order (which fixes the order of the start states, and so their seeds)."""


def initial_states() -> list[State]:
    """CALVIN's 192 start states: 1-2 blocks on the table, at most one block per cabinet slot."""
    states = []
    for values in itertools.product(*CONDITIONS.values()):
        if values.count('table') in (1, 2) and values.count('slider_right') < 2 and values.count('slider_left') < 2:
            states.append(dict(zip(CONDITIONS, values)))
    return states


def next_states(state: Mapping[str, Value], task: str) -> list[State]:
    """The state after ``task`` for each case whose condition holds (CALVIN's ``valid_task``)."""
    return [{**state, **effect} for condition, effect in TASKS[task].cases
            if all(state[key] in want if isinstance(want, tuple) else state[key] == want
                   for key, want in condition.items())]


@functools.lru_cache(maxsize=None)
def _step(state: tuple[tuple[str, Value], ...], task: int) -> tuple[tuple[str, Value], ...] | None:
    """The unique next state after ``TASK_NAMES[task]``, None when no or several cases apply."""
    nexts = next_states(dict(state), TASK_NAMES[task])
    return tuple(nexts[0].items()) if len(nexts) == 1 else None


def _valid(state: tuple[tuple[str, Value], ...], tasks: Sequence[int]) -> bool:
    for task in tasks:
        state = _step(state, task)
        if state is None:
            return False
    categories = [TASKS[TASK_NAMES[task]].category for task in tasks]
    return len(set(categories)) == len(categories)


def is_valid_sequence(state: Mapping[str, Value], tasks: Sequence[str]) -> bool:
    """CALVIN's ``check_sequence``: each task leads to exactly one state in turn, and categories never repeat."""
    return _valid(tuple(state.items()), [TASK_NAMES.index(task) for task in tasks])


def _draw_sequences(state: State, count: int, seed: int) -> list[tuple[str, ...]]:
    """CALVIN's ``get_sequences_for_state2``: rejection sampling of distinct 5-task draws under ``seed``.

    ``choice(TASK_NAMES, 5, replace=False)`` of the legacy RandomState is the head of a permutation of
    all indices, and shuffling a list makes the same swaps from the same draws as ``permutation`` does,
    only faster. Duplicates are kept, as in CALVIN.
    """
    rng, key, found = np.random.RandomState(seed), tuple(state.items()), []
    indices = list(range(len(TASK_NAMES)))
    can_start = {index for index in indices if _step(key, index) is not None}  # rejects most draws at once
    while len(found) < count:
        order = indices.copy()
        rng.shuffle(order)
        if order[0] in can_start and _valid(key, order[:CHAIN_LENGTH]):
            found.append(tuple(TASK_NAMES[index] for index in order[:CHAIN_LENGTH]))
    return found


@functools.lru_cache(maxsize=None)
def _sequences(num_sequences: int) -> tuple[tuple[tuple[tuple[str, Value], ...], tuple[str, ...]], ...]:
    states = initial_states()
    share, extra = divmod(num_sequences, len(states))  # np.array_split's sizes: the first ``extra`` get one more
    items = []
    for index, state in enumerate(states):
        items += [(tuple(state.items()), tasks) for tasks in _draw_sequences(state, share + (index < extra), index)]
    order = np.random.RandomState(0).permutation(len(items))  # the same swaps as CALVIN's shuffle of the list
    return tuple(items[i] for i in order)


def get_sequences(num_sequences: int = NUM_SEQUENCES) -> list[tuple[State, tuple[str, ...]]]:
    """CALVIN's ``get_sequences(num_sequences)``: (start state, tasks) pairs, in CALVIN's order.

    Generating 1000 takes ~15 s on one core; the result is cached for the process.
    """
    if num_sequences < 0:
        raise ValueError(f'num_sequences must be >= 0, got {num_sequences}')
    return [(dict(state), tasks) for state, tasks in _sequences(num_sequences)]


def official_chains(num_sequences: int = NUM_SEQUENCES) -> list[Chain]:
    """:func:`get_sequences` as the evaluator's chains, in the same order."""
    return [Chain(SymbolicState.from_conditions(state), tasks) for state, tasks in get_sequences(num_sequences)]


def sequences_digest(sequences: Sequence[tuple[Mapping[str, Value], Sequence[str]]]) -> str:
    """sha256 of the list's JSON with sorted keys, so a file of it (e.g. DeeR's ``eval_sequences.json``,
    whatever its indentation) gives the same digest once loaded."""
    payload = json.dumps([[dict(state), list(tasks)] for state, tasks in sequences], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


EVAL_ROBOT_OBS = np.array([0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
                           -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0])
"""The robot state CALVIN's evaluation resets to (``calvin_layout.HOME_ROBOT_OBS`` is its rounded dataset twin)."""
_SLIDER_SLOT_POS = {'slider_left': (-2.40851662e-01, 9.24044687e-02, 4.60990009e-01),
                    'slider_right': (7.03416330e-02, 9.24044687e-02, 4.60990009e-01)}
_TABLE_SLOT_POS = ((5.00000896e-02, -1.20000177e-01, 4.59990009e-01), (2.29995412e-01, -1.19995140e-01, 4.59990010e-01))
_YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)


def calvin_seed(state: SymbolicState) -> int:
    """CALVIN's seed for a start state: ``pyhash.fnv1_32()(str(conditions.values()))``.

    pyhash (0.9.x) starts FNV-1 from its seed, 0 by default, not from FNV's offset basis, and hashes a
    ``str`` as its UTF-16-LE bytes (its own test vectors: ``b'test'`` -> 3698262380, ``'test'`` -> 3910690890).
    """
    return fnv1_32(str(state.conditions().values()).encode('utf-16-le'), start=0)


def start_state(state: SymbolicState) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs, scene_obs) CALVIN resets to for a start state: its ``get_env_state_for_initial_condition``.

    Scene D's poses; the legacy RNG is seeded with :func:`calvin_seed`, shuffles the two table slots,
    then draws one yaw per block (red, blue, pink), wherever the block is. Table slots go as CALVIN
    assigns them: red takes the first, blue the second if red is on the table (else the first), pink
    the second.
    """
    conditions = state.conditions()
    rng = np.random.RandomState(calvin_seed(state))
    table = list(_TABLE_SLOT_POS)
    rng.shuffle(table)
    scene_obs = np.zeros(24)
    scene_obs[0] = 0.28 if conditions['slider'] == 'left' else 0.0
    scene_obs[1] = 0.22 if conditions['drawer'] == 'open' else 0.0
    scene_obs[3] = 0.088 if conditions['lightbulb'] == 1 else 0.0
    scene_obs[4], scene_obs[5] = conditions['lightbulb'], conditions['led']
    table_slot = {'red': 0, 'blue': 1 if conditions['red_block'] == 'table' else 0, 'pink': 1}
    for offset, colour in zip((6, 12, 18), ('red', 'blue', 'pink')):
        place = conditions[f'{colour}_block']
        scene_obs[offset:offset + 3] = table[table_slot[colour]] if place == 'table' else _SLIDER_SLOT_POS[place]
        scene_obs[offset + 5] = rng.uniform(*_YAW_RANGE)
    return EVAL_ROBOT_OBS.copy(), scene_obs
