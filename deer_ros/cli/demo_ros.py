"""The demo through ROS 2: the ``calvin_bridge`` and ``deer_policy`` nodes as processes, chains over DDS.

The demo process starts both nodes (``python -m ...`` with the params file,
so it needs no ``ros2 launch``), listens to the bridge's per-chain results
(progress bar) and its latched summary, prints them and stops the nodes. The
exit histogram and latency come from that summary, which the bridge builds from
the policy's ``ExitStats`` of exactly the executed steps: a subscription of
its own here could miss the first steps while DDS discovery is still running. It uses
``ROS_DOMAIN_ID`` when set, else a random domain in 100-199, so a demo never
talks to robots on the default domain.

The bridge appends each chain to a results file as it ends (``--results``, by
default ``chains.jsonl`` beside the node logs); whatever happens, the demo prints
the chains that file holds, and a node that died is reported with the last lines
of its log. The benchmarks (chain throughput, soak, faults) start and kill nodes
with the same pieces (:func:`evaluation_nodes`, :class:`NodeRun`).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from deer_ros.benchmark.results_file import recorded

POLICY_MODULE = 'deer_ros.nodes.policy_node'
BRIDGE_MODULE = 'deer_ros.nodes.calvin_bridge_node'
TAIL_LINES = 15


def ros_env() -> dict[str, str]:
    """This process's environment with a ROS domain of its own (``ROS_DOMAIN_ID`` if set) and discovery kept on
    this host; applied to this process too, so its listener talks to the nodes it starts."""
    env = dict(os.environ)
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(100, 199)))
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.update({key: env[key] for key in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    return env


def node_command(module: str, params_file: Path, overrides: dict[str, Any]) -> list[str]:
    """``python -m module --ros-args`` with the params file, then each override (JSON: valid YAML, exact types)."""
    command = [sys.executable, '-m', module, '--ros-args', '--params-file', str(params_file)]
    for key, value in overrides.items():
        command += ['-p', f'{key}:={json.dumps(value)}']
    return command


@dataclass
class NodeRun:
    """One node as a process, everything it prints in ``<log_dir>/<name>.log`` (appended across restarts)."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f'{self.name}.log'

    def start(self) -> 'NodeRun':
        with self.log_path.open('a') as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (Ctrl-C), then kill if it is still there after ``timeout`` s; the exit code."""
        if self.running():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return None if self.process is None else self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would end it: no last messages, no clean DDS goodbye."""
        if self.running():
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = self.log_path.read_text(errors='replace') if self.log_path.exists() else ''
        return '\n'.join(text.splitlines()[-lines:])

    def death(self) -> str:
        """Why there is no result: the exit code and the last lines of the log, which usually say why."""
        code = self.process.returncode
        how = f'was killed by {signal.Signals(-code).name}' if code < 0 else f'exited with code {code}'
        return f'the {self.name} node {how}; the last lines of {self.log_path}:\n{self.tail()}'


def policy_overrides(source: str, budget_overrides: dict[str, float]) -> dict[str, Any]:
    """``deer_policy`` parameters for a checkpoint directory or a config name, and the budget."""
    overrides: dict[str, Any] = {f'budget.{key}': float(value) for key, value in budget_overrides.items()}
    if Path(source).is_dir():
        overrides['checkpoint'] = str(source)
    else:
        overrides.update(checkpoint='', model_config=source)
    return overrides


def evaluation_nodes(source: str, params_file: Path, num_chains: int, max_steps: int, results: Path, logs: Path,
                     env: dict[str, str], *, budget: dict[str, float] | None = None,
                     policy: dict[str, Any] | None = None, **bridge: Any) -> tuple[NodeRun, NodeRun]:
    """The policy node and a bridge that evaluates ``num_chains`` chains at once, recording to ``results``
    (not started). ``policy``: more ``deer_policy`` parameters; keywords: more ``calvin_bridge`` ones."""
    policy_node = NodeRun('policy', node_command(POLICY_MODULE, params_file, {
        **policy_overrides(source, budget or {}), **(policy or {})}), env, logs)
    bridge_node = NodeRun('bridge', node_command(BRIDGE_MODULE, params_file, {
        'evaluate_on_start': True, 'num_chains': num_chains, 'max_steps': max_steps, 'results_file': str(results),
        **bridge}), env, logs)
    return policy_node, bridge_node


