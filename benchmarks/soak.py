"""Soak: a long lock-step evaluation through ROS, memory and latency per minute (issue 18 §4).

Starts ``deer_policy`` and ``calvin_bridge`` (embedded simulator, the params
file's budget, one torch thread) with an evaluation over as many chains as it
takes, listens to the policy's ExitStats and samples both processes' resident
memory (VmRSS) every ``--interval`` s, until ``--steps`` policy steps went
through; then stops both nodes. Per interval it prints the steps, the policy's
step latency p50/p99 (ExitStats ``step_latency_ms``) and both RSS values; a leak
shows as RSS growing from row to row, a slowdown as latency growing.

    .venv/bin/python benchmarks/soak.py --steps 10000            # ~10-15 min at 15-20 steps/s
    .venv/bin/python benchmarks/soak.py --steps 1000 --interval 20 --output soak.json

Prints a Markdown table (docs/results.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from deer_ros.cli.demo_ros import evaluation_nodes, ros_env
from deer_ros.resources import config_dir, pretrained_dir

CHAINS = 1000  # more than any soak gets through: the run ends on --steps


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


class StatsListener:
    """Every ExitStats the policy publishes: (arrival time, step latency ms) of its model steps."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from deer_ros.msg import ExitStats
        from deer_ros.nodes.qos import EXIT_STATS_QOS

        rclpy.init()
        self.node = rclpy.create_node('deer_soak')
        self.lock = threading.Lock()
        self.steps: list[tuple[float, float]] = []
        self.node.create_subscription(ExitStats, 'exit_stats', self._on_stats, EXIT_STATS_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_stats(self, msg) -> None:
        if msg.exit_index > 0:  # scripted ready-pose steps run no model
            with self.lock:
                self.steps.append((time.monotonic(), float(msg.step_latency_ms)))

    def since(self, start: float) -> list[float]:
        with self.lock:
            return [latency for at, latency in self.steps if at >= start]

    def count(self) -> int:
        with self.lock:
            return len(self.steps)

    def close(self) -> None:
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=10_000, help='policy (model) steps to run through ROS')
    parser.add_argument('--interval', type=float, default=60.0, help='seconds per row')
    parser.add_argument('--source', default=str(pretrained_dir() / 'tiny'))
    parser.add_argument('--params-file', type=Path, default=config_dir() / 'deer.yaml')
    parser.add_argument('--max-steps', type=int, default=360, help='step budget per subtask')
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix='deer_soak_'))
    policy, bridge = evaluation_nodes(args.source, args.params_file, CHAINS, args.max_steps, logs / 'chains.jsonl',
                                      logs, ros_env(), policy={'num_threads': 1})
    listener = StatsListener()
    rows = []
    try:
        policy.start()
        bridge.start()
        print(f'node logs: {logs}')
        while listener.count() == 0:
            for node in (policy, bridge):
                if not node.running():
                    raise SystemExit(node.death())
            time.sleep(0.5)
        started = time.monotonic()
        while listener.count() < args.steps:
            begin = time.monotonic()
            time.sleep(args.interval)
            latencies = listener.since(begin)
            for node in (policy, bridge):
                if not node.running():
                    raise SystemExit(node.death())
            rows.append({'minute': (begin - started) / 60, 'steps': len(latencies),
                         'steps_per_s': len(latencies) / (time.monotonic() - begin),
                         'latency_ms_p50': float(np.percentile(latencies, 50)) if latencies else float('nan'),
                         'latency_ms_p99': float(np.percentile(latencies, 99)) if latencies else float('nan'),
                         'policy_rss_mb': rss_mb(policy.process.pid), 'bridge_rss_mb': rss_mb(bridge.process.pid),
                         'total_steps': listener.count()})
            row = rows[-1]
            print(f"{row['minute']:5.1f} min: {row['steps']} steps ({row['steps_per_s']:.1f}/s), p50 "
                  f"{row['latency_ms_p50']:.1f} ms, p99 {row['latency_ms_p99']:.1f} ms, RSS policy "
                  f"{row['policy_rss_mb']:.0f} MB, bridge {row['bridge_rss_mb']:.0f} MB", flush=True)
    finally:
        bridge.stop()
        policy.stop()
        listener.close()

    print(f'\n{listener.count()} policy steps through ROS, {args.source}, params {args.params_file}\n')
    print('| from minute | steps | steps/s | step p50 ms | step p99 ms | policy RSS MB | bridge RSS MB |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        print(f"| {row['minute']:.1f} | {row['steps']} | {row['steps_per_s']:.1f} | {row['latency_ms_p50']:.1f} | "
              f"{row['latency_ms_p99']:.1f} | {row['policy_rss_mb']:.0f} | {row['bridge_rss_mb']:.0f} |")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == '__main__':
    main()
