"""Deterministic 5-instruction evaluation chains over a symbolic model of the CALVIN scene.

CALVIN's long-horizon benchmark samples, per symbolic initial state, chains of
tasks whose preconditions hold one after another, so a policy is never asked
for something impossible (lifting a block that sits behind the closed door).
This module keeps a small symbolic world model (lights, door, drawer, where
each block is), the precondition/effect of every task on it, and a seeded,
fully deterministic chain generator. A task is applicable only when its effect
is unambiguous (exactly one successor state), so every chain determines the
symbolic state the scene should be in after each step.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from deer_ros.benchmark.language import BLOCK_COLOURS

BLOCKS = tuple(f'{colour}_block' for colour in BLOCK_COLOURS)
SLIDER_SLOTS = ('slider_left', 'slider_right')
CHAIN_LENGTH = 5
DEFAULT_NUM_CHAINS = 1000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SymbolicState:
    """Where everything is, in CALVIN's condition vocabulary.

    ``slider`` is the side the sliding door sits on; the cabinet slot on the
    *other* side is the open one. A block is at ``'table'``, ``'slider_left'``,
    ``'slider_right'``, ``'drawer'``, ``'grasped'`` (in the hand) or
    ``'stacked'`` (on top of a table block).
    """

    led: int
    lightbulb: int
    slider: str
    drawer: str
    red_block: str
    blue_block: str
    pink_block: str

    @property
    def grasped(self) -> int:
        return int(any(self.place(block) == 'grasped' for block in BLOCKS))

    def place(self, block: str) -> str:
        return getattr(self, block)

    def blocks_at(self, place: str) -> list[str]:
        return [block for block in BLOCKS if self.place(block) == place]

    @property
    def open_slot(self) -> str:
        """The cabinet slot the door does not cover."""
        return 'slider_left' if self.slider == 'right' else 'slider_right'

    def conditions(self) -> dict[str, int | str]:
        """The state as the ordered condition dict ``initial_state`` and the seed hash take."""
        return {**dataclasses.asdict(self), 'grasped': self.grasped}

    @classmethod
    def from_conditions(cls, conditions: dict[str, int | str]) -> 'SymbolicState':
        state = cls(**{field.name: conditions[field.name] for field in dataclasses.fields(cls)})
        if int(conditions.get('grasped', state.grasped)) != state.grasped:
            raise ValueError(f'grasped={conditions["grasped"]} contradicts the block places in {conditions}')
        return state


Successors = Callable[[SymbolicState], list[SymbolicState]]


@dataclass(frozen=True)
class TaskRule:
    """A task's category (a chain uses each at most once) and its symbolic effect.

    ``successors`` lists the states the task can lead to; empty means the
    precondition fails, more than one means the outcome is ambiguous.
    """

    category: str
    successors: Successors

    def apply(self, state: SymbolicState) -> SymbolicState | None:
        """The unique next state, or ``None`` when the task is not applicable."""
        nexts = self.successors(state)
        return nexts[0] if len(nexts) == 1 else None


def _hand_free(state: SymbolicState) -> bool:
    return state.grasped == 0


def _loose_on_table(state: SymbolicState, block: str) -> bool:
    """On the table, hand empty, and no stack (we do not track which block is underneath)."""
    return _hand_free(state) and state.place(block) == 'table' and not state.blocks_at('stacked')


def _toggle(field: str, before: int | str, after: int | str) -> Successors:
    def successors(state: SymbolicState) -> list[SymbolicState]:
        if _hand_free(state) and getattr(state, field) == before:
            return [dataclasses.replace(state, **{field: after})]
        return []
    return successors


def _touch_block(block: str) -> Successors:
    """Rotating or pushing moves a block on the table without changing the symbolic state."""
    return lambda state: [state] if _loose_on_table(state, block) else []


def _lift(block: str, source: str) -> Successors:
    def reachable(state: SymbolicState) -> bool:
        if source == 'table':
            return _loose_on_table(state, block)
        if source == 'slider':
            return _hand_free(state) and state.place(block) == state.open_slot
        return _hand_free(state) and state.drawer == 'open' and state.place(block) == 'drawer'
    return lambda state: [dataclasses.replace(state, **{block: 'grasped'})] if reachable(state) else []


def _put_held(destination: Callable[[SymbolicState], str | None]) -> Successors:
    """Release the held block at ``destination(state)`` (``None``: nowhere to put it)."""
    def successors(state: SymbolicState) -> list[SymbolicState]:
        target = destination(state)
        return [dataclasses.replace(state, **{held: target}) for held in state.blocks_at('grasped') if target]
    return successors


def _free_slot(state: SymbolicState) -> str | None:
    return state.open_slot if not state.blocks_at(state.open_slot) else None


def _open_drawer(state: SymbolicState) -> str | None:
    return 'drawer' if state.drawer == 'open' else None


def _stack_target(state: SymbolicState) -> str | None:
    return 'stacked' if state.blocks_at('table') and not state.blocks_at('stacked') else None


def _unstack(state: SymbolicState) -> list[SymbolicState]:
    if not _hand_free(state):
        return []
    return [dataclasses.replace(state, **{block: 'table'}) for block in state.blocks_at('stacked')]


def _push_into_drawer(state: SymbolicState) -> list[SymbolicState]:
    if state.drawer != 'open':
        return []
    return [dataclasses.replace(state, **{block: 'drawer'})
            for block in state.blocks_at('table') if _loose_on_table(state, block)]


def _build_rules() -> dict[str, TaskRule]:
    rules = {
        'move_slider_left': TaskRule('slider', _toggle('slider', 'right', 'left')),
        'move_slider_right': TaskRule('slider', _toggle('slider', 'left', 'right')),
        'open_drawer': TaskRule('drawer', _toggle('drawer', 'closed', 'open')),
        'close_drawer': TaskRule('drawer', _toggle('drawer', 'open', 'closed')),
        'turn_on_lightbulb': TaskRule('lightbulb', _toggle('lightbulb', 0, 1)),
        'turn_off_lightbulb': TaskRule('lightbulb', _toggle('lightbulb', 1, 0)),
        'turn_on_led': TaskRule('led', _toggle('led', 0, 1)),
        'turn_off_led': TaskRule('led', _toggle('led', 1, 0)),
        'place_in_slider': TaskRule('place_in_slider', _put_held(_free_slot)),
        'place_in_drawer': TaskRule('place_in_drawer', _put_held(_open_drawer)),
        'stack_block': TaskRule('stack', _put_held(_stack_target)),
        'unstack_block': TaskRule('unstack', _unstack),
        'push_into_drawer': TaskRule('push_into_drawer', _push_into_drawer),
    }
    for colour, block in zip(BLOCK_COLOURS, BLOCKS):
        for side in ('left', 'right'):
            rules[f'rotate_{colour}_block_{side}'] = TaskRule('rotate', _touch_block(block))
            rules[f'push_{colour}_block_{side}'] = TaskRule('push', _touch_block(block))
        for source in ('table', 'slider', 'drawer'):
            rules[f'lift_{colour}_block_{source}'] = TaskRule(f'lift_from_{source}', _lift(block, source))
    return rules


TASK_RULES: dict[str, TaskRule] = _build_rules()


def initial_states() -> list[SymbolicState]:
    """CALVIN's start states: every light/door/drawer setting, 1-2 blocks on the table, at most one per cabinet slot."""
    states = []
    for led, lightbulb, slider, drawer in itertools.product((0, 1), (0, 1), ('right', 'left'), ('closed', 'open')):
        for places in itertools.product(('table', *SLIDER_SLOTS), repeat=len(BLOCKS)):
            if 1 <= places.count('table') <= 2 and all(places.count(slot) <= 1 for slot in SLIDER_SLOTS):
                states.append(SymbolicState(led, lightbulb, slider, drawer, *places))
    return states