class Listener:
    """Collects the bridge's chain results (progress bar) and its final summary."""

    def __init__(self, num_chains: int, progress: bool = True) -> None:
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.node = rclpy.create_node('deer_demo')
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.summary: dict | None = None
        self.bar = tqdm(total=num_chains, desc='chains', unit='chain', disable=not progress)
        self.chains: list[dict] = []
        self.node.create_subscription(String, 'evaluation/chain_result', self._on_chain, 100)
        self.node.create_subscription(String, 'evaluation/summary', self._on_summary, latched)

    def _on_chain(self, msg) -> None:
        self.chains.append(json.loads(msg.data))
        self.bar.update()
        self.bar.set_postfix(avg_len=f'{sum(c["successes"] for c in self.chains) / len(self.chains):.2f}',
                             failed=sum(c['error'] is not None for c in self.chains))

    def _on_summary(self, msg) -> None:
        self.summary = json.loads(msg.data)

    def spin_until(self, nodes: list[NodeRun], deadline: float) -> str | None:
        """Until the summary is in; why not otherwise (a node died, with its log's tail, or the time is up)."""
        import rclpy
        while self.summary is None:
            rclpy.spin_once(self.node, timeout_sec=0.2)
            for node in nodes:
                if not node.running():
                    return node.death()
            if time.monotonic() > deadline:
                return 'no evaluation summary in time'
        return None


def format_chains(results: Path) -> list[str]:
    """One line per chain the results file holds (the last record of each): what a stopped run kept."""
    lines = []
    for index, record in sorted(recorded(results).items()):
        restarted = f' (started again {record["restarted"]} times: the policy was lost)' if record.get('restarted') \
            else ''
        outcome = (f'failed: {record["error"]}' if record['error'] is not None
                   else f'{record["successes"]}/5 subtasks, steps {record["steps"]}')
        lines.append(f'  chain {index}: {outcome}{restarted}')
    return lines


def print_summary(summary: dict) -> None:
    gflops = summary.get('gflops', {})
    failed = f"   failed: {summary['num_failed']} (counted as 0 subtasks)" if summary.get('num_failed') else ''
    print(f"\nchains: {summary['num_chains']}   average successful length: {summary['average_length']:.3f}{failed}")
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


def run_ros_chains(source: str, params_file: Path, budget_overrides: dict[str, float], num_chains: int,
                   max_steps: int, backend: str, calvin_dataset: str | None, timeout_s: float,
                   results: Path | None = None, resume: bool = False) -> int:
    """The demo: both nodes, ``num_chains`` chains, the report; 0 only if every chain ran to its end."""
    import rclpy

    env = ros_env()
    logs = Path(tempfile.mkdtemp(prefix='deer_demo_'))
    results = (results or logs / 'chains.jsonl').resolve()
    label = f'{source} (params {params_file}, budget overrides {budget_overrides or "none"})'
    print(f'policy: {source}   params: {params_file}   budget overrides: {budget_overrides or "none"}   '
          f'node logs: {logs}   results: {results}')
    bridge = {'resume': resume, 'policy_label': label, 'backend': backend}
    if calvin_dataset:
        bridge['calvin_dataset'] = calvin_dataset
    nodes = evaluation_nodes(source, params_file, num_chains, max_steps, results, logs, env, budget=budget_overrides,
                             **bridge)
    rclpy.init()
    try:
        for node in nodes:
            node.start()
        listener = Listener(num_chains)
        problem = listener.spin_until(nodes, time.monotonic() + timeout_s)
        listener.bar.close()
        summary = listener.summary
    finally:
        for node in nodes:
            node.stop()
        rclpy.try_shutdown()
    kept = format_chains(results) if results.exists() else []
    if kept:
        print(f'\nchains in {results}:', *kept, sep='\n')
    if problem is not None:
        raise SystemExit(f'evaluation stopped: {problem}\n'
                         f'{len(kept)} chains were kept in {results}; add --results {results} --resume to continue')
    print_summary(summary)
    if 'error' in summary or summary.get('num_failed'):
        reason = summary.get('error') or f"{summary['num_failed']} chains failed (reasons above)"
        print(f'evaluation incomplete: {reason} (node logs in {logs}); --results {results} --resume runs the '
              'missing and failed chains', file=sys.stderr)
        return 1
    return 0
