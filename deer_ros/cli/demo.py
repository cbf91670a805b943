"""``deer-ros demo``: run the early-exit policy and report exits, GFLOPs and latency.

By default it starts the ``calvin_bridge`` (embedded simulator) and
``deer_policy`` nodes and runs 5-instruction chains through ROS 2
(:mod:`deer_ros.cli.demo_ros`). ``--synthetic`` runs the policy in-process on
generated observations (no simulator, no ROS): the quickest check that a
model, its cost table and a budget work together.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from deer_ros.resources import config_dir, pretrained_dir, shipped_policies

DEFAULT_POLICY = 'tiny'


def default_source() -> str:
    """The shipped trained policy when the package carries one, else the random-init ``tiny`` config."""
    return str(pretrained_dir() / DEFAULT_POLICY) if DEFAULT_POLICY in shipped_policies() else DEFAULT_POLICY


def params_file_budget(path: Path) -> dict[str, float]:
    """``budget.*`` of the ``deer_policy`` node in a ROS params file (0 = off, as the node reads it)."""
    try:
        params = yaml.safe_load(path.read_text())['deer_policy']['ros__parameters']
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise SystemExit(f'cannot read deer_policy parameters from {path}: {error}') from error
    return {key: float(value) for key, value in params.get('budget', {}).items() if key != 'cost_kind'}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--source', default=None,
                        help='checkpoint directory or model config name (default: shipped policy, else tiny)')
    parser.add_argument('--params-file', type=Path, default=config_dir() / 'deer.yaml',
                        help='ROS params file whose deer_policy budget.* is used (default: config/deer.yaml)')
    parser.add_argument('--avg-gflops', type=float, default=None, help='average LLM GFLOPs budget (overrides the file)')
    parser.add_argument('--peak-gflops', type=float, default=None, help='peak LLM GFLOPs budget (overrides the file)')
    parser.add_argument('--synthetic', action='store_true',
                        help='in-process steps on generated observations instead of simulator chains')
    parser.add_argument('--steps', type=int, default=300, help='--synthetic: number of policy steps')
    parser.add_argument('--chains', type=int, default=3, help='number of 5-instruction chains')
    parser.add_argument('--sim', choices=('embedded', 'calvin'), default='embedded',
                        help='embedded pybullet simulator or the real calvin_env (installed separately)')
    parser.add_argument('--calvin-dataset', default=None,
                        help="--sim calvin: CALVIN split root whose env config to use (default: the same config "
                             "composed from calvin_env's conf/)")
    parser.add_argument('--max-steps', type=int, default=360, help='step budget per subtask (CALVIN: 360)')
    parser.add_argument('--timeout', type=float, default=3600.0, help='give up after this many seconds')
    parser.add_argument('--results', type=Path, default=None,
                        help='JSON Lines file the bridge appends each chain to as it ends (default: chains.jsonl '
                             'beside the node logs)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --results: its finished chains are kept, the others run (failed '
                             'ones again); same policy, budget and chains as it was started with')
    parser.add_argument('--seed', type=int, default=0)


def _budget(args: argparse.Namespace):
    from deer_ros.budget.caps import Budget
    values = params_file_budget(args.params_file)
    avg = args.avg_gflops if args.avg_gflops is not None else values.get('avg_gflops', 0.0)
    peak = args.peak_gflops if args.peak_gflops is not None else values.get('peak_gflops', 0.0)
    memory = values.get('max_memory_mb', 0.0)
    return Budget(avg_gflops=avg or None, peak_gflops=peak or None, max_memory_mb=memory or None)


def run_synthetic(source: str, budget, steps: int, seed: int) -> int:
    from deer_ros.benchmark.language import TASK_LANGUAGE
    from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, HOME_ROBOT_OBS, STATIC_CAMERA_SHAPE
    from deer_ros.policy.deer_policy import DeerPolicy
    from deer_ros.policy.types import Observation

    policy = DeerPolicy.from_pretrained(source, budget=budget, seed=seed)
    rng = np.random.default_rng(seed)
    instructions = [language.evaluation for language in TASK_LANGUAGE.values()]
    exits: Counter[int] = Counter()
    llm, total, latency = [], [], []
    for step in tqdm(range(steps), desc='policy steps', unit='step'):
        if step % 60 == 0:  # a new "subtask" every 2 s of 30 Hz control
            policy.reset()
            instruction = instructions[rng.integers(len(instructions))]
        # Random images; the robot state is the home pose (a policy with use_proprio needs one, others ignore it).
        observation = Observation(rng.integers(0, 256, STATIC_CAMERA_SHAPE, dtype=np.uint8),
                                  rng.integers(0, 256, GRIPPER_CAMERA_SHAPE, dtype=np.uint8), HOME_ROBOT_OBS.copy())
        _, info = policy.select_action(observation, instruction)
        exits[info.exit_index + 1] += 1
        llm.append(info.llm_gflops)
        total.append(info.total_gflops)
        latency.append(info.latency_ms)
    print(f'\nsource: {source}   budget: {policy.runtime.describe()}')
    print('exit histogram: ' + '  '.join(f'exit {k}: {exits[k] / steps:6.1%}'
                                        for k in range(1, policy.cost_table.num_exits + 1)))
    print(f'LLM GFLOPs   avg {np.mean(llm):.4f}   peak {np.max(llm):.4f}   '
          f'(full depth {policy.cost_table.llm_gflops[-1]:.4f})')
    print(f'total GFLOPs avg {np.mean(total):.4f}   peak {np.max(total):.4f}')
    print(f'step latency ms  p50 {np.percentile(latency, 50):.1f}   p99 {np.percentile(latency, 99):.1f}')
    return 0


def check_calvin(calvin_dataset: str | None) -> None:
    """What the bridge would fail on at start with calvin (no calvin_env, no dataset config), said before any
    node starts rather than as an exit code of the bridge."""
    from deer_ros.benchmark.backends import SIM_ERRORS, build_sim_factory
    try:
        build_sim_factory('calvin', calvin_dataset=Path(calvin_dataset) if calvin_dataset else None)
    except SIM_ERRORS as error:
        raise SystemExit(f'deer-ros demo --sim calvin: {error}') from None


def run(args: argparse.Namespace) -> int:
    source = args.source or default_source()
    budget = _budget(args)
    if args.synthetic:
        return run_synthetic(source, budget, args.steps, args.seed)
    if args.resume and args.results is None:
        raise SystemExit('deer-ros demo --resume: give the --results file to continue')
    if args.sim == 'calvin':
        check_calvin(args.calvin_dataset)
    from deer_ros.cli.demo_ros import run_ros_chains
    overrides = {name: getattr(budget, name) or 0.0 for name in ('avg_gflops', 'peak_gflops', 'max_memory_mb')}
    return run_ros_chains(source, args.params_file, overrides, args.chains, args.max_steps, args.sim,
                          args.calvin_dataset, args.timeout, args.results, args.resume)