def applicable_tasks(state: SymbolicState, tasks: Iterable[str]) -> list[tuple[str, SymbolicState]]:
    """Tasks (with their next state) that are unambiguously possible in ``state``."""
    result = []
    for task in tasks:
        nxt = TASK_RULES[task].apply(state)
        if nxt is not None:
            result.append((task, nxt))
    return result


@dataclass(frozen=True)
class Chain:
    """One evaluation item: a symbolic start state and the tasks to do in order."""

    initial: SymbolicState
    tasks: tuple[str, ...]

    def to_json(self) -> dict:
        return {'initial_state': self.initial.conditions(), 'tasks': list(self.tasks)}

    @classmethod
    def from_json(cls, data: dict) -> 'Chain':
        return cls(SymbolicState.from_conditions(data['initial_state']), tuple(data['tasks']))


def replay(chain: Chain) -> list[SymbolicState]:
    """The symbolic states before and after each task; ``ValueError`` if the chain is not executable."""
    states = [chain.initial]
    categories = [TASK_RULES[task].category for task in chain.tasks]
    if len(set(categories)) != len(categories):
        raise ValueError(f'chain repeats a category: {list(chain.tasks)}')
    for task in chain.tasks:
        nxt = TASK_RULES[task].apply(states[-1])
        if nxt is None:
            raise ValueError(f'{task} is not applicable in {states[-1].conditions()}')
        states.append(nxt)
    return states


