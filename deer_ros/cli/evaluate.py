"""``deer-ros evaluate``: CALVIN-style 5-instruction chain evaluation of a policy.

Chains are a slice of a fixed list of 1000 (``--offset``, ``--num-chains``;
DeeR reports on the first 224), so tuning and reporting can use disjoint slices
of the same list. ``--protocol`` picks the list and the rules
(:mod:`deer_ros.benchmark.protocols`): ``deer_ros`` (default), the project's own
seeded chains; ``calvin``, CALVIN's official sequences, instructions, start
states and 360 steps, without a ready pose (a policy factory taking
``ready_pose`` gets ``false``; asking for ``true`` is refused). The policy is named as
``module:callable``, a picklable factory ``callable(env, **policy_kwargs) -> Policy``;
``expert`` runs the scripted expert through the same protocol.

Each chain is appended to a results file as it ends (``--results``, by default
``<output stem>.chains.jsonl`` beside ``--output``), so a killed run keeps what
it finished and ``--resume`` continues it. A chain that fails (its policy
raises, its worker dies) is recorded with the reason and the run goes on; the
exit status is 1 if any did, after everything is written.

Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment), the same
command spreads the chains over every process it starts, on one machine or
several (:mod:`deer_ros.benchmark.distributed_evaluation`), as ``deer-ros
train`` spreads its batches: no flag, since a torchrun launch means exactly
that. Only rank 0 writes the results file and ``--output`` and prints; the
report is that of a local run.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from deer_ros.benchmark.backends import BACKENDS, SIM_ERRORS, build_sim_factory, check_policy, load_policy_factory
from deer_ros.benchmark.chains import DEFAULT_SEED, disjoint_subsets
from deer_ros.benchmark.distributed_evaluation import DistributedContext, evaluate_distributed
from deer_ros.benchmark.evaluation import SimFactory, run_settings
from deer_ros.benchmark.protocols import DEER_ROS, PROTOCOLS, ChainProtocol
from deer_ros.benchmark.results_file import ResultsFile
from deer_ros.calvin_layout import EP_LEN
from deer_ros.sim.layout import SCENES

DEER_DEFAULT_CHAINS = 224


def sim_factory_from_args(args: argparse.Namespace) -> tuple[SimFactory, list[str]]:
    """The simulator options of :func:`add_arguments` as a factory and the tasks its oracle judges.

    Options the backend cannot honour (with the policy), a missing calvin_env or dataset config: refused with the
    reason before anything runs.
    """
    try:
        check_policy(args.policy, args.backend)
        return build_sim_factory(args.backend, args.scene, cameras=not args.no_cameras,
                                 calvin_dataset=args.calvin_dataset, use_egl=args.use_egl)
    except SIM_ERRORS as error:
        raise SystemExit(f'deer-ros evaluate --backend {args.backend}: {error}') from None


def policy_kwargs_for(protocol: ChainProtocol, spec: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The policy factory's keyword arguments under ``protocol``.

    A protocol without a ready pose (CALVIN's) sets ``ready_pose=False`` for a factory that takes it (the DeeR
    policy's ``deer_policy`` defaults to true) and refuses ``"ready_pose": true``; other factories are the
    user's to keep to it. The protocol is applied here, where the run is put together, so a policy never needs to
    know which protocol evaluates it.
    """
    if protocol.ready_pose:
        return kwargs
    if kwargs.get('ready_pose'):
        raise SystemExit(f'--protocol {protocol.name}: the hand is never taken back to a ready pose between '
                         'subtasks in this protocol; drop "ready_pose": true from --policy-kwargs')
    if 'ready_pose' in inspect.signature(load_policy_factory(spec)).parameters:
        return {**kwargs, 'ready_pose': False}
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--policy', default='expert', help='"expert" or module:callable returning a policy for an env')
    parser.add_argument('--policy-kwargs', type=json.loads, default={}, help='JSON object passed to the policy factory')
    parser.add_argument('--protocol', choices=sorted(PROTOCOLS), default=DEER_ROS.name,
                        help="deer_ros: the project's seeded chains; calvin: CALVIN's official 1000 sequences, "
                             'instructions and start states, 360 steps, scene D, no ready pose')
    parser.add_argument('--backend', choices=BACKENDS, default='embedded')
    parser.add_argument('--scene', default='D', choices=sorted(SCENES))
    parser.add_argument('--calvin-dataset', type=Path,
                        help="--backend calvin: CALVIN split root whose env config to use (default: the same config "
                             "composed from calvin_env's conf/)")
    parser.add_argument('--use-egl', action='store_true', help='EGL rendering in calvin_env (default: CPU)')
    parser.add_argument('--no-cameras', action='store_true',
                        help='embedded env without rendering: only for policies that ignore images (the expert)')
    parser.add_argument('--num-chains', type=int, default=DEER_DEFAULT_CHAINS)
    parser.add_argument('--offset', type=int, default=0, help='first chain of the fixed list to evaluate')
    parser.add_argument('--chain-seed', type=int, default=DEFAULT_SEED,
                        help='seed of the fixed chain list (deer_ros protocol; CALVIN\'s seeds are fixed)')
    parser.add_argument('--workers', type=int, default=1, help='worker processes (per torchrun process, if any)')
    parser.add_argument('--max-steps', type=int, default=EP_LEN,
                        help='step budget per subtask (deer_ros protocol; CALVIN\'s is 360)')
    parser.add_argument('--output', type=Path, help='write the full report as JSON here')
    parser.add_argument('--results', type=Path,
                        help='append each chain here as it ends (JSON Lines; default: <output stem>.chains.jsonl '
                             'beside --output, none without --output)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in the results file: its finished chains are kept, the others run '
                             '(failed ones again); the settings must be those it was started with')
    parser.add_argument('--no-progress', action='store_true')


