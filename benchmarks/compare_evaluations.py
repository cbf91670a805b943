"""Paired comparison of two policies from `deer-ros evaluate` outputs: same chains, chain-by-chain differences.

Closed-loop success varies far more between chains than between policies, so
two averages on the same chains are compared through their per-chain
differences (the interval ``benchmarks/tradeoff.py`` reports too). Several
files per side are pooled (e.g. the reporting slice 0-47 and a tuning slice
224-271); chains are matched by their position in the fixed chain list and
must have the same tasks, scene and step limit on both sides.

    .venv/bin/python benchmarks/compare_evaluations.py \
        --runs deer_report48.json deer_tune48.json --reference full_report48.json full_tune48.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from deer_ros.benchmark.statistics import confidence_interval, paired_difference

ChainKey = tuple[Any, ...]


def chain_successes(paths: list[Path]) -> tuple[dict[ChainKey, int], float]:
    """Successful lengths keyed by (chain seed, scene, step limit, position in the chain list, tasks), and the
    average LLM GFLOPs per model step over all files (scripted ready-pose steps cost nothing and are left out)."""
    successes: dict[ChainKey, int] = {}
    gflops, steps = 0.0, 0.0
    for path in paths:
        report = json.loads(Path(path).read_text())
        settings = report['settings']
        for chain in report['chains']:
            key = (settings['chain_seed'], settings['scene'], settings['max_steps'],
                   settings['offset'] + chain['index'], tuple(chain['tasks']))
            if key in successes:
                raise ValueError(f'{path}: chain {key[3]} is already in an earlier file')
            successes[key] = chain['successes']
            model_steps = sum(chain['steps']) * (1.0 - chain['step_stats'].get('ready_pose', 0.0))
            gflops += chain['step_stats'].get('llm_gflops', 0.0) * model_steps
            steps += model_steps
    return successes, gflops / steps if steps else float('nan')


def compare(runs: list[Path], reference: list[Path]) -> dict[str, float]:
    """Averages, their intervals and the paired difference ``runs - reference`` over the chains both sides ran."""
    ours, our_cost = chain_successes(runs)
    theirs, their_cost = chain_successes(reference)
    if set(ours) != set(theirs):
        raise ValueError(f'the two sides ran different chains ({len(set(ours) ^ set(theirs))} not on both sides); '
                         'compare runs of the same slices')
    keys = sorted(ours, key=lambda key: key[3])
    a, b = [ours[k] for k in keys], [theirs[k] for k in keys]
    difference, difference_ci = paired_difference(a, b)
    return {'chains': len(keys), 'runs': float(np.mean(a)), 'runs_ci95': confidence_interval(a),
            'reference': float(np.mean(b)), 'reference_ci95': confidence_interval(b),
            'paired_difference': difference, 'paired_ci95': difference_ci,
            'runs_llm_gflops': our_cost, 'reference_llm_gflops': their_cost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', nargs='+', type=Path, required=True, help='evaluation JSONs of the policy to judge')
    parser.add_argument('--reference', nargs='+', type=Path, required=True, help='evaluation JSONs to compare with')
    args = parser.parse_args()
    result = compare(args.runs, args.reference)
    print(f"{result['chains']} chains: {result['runs']:.3f} ± {result['runs_ci95']:.2f} "
          f"({result['runs_llm_gflops']:.4f} LLM GFLOPs) vs {result['reference']:.3f} "
          f"± {result['reference_ci95']:.2f} ({result['reference_llm_gflops']:.4f}); "
          f"paired difference {result['paired_difference']:+.3f} ± {result['paired_ci95']:.3f}")
    print(json.dumps(result))


if __name__ == '__main__':
    main()