def sample_chain(state: SymbolicState, tasks: Sequence[str], rng: np.random.Generator,
                 length: int = CHAIN_LENGTH) -> tuple[str, ...]:
    """Draw uniformly among all valid chains of ``length`` tasks from ``state``.

    This is the distribution CALVIN's rejection sampling (draw task tuples,
    discard those that do not chain or repeat a category) converges to, drawn
    exactly: each step picks a task with weight equal to the number of valid
    completions after it. Rejection needs ~5000 draws per chain here (20 s for
    1000 chains); counting needs none.
    """
    tasks = tuple(sorted(set(tasks)))
    used: frozenset[str] = frozenset()
    chosen = []
    for remaining in range(length, 0, -1):
        options = _options(state, used, remaining, tasks)
        if not options:
            raise ValueError(f'no valid chain of {length} tasks from {state.conditions()}')
        pick = int(rng.integers(sum(weight for *_, weight in options)))
        for task, nxt, weight in options:
            if pick < weight:
                break
            pick -= weight
        chosen.append(task)
        state, used = nxt, used | {TASK_RULES[task].category}
    return tuple(chosen)


def _options(state: SymbolicState, used: frozenset[str], remaining: int,
             tasks: tuple[str, ...]) -> list[tuple[str, SymbolicState, int]]:
    """Applicable next tasks with how many valid chains of ``remaining`` tasks start with each."""
    options = []
    for task, nxt in _applicable(state, tasks):
        category = TASK_RULES[task].category
        if category not in used:
            weight = _count(nxt, used | {category}, remaining - 1, tasks)
            if weight:
                options.append((task, nxt, weight))
    return options


@functools.lru_cache(maxsize=None)
def _count(state: SymbolicState, used: frozenset[str], remaining: int, tasks: tuple[str, ...]) -> int:
    if remaining == 0:
        return 1
    return sum(weight for *_, weight in _options(state, used, remaining, tasks))


@functools.lru_cache(maxsize=None)
def _applicable(state: SymbolicState, tasks: tuple[str, ...]) -> list[tuple[str, SymbolicState]]:
    return applicable_tasks(state, tasks)


def generate_chains(tasks: Sequence[str], num_chains: int = DEFAULT_NUM_CHAINS,
                    seed: int = DEFAULT_SEED) -> list[Chain]:
    """The fixed chain list: distinct chains split evenly over the start states, shuffled under ``seed``.

    Take subsets of this list (``disjoint_subsets``) rather than generating a
    shorter one: a different ``num_chains`` gives a different list.
    """
    unknown = sorted(set(tasks) - set(TASK_RULES))
    if unknown:
        raise ValueError(f'no symbolic rule for tasks {unknown}')
    tasks = tuple(sorted(set(tasks)))
    states = initial_states()
    per_state = math.ceil(num_chains / len(states))
    chains: list[Chain] = []
    for index, state in enumerate(states):
        rng = np.random.default_rng([seed, index])
        available = _count(state, frozenset(), CHAIN_LENGTH, tasks)
        if available < per_state:
            raise ValueError(f'only {available} distinct chains exist for {state.conditions()}, need {per_state}')
        found: dict[tuple[str, ...], None] = {}
        while len(found) < per_state:
            found.setdefault(sample_chain(state, tasks, rng))
        chains.extend(Chain(state, seq) for seq in found)
    order = np.random.default_rng(seed).permutation(len(chains))
    return [chains[i] for i in order[:num_chains]]


def disjoint_subsets(chains: Sequence[Chain], sizes: Sequence[int], offset: int = 0) -> list[list[Chain]]:
    """Consecutive, non-overlapping slices, e.g. ``[224, 100]``: report on the first 224, tune on the next 100.

    Chains in a generated list are pairwise distinct, so disjoint slices share no chain.
    """
    if offset < 0 or any(size < 0 for size in sizes):
        raise ValueError(f'offset and sizes must be >= 0, got offset={offset}, sizes={list(sizes)}')
    if offset + sum(sizes) > len(chains):
        raise ValueError(f'asked for {sum(sizes)} chains from offset {offset}, only {len(chains)} available')
    bounds = np.cumsum([offset, *sizes])
    return [list(chains[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]


def chains_digest(chains: Sequence[Chain]) -> str:
    """sha256 of the chain list's JSON: a one-line check that two machines evaluate the same chains."""
    payload = json.dumps([chain.to_json() for chain in chains], sort_keys=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def fnv1_32(data: bytes, start: int = 0x811C9DC5) -> int:
    """32-bit FNV-1 (multiply, then xor) from ``start``, FNV's offset basis by default.

    CALVIN seeds initial-state sampling with ``pyhash.fnv1_32()``, which starts from 0 (its default seed)
    and hashes a str as UTF-16-LE: :func:`deer_ros.benchmark.calvin_sequences.calvin_seed`.
    """
    value = start
    for byte in data:
        value = (value * 0x01000193) & 0xFFFFFFFF
        value ^= byte
    return value


def initial_state_seed(state: SymbolicState) -> int:
    """Seed for placing a chain's blocks: hash of the condition values, so a chain always starts identically."""
    return fnv1_32(str(state.conditions().values()).encode())