def results_path(args: argparse.Namespace) -> Path | None:
    """``--results``, else ``<output stem>.chains.jsonl`` beside ``--output``, else none."""
    if args.results or not args.output:
        return args.results
    return args.output.with_name(f'{args.output.stem}.chains.jsonl')


def run(args: argparse.Namespace) -> int:
    path = results_path(args)
    if args.resume and path is None:
        raise SystemExit('--resume needs the results file to continue: give --results (or --output)')
    protocol = PROTOCOLS[args.protocol]
    sim_factory, tasks = sim_factory_from_args(args)
    policy_kwargs = policy_kwargs_for(protocol, args.policy, args.policy_kwargs)
    policy_factory = load_policy_factory(args.policy, policy_kwargs)
    try:
        protocol.check(args.scene, args.max_steps)
        all_chains = protocol.chains(tasks, args.chain_seed)
    except ValueError as error:
        raise SystemExit(f'deer-ros evaluate --protocol {protocol.name}: {error}') from None
    [chains] = disjoint_subsets(all_chains, [args.num_chains], args.offset)
    settings = {'policy': args.policy, 'policy_kwargs': policy_kwargs, 'backend': args.backend,
                'scene': args.scene, 'cameras': not args.no_cameras, 'offset': args.offset,
                'chain_seed': args.chain_seed, **run_settings(chains, args.max_steps, protocol)}
    context = DistributedContext.from_environment()
    results, refusal = open_results(path, settings, args.resume) if context.is_main else (None, None)
    if context.broadcast(refusal):  # every rank stops, none is left waiting for rank 0
        raise SystemExit(refusal if context.is_main else 1)
    if results is not None and results.records:
        print(f'resuming {path}: {len(results.records)} of {len(chains)} chains recorded')
    try:
        report = evaluate_distributed(context, chains, sim_factory, policy_factory, args.workers, args.max_steps,
                                      not args.no_progress, results, protocol)
    except KeyboardInterrupt:
        if path is None:
            raise
        if context.is_main:
            print(f'\ninterrupted: the finished chains are in {path}; add --resume to continue', file=sys.stderr)
        return 130
    context.close()
    if context.is_main:
        print(report.format_table())
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({'settings': settings, **report.to_json()}, indent=1))
        if report.failed:
            print(f'{len(report.failed)} chains failed (reasons above); --resume runs them again', file=sys.stderr)
    return 1 if report.failed else 0


def open_results(path: Path | None, settings: dict[str, Any], resume: bool) -> tuple[ResultsFile | None, str | None]:
    """The results file at ``path`` (None without one), or why it cannot be opened for this run."""
    try:
        return (ResultsFile.open(path, settings, resume) if path else None), None
    except FileExistsError as error:
        return None, f'{error} (--resume continues it)'
    except ValueError as error:  # written with other settings, or not a results file
        return None, str(error)
