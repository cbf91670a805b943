"""DeeR's trade-off, measured in one run: success versus GFLOPs on held-out chains.

Evaluates, on the same chains of the embedded simulator:
  * DeeR under several average-LLM-GFLOPs budgets (thresholds solved from the
    checkpoint's calibration file, then corrected online so the realised average
    meets the budget, as the node does with ``budget.track_average``;
    ``--offline-thresholds`` keeps the offline solve),
  * static truncation at every exit (every step runs to exit k),
  * full depth (= static truncation at the last exit).
For each: average successful length with a 95 % confidence interval, average
and peak LLM GFLOPs, average total GFLOPs, resident parameter memory and step
latency. Headlines: full-depth / DeeR average-GFLOPs ratio at equal success,
and realised-versus-requested budget error.

"Equal success" is judged two ways, both reported: strictly (the cheapest DeeR
setting whose average length is at least full depth's) and paired (the cheapest
DeeR setting whose per-chain difference to full depth, chain by chain on the
same chains, has a 95 % interval reaching 0 or above, i.e. is not measurably
worse). The strict rule flips with a single chain when success hardly depends
on depth; the paired one says what the sample can resolve.

    .venv/bin/python benchmarks/tradeoff.py --source deer_ros/pretrained/tiny --chains 50 --workers 2 \
        --output runs/tradeoff
    .venv/bin/python benchmarks/tradeoff.py --reduced --output /tmp/tradeoff   # CI smoke run

Reporting chains start at ``--offset`` (default 0, DeeR's reporting slice is
chains 0..223) of the fixed chain list; ``deer-ros refine`` tunes on chains
from 224 on, so the two never overlap.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, disjoint_subsets, generate_chains
from deer_ros.benchmark.evaluation import EmbeddedSim, EvaluationReport, evaluate
from deer_ros.benchmark.statistics import confidence_interval, paired_difference
from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.budget.caps import Budget
from deer_ros.policy.chain_policy import ChainPolicyFactory, peak_from_histogram
from deer_ros.policy.runtime import PolicyRuntime


@dataclass
class Setting:
    name: str
    kind: str  # 'deer' | 'static'
    budget: Budget


def settings_for(source: str, budgets: list[float] | None, num_budgets: int) -> tuple[list[Setting], object]:
    """Static truncation at every exit and DeeR budgets (given, or spread over the feasible range)."""
    runtime = PolicyRuntime(source)
    table = runtime.cost_table
    settings = [Setting(f'static exit {k + 1}', 'static', Budget(peak_gflops=table.llm_gflops[k]))
                for k in range(table.num_exits)]
    if budgets is None:
        low, high = runtime.thresholds.feasible_average()
        budgets = list(np.linspace(low, high, num_budgets + 2)[1:-1])
    deer = [Setting(f'DeeR {b:.4g}', 'deer', Budget(avg_gflops=float(b))) for b in budgets]
    # Full depth first, then DeeR, then the shallower static exits: an interrupted run keeps the headline rows.
    return [settings[-1], *deer, *settings[-2::-1]], table


def row_for(setting: Setting, report: EvaluationReport, table) -> dict:
    stats = report.step_stats()
    successes = [result.successes for result in report.results]
    row = {'name': setting.name, 'kind': setting.kind, 'requested_avg_gflops': setting.budget.avg_gflops,
           'average_length': report.average_length, 'ci95': confidence_interval(successes),
           'successes': successes, 'success_rates': report.success_rates,
           'avg_llm_gflops': stats.get('llm_gflops', float('nan')),
           'peak_llm_gflops': peak_from_histogram(stats, table.llm_gflops),
           'avg_total_gflops': stats.get('total_gflops', float('nan')),
           'avg_exit': stats.get('exit', float('nan')), 'latency_ms': stats.get('latency_ms', float('nan')),
           'exit_histogram': [stats.get(f'exit_{k + 1}', 0.0) for k in range(table.num_exits)]}
    deepest = max((k for k, share in enumerate(row['exit_histogram']) if share > 0), default=0)
    row['param_mib'] = table.param_bytes[deepest] / 2**20
    if setting.budget.avg_gflops:
        row['budget_error'] = row['avg_llm_gflops'] / setting.budget.avg_gflops - 1.0
    return row


def compare_with_full_depth(rows: list[dict]) -> None:
    """Add each DeeR row's paired per-chain difference to full depth (``paired_difference`` ± ``paired_ci95``)."""
    full = full_depth(rows)
    for row in rows:
        if row['kind'] == 'deer':
            row['paired_difference'], row['paired_ci95'] = paired_difference(row['successes'], full['successes'])


def full_depth(rows: list[dict]) -> dict:
    """The most expensive static row: truncation at the last exit."""
    return max((r for r in rows if r['kind'] == 'static'), key=lambda r: r['avg_llm_gflops'])


