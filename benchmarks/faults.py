"""Faults: kill and restart each node during a ROS evaluation; nothing finished may be lost (issue 18 §2, §4).

One evaluation of ``--chains`` chains (``calvin_bridge`` + ``deer_policy`` as
processes, results file in a temporary directory), with two faults:

1. once chain 0 is recorded and the next chain is under way, the policy node is
   killed (SIGKILL: no goodbye, DDS keeps its endpoints until their lease runs
   out) and a new one started ``--restart-delay`` s later: the bridge must start
   that chain again from its initial state and mark it (``restarted``);
2. once a further chain is recorded, the bridge is killed (SIGKILL) and a new one
   started with ``resume:=true`` on the same results file: every chain recorded
   before the kill must be kept as it was, and the run must complete.

Reports the time from each kill to the run going on, and checks the final file:
all chains recorded, none failed, the restarted chain marked, the chains
recorded before the bridge was killed unchanged.

    .venv/bin/python benchmarks/faults.py --chains 4 --max-steps 60

Prints a Markdown table (docs/results.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from deer_ros.benchmark.results_file import recorded
from deer_ros.cli.demo_ros import NodeRun, evaluation_nodes, ros_env
from deer_ros.resources import config_dir, pretrained_dir

STARTUP_S = 600.0


def wait_until(predicate, timeout: float, *nodes: NodeRun) -> float:
    """Seconds until ``predicate()``; a node that dies meanwhile ends the benchmark with its log's tail."""
    started = time.monotonic()
    while not predicate():
        for node in nodes:
            if not node.running():
                raise SystemExit(node.death())
        if time.monotonic() - started > timeout:
            raise SystemExit(f'timed out after {timeout:.0f} s')
        time.sleep(0.1)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--chains', type=int, default=4, help='at least 3: one per fault and one after')
    parser.add_argument('--max-steps', type=int, default=60, help='step budget per subtask (short: faster chains)')
    parser.add_argument('--restart-delay', type=float, default=5.0, help='seconds between a kill and the restart')
    parser.add_argument('--into-chain', type=float, default=1.5, help='seconds into a chain before a kill')
    parser.add_argument('--source', default=str(pretrained_dir() / 'tiny'))
    parser.add_argument('--params-file', type=Path, default=config_dir() / 'deer.yaml')
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()
    if args.chains < 3:
        parser.error('--chains must be at least 3')

    env = ros_env()
    logs = Path(tempfile.mkdtemp(prefix='deer_faults_'))
    results = logs / 'chains.jsonl'

    def nodes(**bridge: object) -> tuple[NodeRun, NodeRun]:
        return evaluation_nodes(args.source, args.params_file, args.chains, args.max_steps, results, logs, env,
                                policy={'num_threads': 1}, shutdown_after_evaluation=True, **bridge)

    policy, bridge = (node.start() for node in nodes())
    figures: dict[str, object] = {'logs': str(logs)}
    try:
        print(f'node logs and results: {logs}')
        wait_until(lambda: results.exists() and 0 in recorded(results), STARTUP_S, policy, bridge)
        time.sleep(args.into_chain)
        victim = max(recorded(results)) + 1
        policy.kill()
        print(f'policy killed during chain {victim}')
        time.sleep(args.restart_delay)
        killed_at = time.monotonic()
        policy = nodes()[0].start()
        wait_until(lambda: victim in recorded(results), STARTUP_S, policy, bridge)
        figures['policy_restart_to_chain_end_s'] = time.monotonic() - killed_at
        print(f'chain {victim} recorded again after the restart')

        time.sleep(args.into_chain)
        kept = recorded(results)
        bridge.kill()
        print(f'bridge killed with {len(kept)} chains recorded')
        time.sleep(args.restart_delay)
        bridge = nodes(resume=True)[1].start()
        figures['bridge_resume_to_end_s'] = wait_until(lambda: not bridge.running(), STARTUP_S, policy)
        figures['bridge_exit_code'] = bridge.process.returncode
    finally:
        bridge.stop()
        policy.stop()

    final = recorded(results)
    checks = {
        'every chain recorded': sorted(final) == list(range(args.chains)),
        'no chain failed': all(record['error'] is None for record in final.values()),
        f'chain {victim} marked restarted': final[victim].get('restarted', 0) >= 1,
        'chains recorded before the bridge was killed kept as they were': all(final[i] == kept[i] for i in kept),
        'resumed bridge exited 0': figures['bridge_exit_code'] == 0,
    }
    figures.update(checks=checks, chains={index: [r['successes'], r['steps'], r.get('restarted', 0)]
                                          for index, r in sorted(final.items())})
    print('\n| check | result |\n|---|---|')
    for name, ok in checks.items():
        print(f'| {name} | {"yes" if ok else "NO"} |')
    print(f"\npolicy killed, restarted after {args.restart_delay:g} s: chain {victim} ended "
          f"{figures['policy_restart_to_chain_end_s']:.1f} s after the restart; bridge killed, resumed run ended "
          f"{figures['bridge_resume_to_end_s']:.1f} s after its start")
    print('chains (subtasks, steps, restarted):', figures['chains'])
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1))
    if not all(checks.values()):
        raise SystemExit('a fault lost or broke something: see above')


if __name__ == '__main__':
    main()
