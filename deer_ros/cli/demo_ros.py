"""The demo through ROS 2: the ``calvin_bridge`` and ``deer_policy`` nodes as processes, chains over DDS.

The demo process starts both nodes (``python -m ...`` with the params file,
so it needs no ``ros2 launch``), listens to the bridge's per-chain results
(progress bar) and its latched summary, prints them and stops the nodes. The
exit histogram and latency come from that summary, which the bridge builds from
the policy's ``ExitStats`` of exactly the executed steps: a subscription of
its own here could miss the first steps while DDS discovery is still running. It uses
``ROS_DOMAIN_ID`` when set, else a random domain in 100-199, so a demo never
talks to robots on the default domain.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm


def _node_command(module: str, params_file: Path, overrides: dict[str, object]) -> list[str]:
    command = [sys.executable, '-m', module, '--ros-args', '--params-file', str(params_file)]
    for key, value in overrides.items():
        command += ['-p', f'{key}:={value}']
    return command


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Listener:
    """Collects the bridge's chain results (progress bar) and its final summary."""

    def __init__(self, num_chains: int) -> None:
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.node = rclpy.create_node('deer_demo')
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
        self.summary: dict | None = None
        self.bar = tqdm(total=num_chains, desc='chains', unit='chain')
        self.lengths: list[int] = []
        self.node.create_subscription(String, 'evaluation/chain_result', self._on_chain, 100)
        self.node.create_subscription(String, 'evaluation/summary', self._on_summary, latched)

    def _on_chain(self, msg) -> None:
        self.lengths.append(int(json.loads(msg.data)['successes']))
        self.bar.update()
        self.bar.set_postfix(avg_len=f'{sum(self.lengths) / len(self.lengths):.2f}')

    def _on_summary(self, msg) -> None:
        self.summary = json.loads(msg.data)


def run_ros_chains(source: str, params_file: Path, budget_overrides: dict[str, float], num_chains: int,
                   max_steps: int, backend: str, calvin_dataset: str | None, timeout_s: float) -> int:
    import rclpy

    env = dict(os.environ)
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(100, 199)))
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    policy_params: dict[str, object] = {f'budget.{k}': float(v) for k, v in budget_overrides.items()}
    if Path(source).is_dir():
        policy_params['checkpoint'] = source
    else:
        policy_params.update(checkpoint='', model_config=source)
    bridge_params: dict[str, object] = {'evaluate_on_start': True, 'num_chains': num_chains, 'max_steps': max_steps,
                                        'backend': backend}
    if calvin_dataset:
        bridge_params['calvin_dataset'] = calvin_dataset
    logs = Path(tempfile.mkdtemp(prefix='deer_demo_'))
    print(f'policy: {source}   params: {params_file}   budget overrides: {budget_overrides or "none"}   '
          f'node logs: {logs}')
    processes = []
    rclpy.init()
    try:
        for name, module, overrides in (('policy', 'deer_ros.nodes.policy_node', policy_params),
                                        ('bridge', 'deer_ros.nodes.calvin_bridge_node', bridge_params)):
            log = open(logs / f'{name}.log', 'w')
            processes.append((name, subprocess.Popen(_node_command(module, params_file, overrides), env=env,
                                                     stdout=log, stderr=subprocess.STDOUT)))
        listener = _Listener(num_chains)
        deadline = time.monotonic() + timeout_s
        while listener.summary is None:
            rclpy.spin_once(listener.node, timeout_sec=0.2)
            for name, process in processes:
                if process.poll() is not None:
                    raise SystemExit(f'the {name} node exited with code {process.returncode}; log: {logs / name}.log')
            if time.monotonic() > deadline:
                raise SystemExit(f'no evaluation summary after {timeout_s:.0f} s; node logs in {logs}')
        listener.bar.close()
        summary = listener.summary
        if 'error' in summary:
            raise SystemExit(f"evaluation failed: {summary['error']} (node logs in {logs})")
        gflops = summary.get('gflops', {})
        print(f"\nchains: {summary['num_chains']}   average successful length: {summary['average_length']:.3f}")
        print('success rate: ' + '  '.join(f'{k}/5: {v * 100:5.1f}%' for k, v in summary['success_rates'].items()))
        print(f"LLM GFLOPs   avg {gflops.get('avg_llm_gflops', float('nan')):.4f}   "
              f"peak {gflops.get('peak_llm_gflops', float('nan')):.4f}")
        print(f"total GFLOPs avg {gflops.get('avg_total_gflops', float('nan')):.4f}   "
              f"peak {gflops.get('peak_total_gflops', float('nan')):.4f}")
        if gflops.get('policy_steps'):
            print('exit histogram: ' + '  '.join(f'exit {k}: {share:6.1%}'
                                                for k, share in sorted(gflops['exit_histogram'].items(),
                                                                       key=lambda item: int(item[0]))))
            print(f"step latency ms  p50 {gflops['latency_ms_p50']:.1f}   p99 {gflops['latency_ms_p99']:.1f}")
            print(f"model steps {gflops['policy_steps']}, scripted steps back to the ready pose "
                  f"{gflops['scripted_steps']} (no model cost; figures above are per model step)")
        return 0
    finally:
        for _, process in processes:
            _stop(process)
        rclpy.try_shutdown()
