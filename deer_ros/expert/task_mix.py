"""Which tasks a demo collection draws, and how often (``deer-ros collect --tasks/--task-weights``).

Uniform draws give every applicable task the same share, so the tasks a policy
fails most (rotations, lifts from the slider, the light bulb) get no more demos
than the ones it already masters. A :class:`TaskMix` restricts the draw to some
tasks and weights it: among the tasks applicable in the current symbolic state,
each is drawn with probability proportional to its weight. Names may be
``fnmatch`` patterns (``'rotate_*'``, ``'lift_*_slider'``).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from deer_ros.benchmark.chains import SymbolicState, applicable_tasks, initial_states
from deer_ros.benchmark.tasks import SUPPORTED_TASKS


def match_tasks(pattern: str) -> list[str]:
    """The supported tasks a name or ``fnmatch`` pattern names, in ``SUPPORTED_TASKS`` order; none is an error."""
    matched = [task for task in SUPPORTED_TASKS if fnmatch.fnmatchcase(task, pattern)]
    if not matched:
        raise ValueError(f'{pattern!r} names no supported task; supported: {", ".join(SUPPORTED_TASKS)}')
    return matched


@dataclass(frozen=True)
class TaskMix:
    """A weight per supported task (0: never drawn); the default draws every task uniformly.

    ``named`` keeps what the user asked for (a ``--tasks`` entry or a weight key, with the drawable tasks it
    matched), so :meth:`check_reachable` can say which request no rollout could ever satisfy.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(SUPPORTED_TASKS, 1.0))
    named: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, tasks: Sequence[str] | None = None, weights: Mapping[str, float] | None = None) -> 'TaskMix':
        """``tasks``: names or patterns to draw from (default: all); ``weights``: name or pattern -> weight >= 0
        (unlisted tasks weigh 1). A task matched by two weight keys, or a key matching no selected task, is an error."""
        named: dict[str, tuple[str, ...]] = {}
        selected = set(SUPPORTED_TASKS)
        if tasks is not None:
            if not tasks:
                raise ValueError('--tasks needs at least one task')
            named = {pattern: tuple(match_tasks(pattern)) for pattern in tasks}
            selected = {task for matched in named.values() for task in matched}
        result = {task: 1.0 if task in selected else 0.0 for task in SUPPORTED_TASKS}
        weighted_by: dict[str, str] = {}
        for key, weight in (weights or {}).items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f'task weight of {key!r} must be a finite number >= 0, got {weight!r}')
            matched = [task for task in match_tasks(key) if task in selected]
            if not matched:
                raise ValueError(f'task weight {key!r} matches none of the tasks selected by --tasks')
            for task in matched:
                if task in weighted_by:
                    raise ValueError(f'{task} is weighted twice, by {weighted_by[task]!r} and {key!r}')
                weighted_by[task] = key
                result[task] = float(weight)
            named.setdefault(key, tuple(matched))
        if not any(result.values()):
            raise ValueError('every selected task has weight 0: nothing to collect')
        drawable = {name: tuple(task for task in matched if result[task] > 0) for name, matched in named.items()}
        return cls(result, {name: matched for name, matched in drawable.items() if matched})

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks that can be drawn, in ``SUPPORTED_TASKS`` order."""
        return tuple(task for task in SUPPORTED_TASKS if self.weights[task] > 0)

    def options(self, state: SymbolicState) -> list[tuple[str, SymbolicState]]:
        """The drawable tasks (with their next state) that ``state`` allows."""
        return applicable_tasks(state, self.tasks)

    def draw(self, options: Sequence[tuple[str, SymbolicState]],
             rng: np.random.Generator) -> tuple[str, SymbolicState]:
        """One of ``options``, proportionally to its weight.

        Equal weights take one uniform integer draw, exactly as collections did before weights existed, so their
        seeds still record the same demos.
        """
        weights = np.array([self.weights[task] for task, _ in options])
        if np.all(weights == weights[0]):
            return options[int(rng.integers(len(options)))]
        return options[int(rng.choice(len(options), p=weights / weights.sum()))]

    def check_reachable(self, chain_length: int) -> None:
        """Refuse a mix that could never record what it names within ``chain_length`` subtasks per rollout.

        Some tasks only follow others (place/stack need a lifted block, unstack a stacked one); with nothing
        reachable at all, collection would draw empty rollouts forever.
        """
        seen: set[str] = set()
        frontier = set(initial_states())
        for _ in range(chain_length):
            successors = set()
            for state in frontier:
                for task, following in self.options(state):
                    seen.add(task)
                    successors.add(following)
            frontier = successors
            if seen and not self._unreachable(seen):
                return
        if not seen:
            raise ValueError(f'none of the tasks {list(self.tasks)} is possible from a start state')
        unreachable = self._unreachable(seen)
        if unreachable:
            raise ValueError(f'{unreachable} can never be drawn within {chain_length} subtask(s) per rollout with '
                             f'these tasks (place/stack follow a lift, unstack follows a stack): add the tasks '
                             f'that lead there or raise --chain-length')

    def _unreachable(self, seen: set[str]) -> list[str]:
        return [name for name, matched in self.named.items() if not seen & set(matched)]
