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
from typing import Callable, Literal, Sequence

import numpy as np

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.budget.latency import LatencyTable
from deer_ros.budget.latency_budget import check_latency_table, latency_cap, solve_average_ms, tighter_average
from deer_ros.budget.solver import (
    DEFAULT_TOLERANCE,
    BudgetError,
    SolverResult,
    check_budget,
    largest_fitting_exit,
    solve_average_budget,
)
from deer_ros.model.cost import CostTable

CostKind = Literal['llm', 'total']
CostUnit = Literal['gflops', 'gmacs']
COST_UNITS: tuple[str, ...] = ('gflops', 'gmacs')
COST_UNIT_LABELS: dict[str, str] = {'gflops': 'GFLOPs', 'gmacs': 'GMACs'}
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
    peak_ms: float | None = None
    avg_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ('avg_gflops', 'peak_gflops', 'max_memory_mb', 'peak_ms', 'avg_ms'):
            if getattr(self, name) is not None:
                check_budget(getattr(self, name), name)


def budget_in_gflops(budget: Budget, unit: CostUnit) -> Budget:
    """``budget`` with its compute limits, given in ``unit``, converted to GFLOPs (memory is unchanged).

    The fields keep their names (``avg_gflops``, ``peak_gflops``: the node's
    parameter names); ``unit`` says what the operator meant by the numbers.
    """
    return _convert_compute(budget, lambda value: to_gflops(value, unit))


def budget_in_unit(budget: Budget, unit: CostUnit) -> Budget:
    """The inverse of :func:`budget_in_gflops`: a GFLOPs budget's compute limits in ``unit``, to show the operator."""
    return _convert_compute(budget, lambda value: from_gflops(value, unit))


def _convert_compute(budget: Budget, convert: Callable[[float], float]) -> Budget:
    converted = {name: convert(value) for name in ('avg_gflops', 'peak_gflops')
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


def param_memory_mb(table: CostTable) -> np.ndarray:
    """Resident parameter memory (MB) of the model capped at each exit."""
    return np.asarray(table.param_bytes, dtype=np.float64) / BYTES_PER_MB


def measured_latency(latency: LatencyTable | None, table: CostTable) -> LatencyTable:
    """The latency table a millisecond budget needs, checked against the model's exits."""
    if latency is None:
        raise BudgetError('peak_ms / avg_ms need the measured latency table, and none was measured yet '
                          '(the node: ~/recalibrate_latency, or latency.measure_on_start)')
    check_latency_table(latency, table.exit_layers)
    return latency


def exit_cap(budget: Budget, table: CostTable, *, kind: CostKind = 'llm',
             memory_mb: Sequence[float] | None = None, latency: LatencyTable | None = None) -> int:
    """Deepest exit allowed by the peak-GFLOPs, memory and peak step-time limits.

    Args:
        memory_mb: measured peak memory per capped exit (MB); defaults to parameter bytes.
        latency: the measured step times, needed for ``peak_ms``.
    """
    cap = table.num_exits - 1
    if budget.peak_gflops is not None:
        cap = min(cap, largest_fitting_exit(exit_costs(table, kind), budget.peak_gflops, f'peak {kind} GFLOPs'))
    if budget.max_memory_mb is not None:
        memory = param_memory_mb(table) if memory_mb is None else np.asarray(memory_mb, dtype=np.float64)
        if memory.shape != (table.num_exits,):
            raise BudgetError(f'memory table must have one entry per exit ({table.num_exits}), got shape {memory.shape}')
        cap = min(cap, largest_fitting_exit(memory, budget.max_memory_mb, 'memory MB'))
    if budget.peak_ms is not None:
        cap = min(cap, latency_cap(measured_latency(latency, table), budget.peak_ms))
    return cap


def solve_budget(budget: Budget, table: CostTable, calibration: CalibrationData | None = None, *,
                 kind: CostKind = 'llm', memory_mb: Sequence[float] | None = None,
                 latency: LatencyTable | None = None, tolerance: float = DEFAULT_TOLERANCE) -> BudgetSolution:
    """Cap from the hard limits, then thresholds for the average budgets over the capped exits.

    Without an average budget the policy runs every step to the cap (static
    truncation). With one, ``calibration`` is required and must describe the
    same exits as ``table``; with both ``avg_gflops`` and ``avg_ms`` the
    thresholds meet both (:func:`~deer_ros.budget.latency_budget.tighter_average`).
    ``latency`` (the measured step times) is needed for ``peak_ms`` and ``avg_ms``.

    Raises:
        BudgetError: a limit nothing fits, or an average budget infeasible under the cap.
    """
    cap = exit_cap(budget, table, kind=kind, memory_mb=memory_mb, latency=latency)
    if budget.avg_gflops is None and budget.avg_ms is None:
        metric = calibration.metric if calibration is not None else 'rms'
        return BudgetSolution(cap, ExitCriterion.always_last(cap + 1, metric), None)
    if calibration is None:
        raise BudgetError('an average budget needs calibration data (run `deer-ros calibrate`)')
    if not calibration.matches(table.exit_layers):
        raise BudgetError(f'calibration exits at layers {list(calibration.exit_layers)} do not match '
                          f'the cost table {list(table.exit_layers)}')
    results: list[SolverResult] = []
    if budget.avg_gflops is not None:
        costs = exit_costs(table, kind)[:cap + 1]
        try:
            results.append(solve_average_budget(calibration.values[:, :cap + 1], costs, budget.avg_gflops,
                                                tolerance=tolerance))
        except BudgetError as error:
            if cap < table.num_exits - 1:
                raise BudgetError(f'{error} [model capped at exit {cap + 1} by the peak/memory/ms limits]') from error
            raise
    if budget.avg_ms is not None:
        results.append(solve_average_ms(calibration.values, measured_latency(latency, table), budget.avg_ms,
                                        cap=cap, tolerance=tolerance))
    result = tighter_average(results)
    return BudgetSolution(cap, ExitCriterion(result.thresholds, calibration.metric, calibration.first_exit_checked),
                          result)
