"""Online refinement of the offline thresholds by Bayesian optimisation.

The offline solver only sees action consistency on demonstrations; what
matters is closed-loop task success. DeeR therefore refines the thresholds
with a GP (scikit-optimize ``gp_minimize``) on simulator rollouts:

    f(T) = −success(T) + λ · max(0, cost(T) − budget)

Each evaluation is a batch of rollouts (minutes to hours), so the search is a
few tens of points in a box around the offline solution, and every evaluated
point is written to a JSON state file at once: an interrupted run resumes from
it (points passed back to ``gp_minimize`` as ``x0``/``y0``) without repeating
rollouts. ``evaluate`` must run on chains disjoint from those used to report
results (upstream tuned and reported on the same 224 chains).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from skopt import gp_minimize
from skopt.space import Real
from tqdm import tqdm

from deer_ros.budget.solver import check_budget

# thresholds -> (average successful length, average cost per step)
Evaluate = Callable[[np.ndarray], tuple[float, float]]
STATE_VERSION = 1


class BayesOptStateError(ValueError):
    """A state file that is unreadable or belongs to a different search."""


@dataclass(frozen=True)
class SearchSpace:
    """Box around the offline thresholds; only finite thresholds of exits 1..n-2 move.

    Exit 0 is never decided, the last exit always stops (``inf``) and exits the
    offline solution leaves unused (``-inf``) have no scale to search around.
    """

    base: np.ndarray
    free: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def thresholds(self, point: list[float] | np.ndarray) -> np.ndarray:
        """Full threshold vector for a point of the box."""
        thresholds = self.base.copy()
        thresholds[self.free] = point
        return thresholds

    def dimensions(self) -> list[Real]:
        return [Real(float(lo), float(hi)) for lo, hi in zip(self.low, self.high)]

    def to_json(self) -> dict:
        return {'base': self.base.tolist(), 'free': self.free.tolist(), 'low': self.low.tolist(),
                'high': self.high.tolist()}


def search_space(offline: np.ndarray, radius: float = 0.5) -> SearchSpace:
    """Box of half-width ``radius``·T_k around each free offline threshold (clipped at 0).

    A zero threshold borrows a tenth of the mean free threshold as its scale so
    its interval is not empty.
    """
    if not radius > 0:
        raise ValueError(f'radius must be > 0, got {radius}')
    base = np.asarray(offline, dtype=np.float64)
    free = np.flatnonzero(np.isfinite(base[:-1]))
    free = free[free >= 1]
    if free.size == 0:
        raise ValueError(f'no finite thresholds on exits 1..{base.size - 2} to refine: {base.tolist()}')
    centre = base[free]
    floor = 0.1 * centre.mean() if centre.mean() > 0 else 1e-6
    half = radius * np.maximum(centre, floor)
    return SearchSpace(base, free, np.maximum(centre - half, 0.0), centre + half)


def objective(success: float, cost: float, budget: float, penalty: float) -> float:
    """−success + λ·max(0, cost − budget): over-budget points pay, under-budget ones do not gain."""
    return -success + penalty * max(0.0, cost - budget)


@dataclass(frozen=True)
class Evaluation:
    point: list[float]
    success: float
    cost: float


@dataclass(frozen=True)
class RefineResult:
    """Best point found and every evaluation (offline solution first)."""

    thresholds: np.ndarray
    success: float
    cost: float
    objective: float
    evaluations: list[Evaluation]


class _StateFile:
    """Evaluations persisted one by one; refuses a file written for another search."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path, self.header = path, header
        self.evaluations: list[Evaluation] = []
        if path.exists():
            try:
                state = json.loads(path.read_text())
                stored_header = {key: state[key] for key in header}
                evaluations = [Evaluation([float(x) for x in e['point']], float(e['success']), float(e['cost']))
                               for e in state['evaluations']]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise BayesOptStateError(f'{path}: unreadable BO state ({error})') from error
            if stored_header != json.loads(json.dumps(header)):
                raise BayesOptStateError(f'{path} was written for a different search (space, budget, penalty '
                                         'or version differ); use another state file or delete it')
            self.evaluations = evaluations

    def append(self, evaluation: Evaluation) -> None:
        self.evaluations.append(evaluation)
        state = dict(self.header, evaluations=[vars(e) for e in self.evaluations])
        tmp = self.path.with_name(self.path.name + '.tmp')
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.path)


def refine_thresholds(evaluate: Evaluate, offline: np.ndarray, budget: float, state_path: str | Path, *,
                      n_calls: int = 20, n_initial_points: int = 5, penalty: float = 1.0, radius: float = 0.5,
                      acq_func: str = 'EI', seed: int = 0, progress: bool = True) -> RefineResult:
    """Minimise −success + λ·max(0, cost − budget) over thresholds near ``offline``.

    Args:
        evaluate: runs rollouts with the given thresholds on tuning chains
            (disjoint from reporting chains) and returns (avg successful length, avg cost).
        offline: thresholds from :func:`solve_average_budget`; evaluated first.
        budget: average cost allowed, in ``evaluate``'s cost units.
        state_path: JSON file of evaluated points; an existing file for the same
            search is resumed, so ``n_calls`` counts its evaluations too.
        n_initial_points: evaluations (offline point included) before the GP steers.
        acq_func: skopt acquisition (upstream used ``EI`` and ``LCB``).
        seed: random state; offset by the number of stored points on resume so
            random initial points are not repeated.
    """
    budget = check_budget(budget)
    if n_calls < 1 or n_initial_points < 1:
        raise ValueError(f'n_calls and n_initial_points must be >= 1, got {n_calls}, {n_initial_points}')
    if not penalty >= 0:
        raise ValueError(f'penalty must be >= 0, got {penalty}')
    space = search_space(offline, radius)
    header = {'version': STATE_VERSION, 'space': space.to_json(), 'budget': budget, 'penalty': float(penalty)}
    state = _StateFile(Path(state_path), header)
    done = len(state.evaluations)
    remaining = n_calls - done

    if remaining > 0:
        bar = tqdm(total=n_calls, initial=done, desc='threshold BO', unit='eval', disable=not progress)

        def run(point: list[float]) -> float:
            success, cost = (float(x) for x in evaluate(space.thresholds(point)))
            if not (math.isfinite(success) and math.isfinite(cost)):
                raise ValueError(f'evaluate returned non-finite success/cost ({success}, {cost})')
            state.append(Evaluation([float(x) for x in point], success, cost))
            bar.update()
            return objective(success, cost, budget, penalty)

        previous = [e.point for e in state.evaluations]
        x0 = previous or [space.base[space.free].tolist()]
        y0 = [objective(e.success, e.cost, budget, penalty) for e in state.evaluations] or None
        evaluated_x0 = 0 if y0 is not None else len(x0)
        random_points = min(max(0, n_initial_points - done - evaluated_x0), remaining - evaluated_x0)
        try:
            gp_minimize(run, space.dimensions(), n_calls=remaining, n_initial_points=random_points,
                        x0=x0, y0=y0, acq_func=acq_func, random_state=seed + done)
        finally:
            bar.close()

    scores = [objective(e.success, e.cost, budget, penalty) for e in state.evaluations]
    best = int(np.argmin(scores))
    winner = state.evaluations[best]
    return RefineResult(space.thresholds(winner.point), winner.success, winner.cost, scores[best],
                        list(state.evaluations))
