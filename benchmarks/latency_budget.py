"""A peak step-time budget under CPU load: the measured latency table, the cap it gives, the realised step times.

Measures (or reuses from the user cache) the per-exit latency table of the
shipped policy on this machine, caps it at the deepest exit whose p99 fits
``--peak-ms``, then runs a 30 Hz control loop where every step runs to the cap
(the worst case a peak budget must hold for):

1. ``no burners``: the machine's own load (the load average is reported);
2. ``loaded``: ``--burners`` busy-loop processes compete for the CPU. The loop
   records each step in a :class:`~deer_ros.budget.latency_drift.LatencyWatch`;
   on a drift it re-measures the table (under the load), re-solves the cap and
   goes on, as the node does.

    .venv/bin/python benchmarks/latency_budget.py --peak-ms 25 --threads 1 --burners 2 --steps 300

Prints Markdown tables (the table, then realised p50/p99/max per segment) and
writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.budget.latency import LatencyCache, LatencyTable
from deer_ros.budget.latency_budget import latency_cap
from deer_ros.budget.latency_drift import DEFAULT_FACTOR, LatencyWatch
from deer_ros.budget.solver import BudgetError
from deer_ros.calvin_layout import CONTROL_HZ, GRIPPER_CAMERA_SHAPE, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE
from deer_ros.model import load_model
from deer_ros.model.flops import cost_table_for
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.latency_probe import (
    PROBE_INSTRUCTION,
    cached_latency_table,
    latency_key,
    measure_latency_table,
    source_identity,
)
from deer_ros.policy.types import Observation
from deer_ros.resources import resolve_checkpoint


def table_rows(table: LatencyTable, peak_ms: float) -> list[str]:
    rows = ['| exit | layers | mean ms | p50 ms | p99 ms | fits peak |', '|---|---|---|---|---|---|']
    for k, peak in enumerate(table.peak_costs()):
        rows.append(f'| {k + 1} | {table.exit_layers[k]} | {table.mean_ms[k]:.1f} | {table.p50_ms[k]:.1f} | '
                    f'{table.p99_ms[k]:.1f} | {"yes" if peak <= peak_ms else "no"} |')
    return rows


def summary(name: str, cap: int, times: tuple[list[float], list[float]], peak_ms: float) -> dict:
    """Wall-clock figures of a segment, and the step thread's CPU time (a gap between the two: the thread waited)."""
    wall, cpu = np.asarray(times[0]), np.asarray(times[1])
    return {'segment': name, 'exit': cap + 1, 'steps': int(wall.size), 'p50_ms': float(np.percentile(wall, 50)),
            'p99_ms': float(np.percentile(wall, 99)), 'max_ms': float(wall.max()),
            'over_peak': float(np.mean(wall > peak_ms)), 'cpu_p99_ms': float(np.percentile(cpu, 99)),
            'load_avg_1min': os.getloadavg()[0]}


def random_frames(policy: EarlyExitPolicy, count: int = 8) -> list[Observation]:
    rng = np.random.default_rng(1)
    proprio = policy.model.config.use_proprio
    return [Observation(rng.integers(0, 256, STATIC_CAMERA_SHAPE, dtype=np.uint8),
                        rng.integers(0, 256, GRIPPER_CAMERA_SHAPE, dtype=np.uint8),
                        rng.uniform(-1.0, 1.0, ROBOT_OBS_DIM) if proprio else None) for _ in range(count)]