def headlines(rows: list[dict]) -> dict:
    """Ratios full depth / cheapest DeeR setting of equal success, strict and paired (none when full depth solves nothing).

    Reads the paired differences that ``compare_with_full_depth`` added.
    """
    full = full_depth(rows)
    deer = [r for r in rows if r['kind'] == 'deer']
    solved = full['average_length'] > 0
    strict = [r for r in deer if solved and r['average_length'] >= full['average_length']]
    paired = [r for r in deer if solved and r['paired_difference'] + r['paired_ci95'] >= 0]

    def cheapest(matching: list[dict]) -> dict | None:
        return min(matching, key=lambda r: r['avg_llm_gflops'], default=None)

    def ratio(row: dict | None) -> float | None:
        return full['avg_llm_gflops'] / row['avg_llm_gflops'] if row else None

    best, best_paired = cheapest(strict), cheapest(paired)
    return {'full_depth_average_length': full['average_length'],
            'full_over_deer_gflops_at_equal_success': ratio(best),
            'deer_setting_matching_full_depth': best['name'] if best else None,
            'full_over_deer_gflops_not_measurably_worse': ratio(best_paired),
            'deer_setting_not_measurably_worse': best_paired['name'] if best_paired else None,
            'max_abs_budget_error': max((abs(r['budget_error']) for r in deer), default=None)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    for kind, style, label in (('static', 's--', 'static truncation'), ('deer', 'o-', 'DeeR (average budget)')):
        points = sorted((r['avg_llm_gflops'], r['average_length'], r['ci95']) for r in rows if r['kind'] == kind)
        if points:
            x, y, err = zip(*points)
            axis.errorbar(x, y, yerr=[0 if math.isnan(e) else e for e in err], fmt=style, capsize=3, label=label)
    axis.set_xlabel('average LLM GFLOPs per action')
    axis.set_ylabel('average successful length (of 5)')
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(rows: list[dict], head: dict) -> str:
    lines = ['| setting | avg len ± 95% CI | avg LLM GFLOPs | peak LLM GFLOPs | avg total GFLOPs | params MiB '
             '| avg exit | step ms | budget error | vs full depth, paired |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['kind'], r['avg_llm_gflops'])):
        error = f"{r['budget_error'] * 100:+.1f}%" if 'budget_error' in r else ''
        paired = f"{r['paired_difference']:+.2f} ± {r['paired_ci95']:.2f}" if 'paired_difference' in r else ''
        lines.append(f"| {r['name']} | {r['average_length']:.2f} ± {r['ci95']:.2f} | {r['avg_llm_gflops']:.4f} | "
                     f"{r['peak_llm_gflops']:.4f} | {r['avg_total_gflops']:.4f} | {r['param_mib']:.1f} | "
                     f"{r['avg_exit']:.2f} | {r['latency_ms']:.1f} | {error} | {paired} |")
    lines.append('')
    lines.append(f'headlines: {json.dumps(head)}')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', default='tiny', help='checkpoint directory (with calibration) or config name')
    parser.add_argument('--chains', type=int, default=50)
    parser.add_argument('--offset', type=int, default=0, help='first reporting chain (refinement tunes on 224..)')
    parser.add_argument('--budgets', type=float, nargs='*', default=None, help='average LLM GFLOPs budgets')
    parser.add_argument('--num-budgets', type=int, default=5)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--max-steps', type=int, default=360)
    parser.add_argument('--scene', default='D')
    parser.add_argument('--offline-thresholds', action='store_true',
                        help='DeeR rows without closed-loop budget tracking (the offline solve only)')
    parser.add_argument('--reduced', action='store_true', help='CI smoke run: 1 chain, 12 steps, 2 budgets, static exits first and last')
    parser.add_argument('--output', type=Path, required=True, help='directory for results.json, tradeoff.png, table.md')
    args = parser.parse_args()
    if args.reduced:
        args.chains, args.max_steps, args.num_budgets = 1, 12, 2
    args.output.mkdir(parents=True, exist_ok=True)

    settings, table = settings_for(args.source, args.budgets, args.num_budgets)
    if args.reduced:  # first and last static exit only
        settings = [s for s in settings if s.kind == 'deer' or s.name in ('static exit 1', f'static exit {table.num_exits}')]
    [chains] = disjoint_subsets(generate_chains(list(SUPPORTED_TASKS), DEFAULT_NUM_CHAINS), [args.chains], args.offset)
    rows: list[dict] = []
    for setting in settings:
        print(f'== {setting.name}', flush=True)
        factory = ChainPolicyFactory(args.source, setting.budget, track_average=not args.offline_thresholds)
        report = evaluate(chains, EmbeddedSim(args.scene), factory, workers=args.workers, max_steps=args.max_steps)
        rows.append(row_for(setting, report, table))
        summary = write_outputs(args, table, rows)  # after every setting, so an interrupted run keeps what it measured
    print(summary)


def write_outputs(args: argparse.Namespace, table, rows: list[dict]) -> str:
    """results.json, tradeoff.png and table.md for the rows so far; returns the table."""
    compare_with_full_depth(rows)
    head = headlines(rows)
    (args.output / 'results.json').write_text(json.dumps(
        {'source': args.source, 'chains': args.chains, 'offset': args.offset, 'max_steps': args.max_steps,
         'track_average': not args.offline_thresholds,
         'cost_table': asdict(table), 'rows': rows, 'headlines': head}, indent=1))
    plot(rows, args.output / 'tradeoff.png')
    summary = markdown(rows, head)
    (args.output / 'table.md').write_text(summary + '\n')
    return summary


if __name__ == '__main__':
    main()
