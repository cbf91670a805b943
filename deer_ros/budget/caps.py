"""Operator budgets → the deepest allowed exit plus the exit rule's thresholds.

Peak GFLOPs and memory are hard per-step limits, met by truncation: the model
is capped at the largest exit that fits (DeeR §4.1, ``--max_layer``). The
average budget is then solved over the capped exits only, so both hold at once.
Memory is in MB of 2**20 bytes, the unit ``torch.cuda.max_memory_allocated() / 2**20``
reports.

Cost units (``budget.cost_unit``): deer_ros counts FLOPs with
``torch.utils.flop_counter``, two per multiply-add; the DeeR paper and its
code count multiply-accumulates (fvcore/thop), one per multiply-add. So
"1.3 GFLOPs per layer" in the paper is 1.3 GMACs = 2.6 GFLOPs here. A budget
given in ``gmacs`` is turned into GFLOPs (x2) by :func:`budget_in_gflops`
before anything is solved; everything inside (cost tables, solvers, tracking)
stays in GFLOPs. ``deer-ros cost --units gmacs`` prints the tables in the
paper's unit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.budget.solver import DEFAULT_TOLERANCE, BudgetError, SolverResult, check_budget, solve_average_budget
from deer_ros.model.cost import CostTable

CostKind = Literal['llm', 'total']
CostUnit = Literal['gflops', 'gmacs']
COST_UNITS: tuple[str, ...] = ('gflops', 'gmacs')
FLOPS_PER_MAC = 2
BYTES_PER_MB = 2 ** 20


def check_cost_unit(unit: str) -> CostUnit:
    """Raise ``ValueError`` for a unit other than ``gflops`` / ``gmacs``."""
    if unit not in COST_UNITS:
        raise ValueError(f'cost unit must be one of {COST_UNITS}, got {unit!r}')
    return unit  # type: ignore[return-value]


def to_gflops(value: float, unit: CostUnit) -> float:
    """A cost given in ``unit`` as GFLOPs (deer_ros's internal unit)."""
    return value * FLOPS_PER_MAC if check_cost_unit(unit) == 'gmacs' else value


def from_gflops(gflops: float, unit: CostUnit) -> float:
    """A cost in GFLOPs expressed in ``unit`` (for reports in the paper's GMACs)."""
    return gflops / FLOPS_PER_MAC if check_cost_unit(unit) == 'gmacs' else gflops


@dataclass(frozen=True)
class Budget:
    """What the operator allows per control step; ``None`` = unconstrained."""

    avg_gflops: float | None = None
    peak_gflops: float | None = None
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        for name in ('avg_gflops', 'peak_gflops', 'max_memory_mb'):
            if getattr(self, name) is not None:
                check_budget(getattr(self, name), name)


def budget_in_gflops(budget: Budget, unit: CostUnit) -> Budget:
    """``budget`` with its compute limits, given in ``unit``, converted to GFLOPs (memory is unchanged).

    The fields keep their names (``avg_gflops``, ``peak_gflops``: the node's
    parameter names); ``unit`` says what the operator meant by the numbers.
    """
    converted = {name: to_gflops(value, unit) for name in ('avg_gflops', 'peak_gflops')
                 if (value := getattr(budget, name)) is not None}
    return dataclasses.replace(budget, **converted)


@dataclass(frozen=True)
class BudgetSolution:
    """The cap and criterion a policy needs, plus the average solve when there was one.

    ``criterion`` has ``cap + 1`` thresholds: the model is truncated to exits 0..cap.
    """

    cap: int
    criterion: ExitCriterion
    average: SolverResult | None


def exit_costs(table: CostTable, kind: CostKind = 'llm') -> np.ndarray:
    """Per-exit GFLOPs of one step: LLM only (the paper's unit) or everything counted."""
    if kind == 'llm':
        return np.asarray(table.llm_gflops, dtype=np.float64)
    if kind == 'total':
        return np.array([table.total_gflops(k) for k in range(table.num_exits)])
    raise ValueError(f"cost kind must be 'llm' or 'total', got {kind!r}")


def largest_fitting_exit(per_exit: Sequence[float], limit: float, what: str) -> int:
    """Index of the deepest exit whose requirement is <= ``limit``.

    Raises:
        BudgetError: not even exit 0 fits; the message names the minimum.
    """
    per_exit = np.asarray(per_exit, dtype=np.float64)
    fits = np.flatnonzero(per_exit <= limit)
    if fits.size == 0:
        raise BudgetError(f'{what} limit {limit:g} is below the smallest model (exit 1 needs {per_exit[0]:g}); '
                          f'feasible {what} limits are >= {per_exit[0]:g}')
    return int(fits[-1])


def param_memory_mb(table: CostTable) -> np.ndarray:
    """Resident parameter memory (MB) of the model capped at each exit."""
    return np.asarray(table.param_bytes, dtype=np.float64) / BYTES_PER_MB


def exit_cap(budget: Budget, table: CostTable, *, kind: CostKind = 'llm',
             memory_mb: Sequence[float] | None = None) -> int:
    """Deepest exit allowed by the peak-GFLOPs and memory limits.

    Args:
        memory_mb: measured peak memory per capped exit (MB); defaults to parameter bytes.
    """
    cap = table.num_exits - 1
    if budget.peak_gflops is not None:
        cap = min(cap, largest_fitting_exit(exit_costs(table, kind), budget.peak_gflops, f'peak {kind} GFLOPs'))
    if budget.max_memory_mb is not None:
        memory = param_memory_mb(table) if memory_mb is None else np.asarray(memory_mb, dtype=np.float64)
        if memory.shape != (table.num_exits,):
            raise BudgetError(f'memory table must have one entry per exit ({table.num_exits}), got shape {memory.shape}')
        cap = min(cap, largest_fitting_exit(memory, budget.max_memory_mb, 'memory MB'))
    return cap


def solve_budget(budget: Budget, table: CostTable, calibration: CalibrationData | None = None, *,
                 kind: CostKind = 'llm', memory_mb: Sequence[float] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> BudgetSolution:
    """Cap from the hard limits, then thresholds for the average budget over the capped exits.

    Without an average budget the policy runs every step to the cap (static
    truncation). With one, ``calibration`` is required and must describe the
    same exits as ``table``.

    Raises:
        BudgetError: a limit nothing fits, or an average budget infeasible under the cap.
    """
    cap = exit_cap(budget, table, kind=kind, memory_mb=memory_mb)
    if budget.avg_gflops is None:
        metric = calibration.metric if calibration is not None else 'rms'
        return BudgetSolution(cap, ExitCriterion.always_last(cap + 1, metric), None)
    if calibration is None:
        raise BudgetError('an average GFLOPs budget needs calibration data (run `deer-ros calibrate`)')
    if not calibration.matches(table.exit_layers):
        raise BudgetError(f'calibration exits at layers {list(calibration.exit_layers)} do not match '
                          f'the cost table {list(table.exit_layers)}')
    costs = exit_costs(table, kind)[:cap + 1]
    try:
        result = solve_average_budget(calibration.values[:, :cap + 1], costs, budget.avg_gflops, tolerance=tolerance)
    except BudgetError as error:
        if cap < table.num_exits - 1:
            raise BudgetError(f'{error} [model capped at exit {cap + 1} by the peak/memory limits]') from error
        raise
    return BudgetSolution(cap, ExitCriterion(result.thresholds, calibration.metric), result)