def control_loop(policy: EarlyExitPolicy, frames: list[Observation], cap: int, steps: int,
                 watch: LatencyWatch | None = None) -> tuple[tuple[list[float], list[float]], str | None]:
    """Up to ``steps`` steps to exit ``cap`` at 30 Hz: ``((wall ms, CPU ms), drift)``; a drift ends it early."""
    period = 1.0 / CONTROL_HZ
    wall: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter()
    for step in range(steps):
        started = time.thread_time()
        _, info = policy.step(frames[step % len(frames)], PROBE_INSTRUCTION, max_exit=cap)
        cpu.append((time.thread_time() - started) * 1e3)
        wall.append(info.latency_ms)
        drift = watch.record(info.exit_index, info.latency_ms) if watch is not None else None
        if drift is not None:
            return (wall, cpu), str(drift)
        deadline = max(deadline + period, time.perf_counter())  # late: the next period starts now
        time.sleep(max(0.0, deadline - time.perf_counter()))
    return (wall, cpu), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', default='tiny', help='a checkpoint directory or a shipped policy name')
    parser.add_argument('--peak-ms', type=float, default=25.0, help='the peak step-time budget (30 Hz: 33.3 ms)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--burners', type=int, default=2, help='busy-loop processes during the loaded phase')
    parser.add_argument('--priority', choices=('normal', 'nice', 'rt'), default='normal',
                        help="the policy's scheduling: as the burners, nice -10, or SCHED_RR 10 (chrt -r 10)")
    parser.add_argument('--steps', type=int, default=300, help='steps per segment (300 = 10 s at 30 Hz)')
    parser.add_argument('--repetitions', type=int, default=20, help='timed rounds per exit in a measurement')
    parser.add_argument('--factor', type=float, default=DEFAULT_FACTOR, help='drift factor of the LatencyWatch')
    parser.add_argument('--fresh', action='store_true', help='measure even when a cached table exists')
    parser.add_argument('--cache-dir', help='latency cache directory (default: the user cache)')
    parser.add_argument('--output', help='write the tables and figures as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.priority == 'nice':
        os.nice(-10)
    elif args.priority == 'rt':  # the calling thread, which runs the steps with one intra-op thread
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))

    checkpoint = resolve_checkpoint(args.checkpoint)
    model = load_model(checkpoint)
    policy = EarlyExitPolicy(model, ExitCriterion.always_last(model.num_exits), cost_table_for(model.config))
    key = latency_key(source_identity(checkpoint, model.config), 'cpu')
    started = time.perf_counter()
    measure = {'instruction_encoder': policy.instruction_encoder, 'cost_table': policy.cost_table,
               'repetitions': args.repetitions}
    table, reused = cached_latency_table(model, key, LatencyCache(args.cache_dir), refresh=args.fresh, **measure)
    took = 'reused from the cache' if reused else f'measured in {time.perf_counter() - started:.1f} s'
    print(f'{key.describe()}; checkpoint {args.checkpoint} ({key.checkpoint[:12]}); table {took}; '
          f'load avg {os.getloadavg()[0]:.2f}\n')
    print('\n'.join(table_rows(table, args.peak_ms)) + '\n')
    try:
        cap = latency_cap(table, args.peak_ms)
    except BudgetError as error:
        sys.exit(f'peak_ms rejected: {error}')
    print(f'peak_ms {args.peak_ms:g} -> exit {cap + 1} of {table.num_exits}\n')

    frames = random_frames(policy)
    segments = [summary('no burners', cap, control_loop(policy, frames, cap, args.steps)[0], args.peak_ms)]
    tables = {'start': table}
    burners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(args.burners)]
    try:
        time.sleep(1.0)  # let the scheduler spread the burners
        watch = LatencyWatch(table, factor=args.factor)
        for remeasure in range(4):
            times, drift = control_loop(policy, frames, cap, args.steps, watch)
            segments.append(summary(f'loaded, table {len(tables) - 1}', cap, times, args.peak_ms))
            if drift is None:
                break
            table = measure_latency_table(model, key, **measure)
            tables[f'loaded {remeasure + 1}'] = table
            try:
                cap = latency_cap(table, args.peak_ms)
            except BudgetError as error:  # the node keeps its cap and reports that the budget does not hold
                print(f'drift: {drift}; re-measured under load: {error}')
                break
            watch.reset(table)
            print(f'drift: {drift}; re-measured under load -> exit {cap + 1}')
            print('\n'.join(table_rows(table, args.peak_ms)) + '\n')
    finally:
        for burner in burners:
            burner.terminate()
            burner.wait()

    print(f'peak_ms {args.peak_ms:g}, {args.burners} burners, {args.threads} thread(s), {args.priority} priority, '
          '30 Hz, every step to the cap\n')
    print('| segment | exit | steps | p50 ms | p99 ms | max ms | steps over peak | CPU p99 ms | load avg |')
    print('|---|---|---|---|---|---|---|---|---|')
    for s in segments:
        print(f"| {s['segment']} | {s['exit']} | {s['steps']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
              f"{s['max_ms']:.1f} | {s['over_peak']:.1%} | {s['cpu_p99_ms']:.1f} | {s['load_avg_1min']:.2f} |")
    if args.output:
        with open(args.output, 'w') as handle:
            json.dump({'key': asdict(key), 'peak_ms': args.peak_ms, 'burners': args.burners, 'priority': args.priority,
                       'tables': {name: t.to_dict() for name, t in tables.items()}, 'segments': segments},
                      handle, indent=2)


if __name__ == '__main__':
    main()
