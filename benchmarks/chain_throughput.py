"""Chain-evaluation throughput: in-process workers (scripted expert), or the lock-step ROS evaluation against
``deer-ros evaluate`` in process on the same chains (``--ros``).

Default: runs the same chains with 1 and with 2 worker processes, checks that
both give identical results, and reports chains/min, steps/s and the expert's
score. Rendering dominates step time; ``--no-cameras`` shows the physics-only rate.

``--ros``: the shipped policy (or ``--source``) under the params file's budget
runs the chains twice, each with one torch thread: in this process (what
``deer-ros evaluate --workers 1`` does: simulator and policy in one loop) and
through ROS (``calvin_bridge`` and ``deer_policy`` as processes, lock-step over
DDS). Steps/s count simulator steps over the chains' own wall time (node start-up
and model loading left out on both sides); the ROS figure is the sum over the
bridge's per-chain times from its results file. Also reports whether each chain
gave the same result both ways (issue 18 §1: they should).

    .venv/bin/python benchmarks/chain_throughput.py --num-chains 8 --workers 1 2
    .venv/bin/python benchmarks/chain_throughput.py --ros --num-chains 3 --max-steps 120

Prints a Markdown table (paste into docs/results.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, Chain, disjoint_subsets, generate_chains
from deer_ros.benchmark.evaluation import ChainResult, EmbeddedSim, evaluate, run_chain
from deer_ros.benchmark.results_file import recorded
from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.expert.scripted_expert import ExpertPolicy
from deer_ros.resources import config_dir

STARTUP_S = 600.0


def expert_workers(args: argparse.Namespace, chains: list[Chain]) -> None:
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


def in_process(source: str, avg_gflops: float, chains: list[Chain], offset: int, scene: str,
               max_steps: int) -> tuple[list[ChainResult], list[float]]:
    """``deer-ros evaluate --workers 1``'s loop, each chain timed."""
    from deer_ros.budget.caps import Budget
    from deer_ros.policy.chain_policy import ChainPolicyFactory
    sim = EmbeddedSim(scene)()
    policy = ChainPolicyFactory(source, Budget(avg_gflops=avg_gflops or None), threads=1)(sim.env)
    results, seconds = [], []
    try:
        for index, chain in enumerate(chains, start=offset):
            started = time.perf_counter()
            results.append(run_chain(sim, policy, chain, index, max_steps))
            seconds.append(time.perf_counter() - started)
    finally:
        sim.env.close()
    return results, seconds


def through_ros(source: str, params_file: Path, avg_gflops: float, num_chains: int, offset: int,
                max_steps: int) -> tuple[list[dict], Path]:
    """The bridge and the policy node as processes; the results file's records, by chain."""
    from deer_ros.cli.demo_ros import evaluation_nodes, ros_env
    logs = Path(tempfile.mkdtemp(prefix='chain_throughput_'))
    results = logs / 'chains.jsonl'
    policy, bridge = evaluation_nodes(source, params_file, num_chains, max_steps, results, logs, ros_env(),
                                      budget={'avg_gflops': avg_gflops}, policy={'num_threads': 1},
                                      chain_offset=offset, shutdown_after_evaluation=True)
    try:
        policy.start()
        bridge.start()
        bridge.process.wait(STARTUP_S + 120 * num_chains)
    finally:
        bridge.stop()
        policy.stop()
    if bridge.process.returncode != 0:
        raise SystemExit(bridge.death())
    return [record for _, record in sorted(recorded(results).items())], logs


def ros_against_in_process(args: argparse.Namespace, chains: list[Chain]) -> None:
    import yaml
    source = args.source or str(Path(__file__).resolve().parents[1] / 'deer_ros' / 'pretrained' / 'tiny')
    avg = args.avg_gflops
    if avg is None:
        avg = float(yaml.safe_load(args.params_file.read_text())['deer_policy']['ros__parameters']
                    .get('budget', {}).get('avg_gflops', 0.0))
    local, local_seconds = in_process(source, avg, chains, args.offset, 'D', args.max_steps)
    ros, logs = through_ros(source, args.params_file, avg, len(chains), args.offset, args.max_steps)
    local_steps = sum(sum(result.steps) for result in local)
    ros_steps = sum(sum(record['steps']) for record in ros)
    ros_seconds = sum(record['seconds'] for record in ros)
    same = [(result.successes, result.steps) == (record['successes'], record['steps'])
            for result, record in zip(local, ros)]
    rows = [{'path': 'in process (deer-ros evaluate --workers 1)', 'steps': local_steps,
             'seconds': sum(local_seconds), 'steps_per_s': local_steps / sum(local_seconds),
             'per_chain': [[r.successes, r.steps] for r in local]},
            {'path': 'ROS lock-step (calvin_bridge + deer_policy)', 'steps': ros_steps, 'seconds': ros_seconds,
             'steps_per_s': ros_steps / ros_seconds, 'per_chain': [[r['successes'], r['steps']] for r in ros],
             'logs': str(logs)}]
    ratio = rows[1]['steps_per_s'] / rows[0]['steps_per_s']
    print(f'{source}, avg budget {avg:g} LLM GFLOPs, {len(chains)} chains from {args.offset}, '
          f'max {args.max_steps} steps per subtask, 1 torch thread\n')
    print('| path | steps | seconds | steps/s | per chain (subtasks, steps) |')
    print('|---|---|---|---|---|')
    for row in rows:
        print(f'| {row["path"]} | {row["steps"]} | {row["seconds"]:.1f} | {row["steps_per_s"]:.1f} | '
              f'{row["per_chain"]} |')
    print(f'\nROS / in process: {ratio:.0%} (goal >= 80 %); same per-chain results: {sum(same)} of {len(same)}')
    if args.output:
        args.output.write_text(json.dumps({'rows': rows, 'ratio': ratio, 'same_results': same}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-chains', type=int, default=8)
    parser.add_argument('--offset', type=int, default=0)
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--scene', default='D')
    parser.add_argument('--no-cameras', action='store_true')
    parser.add_argument('--ros', action='store_true', help='ROS lock-step evaluation against in-process')
    parser.add_argument('--source', help='--ros: checkpoint or config (default: the shipped policy)')
    parser.add_argument('--params-file', type=Path, default=config_dir() / 'deer.yaml',
                        help='--ros: params file of both nodes; its budget.avg_gflops is used in process too')
    parser.add_argument('--avg-gflops', type=float, help='--ros: average budget (default: the params file\'s)')
    parser.add_argument('--max-steps', type=int, default=360, help='--ros: step budget per subtask')
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()

    [chains] = disjoint_subsets(generate_chains(SUPPORTED_TASKS, DEFAULT_NUM_CHAINS), [args.num_chains], args.offset)
    if args.ros:
        ros_against_in_process(args, chains)
    else:
        expert_workers(args, chains)


if __name__ == '__main__':
    main()
