"""Chain-evaluation throughput (chains/min) of the embedded simulator, scripted expert as the policy.

Runs the same chains with 1 and with 2 worker processes, checks that both give
identical results, and reports chains/min, steps/s and the expert's score.
Rendering dominates step time; ``--no-cameras`` shows the physics-only rate.

    .venv/bin/python benchmarks/chain_throughput.py --num-chains 8 --workers 1 2

Prints a Markdown table (paste into docs/simulation_eval.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, disjoint_subsets, generate_chains
from deer_ros.benchmark.evaluation import EmbeddedSim, evaluate
from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.expert.scripted_expert import ExpertPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-chains', type=int, default=8)
    parser.add_argument('--offset', type=int, default=0)
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--scene', default='D')
    parser.add_argument('--no-cameras', action='store_true')
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()

    [chains] = disjoint_subsets(generate_chains(SUPPORTED_TASKS, DEFAULT_NUM_CHAINS), [args.num_chains], args.offset)
    sim = EmbeddedSim(args.scene, cameras=not args.no_cameras)
    rows, reference = [], None
    for workers in args.workers:
        started = time.perf_counter()
        report = evaluate(chains, sim, ExpertPolicy, workers=workers, progress=False)
        seconds = time.perf_counter() - started
        summary = report.to_json()
        del summary['chains']
        if reference is None:
            reference = report.to_json()
        steps = sum(sum(result.steps) for result in report.results)
        rows.append({'workers': workers, 'seconds': seconds, 'chains_per_min': 60 * len(chains) / seconds,
                     'steps_per_s': steps / seconds, 'steps': steps,
                     'identical_to_first': report.to_json() == reference, **summary})

    print(f'scene {args.scene}, cameras {"off" if args.no_cameras else "on"}, {len(chains)} chains, expert policy\n')
    print('| workers | chains/min | steps/s | avg len | 1/5 | 5/5 | same results |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        rates = row['success_rates']
        print(f'| {row["workers"]} | {row["chains_per_min"]:.1f} | {row["steps_per_s"]:.0f} | '
              f'{row["average_length"]:.2f} | {rates[1]:.2f} | {rates[5]:.2f} | {row["identical_to_first"]} |')
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == '__main__':
    main()
