"""Time to re-solve exit thresholds from cached calibration values, and how well budgets are met.

The policy node re-solves whenever the operator changes the average budget, so
this must stay well under a control period (goal: < 50 ms for 8 exits x
10,000 samples). Consistency values are synthetic (log-normal, shrinking with
depth like real exit differences); costs are the paper's 1.3 GFLOPs per
layer with an exit every 2 layers.

    .venv/bin/python benchmarks/budget_solve_speed.py --exits 8 --samples 10000 --budgets 25
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from deer_ros.budget.solver import exit_distribution, feasible_range, greedy_thresholds, solve_average_budget


def synthetic_values(num_samples: int, num_exits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(-3.0, 1.0, size=(num_samples, num_exits)) * np.geomspace(1.0, 0.1, num_exits)
    values[:, 0] = np.nan
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--exits', type=int, default=8)
    parser.add_argument('--samples', type=int, default=10_000)
    parser.add_argument('--budgets', type=int, default=25, help='budgets swept over the feasible range')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    values = synthetic_values(args.samples, args.exits, args.seed)
    costs = 1.3 * 2 * np.arange(1, args.exits + 1)
    low, high = feasible_range(costs)
    timings, errors, geometric_errors = [], [], []
    for budget in np.linspace(low, high, args.budgets)[1:-1]:
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = solve_average_budget(values, costs, budget)
            timings.append((time.perf_counter() - started) * 1e3)
        errors.append(abs(result.relative_error))
        _, counts = greedy_thresholds(values, exit_distribution(math.log(result.q_geometric), args.exits))
        geometric_errors.append(abs(np.dot(counts, costs) / args.samples - budget) / budget)

    print(f'{args.exits} exits x {args.samples} samples, {len(errors)} budgets in ({low:.3g}, {high:.3g})')
    print('| solve time median | solve time max | max realised error | max error of geometric q alone |')
    print('|---|---|---|---|')
    print(f'| {statistics.median(timings):.1f} ms | {max(timings):.1f} ms | {max(errors):.3%} '
          f'| {max(geometric_errors):.3%} |')


if __name__ == '__main__':
    main()
