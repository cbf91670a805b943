"""Per-exit policy step latency and counted GFLOPs of the shipped model configs.

For each config and each exit k, the model is capped at k (static
truncation: every step runs to exit k) and timed over repeated steps on
random observations; the counted cost table gives the GFLOPs.

    .venv/bin/python benchmarks/model_latency.py --configs tiny smollm2 --steps 30 --threads 2

Prints a Markdown table (paste into docs/results.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.model import load_model
from deer_ros.model.flops import cost_table_for
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.types import Observation


def measure(config: str, steps: int, warmup: int, device: str) -> list[dict]:
    model = load_model(config, device=device)
    table = cost_table_for(model.config)
    rng = np.random.default_rng(0)
    observations = [Observation(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                                rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)) for _ in range(8)]
    rows = []
    for num_exits in range(table.num_exits, 0, -1):  # truncate downwards: one model, no reloads
        model.truncate(num_exits)
        policy = EarlyExitPolicy(model, ExitCriterion.always_last(num_exits), table.truncated(num_exits))
        latencies = []
        for step in range(warmup + steps):
            started = time.perf_counter()
            policy.step(observations[step % len(observations)], 'open the drawer')
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            if step >= warmup:
                latencies.append((time.perf_counter() - started) * 1e3)
        k = num_exits - 1
        rows.append({'config': config, 'exit': num_exits, 'layers': table.exit_layers[k],
                     'llm_gflops': table.llm_gflops[k], 'total_gflops': table.total_gflops(k),
                     'param_mb': table.param_bytes[k] / 2**20,
                     'latency_ms_p50': statistics.median(latencies),
                     'latency_ms_p90': float(np.percentile(latencies, 90))})
    return sorted(rows, key=lambda row: row['exit'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=['tiny', 'smollm2'])
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--output', help='write the rows as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for config in args.configs for row in measure(config, args.steps, args.warmup, args.device)]
    print(f'device={args.device} threads={args.threads} torch={torch.__version__}\n')
    print('| config | exit | layers | LLM GFLOPs | total GFLOPs | params MB | step p50 ms | step p90 ms |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['config']} | {r['exit']} | {r['layers']} | {r['llm_gflops']:.3f} | {r['total_gflops']:.3f} | "
              f"{r['param_mb']:.1f} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p90']:.1f} |")
    if args.output:
        with open(args.output, 'w') as handle:
            json.dump(rows, handle, indent=2)


if __name__ == '__main__':
    main()
