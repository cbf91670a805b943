"""Upstream DeeR's cached consistency values as deer_ros calibration data, and upstream's thresholds from them.

Layout upstream (``robot_flamingo/models/value_net.py``, ``ActionValueNet``
in ``generate`` mode, cached by ``eval_calvin.py`` as ``checkpoint['values']``):
a tensor ``(n_exits, N)``; row k is the difference between the pose actions
of exit k and exit k-1 for the same sample, where "exit -1" is the feature
one layer before the first exit (upstream's first-exit rule). Samples are
positions 5..10 (``window // 2 - 1 .. window - 2``) of calibration windows
whose history frames take their features from random exits; the metric is
evaluation's ``--threshold_type`` (``L2``, the default, is deer_ros's
``rms``; ``mean`` is ``l1``, ``max`` is ``linf``).

deer_ros's :class:`~deer_ros.budget.calibration.CalibrationData` is
``(N, n_exits)`` with column k the difference between exits k and k-1 and
column 0 NaN, because deer_ros's rule never stops at the first exit. So rows
1.. map exactly onto columns 1..: the transpose, with column 0 left NaN. Row
0 (upstream's first-exit comparison) has no column; it is kept in use only
through :func:`upstream_thresholds`: upstream's own quantile thresholds for
an ``exit_ratio``, which do stop at the first exit, and which are stored as a
refined-thresholds entry (``refined_thresholds.json``) at the average cost
they realise on these values, with ``first_exit_checked``, so the live exit
rule applies them exactly as upstream does when that budget is requested.
"""
from __future__ import annotations

import math

import numpy as np

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.caps import Budget, solve_budget
from deer_ros.budget.exit_criterion import first_exits
from deer_ros.budget.refined import RefinedEntry
from deer_ros.model.cost import CostTable

THRESHOLD_TYPES = {'L2': 'rms', 'mean': 'l1', 'max': 'linf', 'cosine': 'cosine'}  # upstream --threshold_type


def upstream_matrix(values: np.ndarray, num_exits: int) -> np.ndarray:
    """Upstream's ``(n_exits, N)`` values as ``(N, n_exits)`` float64 rows, checked."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != num_exits or values.shape[1] == 0:
        raise ValueError(f'upstream values must have shape ({num_exits} exits, N samples), got {values.shape}')
    if not np.all(np.isfinite(values)) or np.any(values < -1e-9):
        raise ValueError('upstream values must be finite and >= 0')
    return values.T.copy()


def calibration_from_upstream(values: np.ndarray, exit_layers: tuple[int, ...], threshold_type: str = 'L2',
                              metadata: dict | None = None) -> CalibrationData:
    """deer_ros calibration data from upstream's cached values (exits 1..: exact; exit 0: see the module doc)."""
    if threshold_type not in THRESHOLD_TYPES:
        raise ValueError(f'threshold_type must be one of {sorted(THRESHOLD_TYPES)}, got {threshold_type!r}')
    matrix = upstream_matrix(values, len(exit_layers))
    matrix[:, 0] = np.nan
    info = {'source': 'upstream checkpoint values', 'upstream_threshold_type': threshold_type,
            'history_exits': 'upstream: random exits', 'first_exit_values': 'not representable (NaN column)'}
    return CalibrationData(matrix, THRESHOLD_TYPES[threshold_type], exit_layers, {**info, **(metadata or {})})


def upstream_thresholds(values: np.ndarray, exit_ratio: float, *, first_exit_off: bool = False) -> np.ndarray:
    """Upstream's ``ExitController.set_threshold`` (``exit_dist='exp'``) on ``(N, n_exits)`` rows.

    Target share of exit k (1-based) is q**k normalised; for k = 1..n-1, among
    samples no earlier exit took, T_k is the value of the floor(N * p_k)-th
    smallest; samples with a value <= T_k exit there. Upstream's -1e8 ("none
    exit here") and 1e8 (last exit) become -inf and inf. ``first_exit_off``:
    the 9B rule (p_1 = 0).
    """
    num_samples, num_exits = values.shape
    if not exit_ratio > 0:
        raise ValueError(f'exit_ratio must be > 0, got {exit_ratio}')
    shares = exit_ratio ** np.arange(1, num_exits + 1, dtype=np.float64)
    if first_exit_off:
        shares[0] = 0.0
    shares /= shares.sum()
    thresholds = np.full(num_exits, -np.inf)
    taken = np.zeros(num_samples, dtype=bool)
    for k in range(num_exits - 1):
        wanted = math.floor(num_samples * shares[k])
        free = np.sort(values[~taken, k])
        if wanted >= 1 and free.size >= wanted:
            thresholds[k] = free[wanted - 1]
        taken |= values[:, k] <= thresholds[k]
    thresholds[-1] = np.inf
    return thresholds


def upstream_refined_entry(values: np.ndarray, table: CostTable, calibration: CalibrationData, exit_ratio: float, *,
                           first_exit_off: bool = False) -> RefinedEntry:
    """Upstream's thresholds for ``exit_ratio`` as a refined entry at the average LLM GFLOPs they realise.

    The entry's budget is that average rounded to 4 significant digits: the
    number an operator types. Raises :class:`BudgetError` when deer_ros's own
    solver cannot meet that budget (the live controller solves it first).
    """
    matrix = upstream_matrix(values, table.num_exits)
    thresholds = upstream_thresholds(matrix, exit_ratio, first_exit_off=first_exit_off)
    exits = first_exits(matrix, thresholds, first_exit_checked=True)
    realised = float(np.mean(np.asarray(table.llm_gflops)[exits]))
    budget = float(f'{realised:.4g}')
    solve_budget(Budget(avg_gflops=budget), table, calibration)  # raises BudgetError outside deer_ros's range
    histogram = np.bincount(exits, minlength=table.num_exits) / exits.size
    return RefinedEntry(avg_gflops=budget, cap=table.num_exits - 1, cost_kind='llm',
                        thresholds=tuple(float(t) for t in thresholds), average_length=float('nan'),
                        average_cost=realised,
                        tuning={'source': 'upstream thresholds (ExitController.set_threshold, exit_dist exp)',
                                'exit_ratio': exit_ratio, 'first_exit_off': first_exit_off,
                                'first_exit_checked': True, 'exit_histogram': histogram.round(4).tolist()})

