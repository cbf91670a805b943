"""``deer-ros refine``: Bayesian refinement of one average budget's thresholds on simulator chains.

Starts from the offline thresholds of ``--avg-gflops`` (solved from the
checkpoint's calibration file), evaluates candidate thresholds on *tuning*
chains (by default chains 224.. of the fixed list; reports use chains 0..223,
DeeR's reporting slice, see ``benchmarks/tradeoff.py``), and writes the best point to
``refined_thresholds.json`` beside the checkpoint, where the policy runtime
and node pick it up for exactly that budget. Resumable: the BO state file
keeps every evaluated point.

Launched by ``torchrun`` (as ``deer-ros evaluate`` can be), rank 0 runs the
search and every candidate's tuning chains are spread over all the processes
(:meth:`~deer_ros.benchmark.distributed_evaluation.DistributedContext.lockstep`):
each evaluation, and so the search, is that of a single process.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

    from deer_ros.benchmark.chains import Chain
    from deer_ros.budget.caps import Budget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, type=Path, help='checkpoint directory with calibration.npz')
    parser.add_argument('--avg-gflops', required=True, type=float, help='average LLM GFLOPs budget to refine')
    parser.add_argument('--chains', type=int, default=32, help='tuning chains per evaluation')
    parser.add_argument('--offset', type=int, default=224,
                        help='first tuning chain; reporting uses chains 0..223, keep the slices disjoint')
    parser.add_argument('--n-calls', type=int, default=20, help='evaluations in total (upstream: 20)')
    parser.add_argument('--initial-points', type=int, default=5)
    parser.add_argument('--penalty', type=float, default=1.0, help='lambda: success lost per GFLOP over budget')
    parser.add_argument('--radius', type=float, default=0.5, help='search box: +-radius x each offline threshold')
    parser.add_argument('--workers', type=int, default=1, help='worker processes (per torchrun process, if any)')
    parser.add_argument('--max-steps', type=int, default=360)
    parser.add_argument('--scene', default='D')
    parser.add_argument('--state', type=Path, default=None,
                        help='BO state file (default: <checkpoint>/refine_<budget>.json)')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, disjoint_subsets, generate_chains
    from deer_ros.benchmark.distributed_evaluation import DistributedContext, evaluate_distributed
    from deer_ros.benchmark.evaluation import EmbeddedSim
    from deer_ros.benchmark.tasks import SUPPORTED_TASKS
    from deer_ros.budget.caps import Budget
    from deer_ros.policy.chain_policy import ChainPolicyFactory

    budget = Budget(avg_gflops=args.avg_gflops)
    [chains] = disjoint_subsets(generate_chains(list(SUPPORTED_TASKS), DEFAULT_NUM_CHAINS), [args.chains], args.offset)
    context = DistributedContext.from_environment()

    def rollouts(thresholds: np.ndarray) -> tuple[float, float]:
        factory = ChainPolicyFactory(str(args.checkpoint), budget, thresholds=tuple(float(t) for t in thresholds))
        report = evaluate_distributed(context, chains, EmbeddedSim(args.scene), factory, args.workers,
                                      args.max_steps, progress=False)
        return report.average_length, report.step_stats()['llm_gflops']

    context.lockstep(rollouts, lambda evaluate: _refine(args, budget, chains, evaluate))
    context.close()
    return 0


def _refine(args: argparse.Namespace, budget: Budget, chains: list[Chain],
            rollouts: Callable[[np.ndarray], tuple[float, float]]) -> None:
    """The search itself (rank 0 only): ``rollouts`` evaluates thresholds on the tuning chains."""
    from deer_ros.benchmark.chains import chains_digest
    from deer_ros.budget.bayes_opt import refine_thresholds
    from deer_ros.budget.refined import RefinedEntry, refined_path, save_refined
    from deer_ros.policy.runtime import PolicyRuntime

    runtime = PolicyRuntime(args.checkpoint, budget=budget)
    # The offline solution, not an earlier refinement of it: the search box (and a resumed state) stays the same.
    offline = runtime.thresholds.solve(budget, refined=False).criterion.thresholds
    state = args.state or args.checkpoint / f'refine_{args.avg_gflops:g}.json'
    result = refine_thresholds(rollouts, offline, args.avg_gflops, state, n_calls=args.n_calls,
                               n_initial_points=args.initial_points, penalty=args.penalty, radius=args.radius,
                               seed=args.seed)
    entry = RefinedEntry(avg_gflops=args.avg_gflops, cap=runtime.thresholds.solution.cap,
                         cost_kind=runtime.thresholds.cost_kind,
                         thresholds=tuple(float(t) for t in result.thresholds), average_length=result.success,
                         average_cost=result.cost,
                         tuning={'offset': args.offset, 'chains': args.chains, 'digest': chains_digest(chains),
                                 'max_steps': args.max_steps, 'scene': args.scene,
                                 'evaluations': len(result.evaluations)})
    path = save_refined(refined_path(args.checkpoint), entry)
    offline_eval = result.evaluations[0]
    print(f'offline thresholds: avg length {offline_eval.success:.3f} at {offline_eval.cost:.4g} GFLOPs')
    print(f'refined thresholds: avg length {result.success:.3f} at {result.cost:.4g} GFLOPs -> {path}')
