"""``deer-ros collect``: record scripted-expert demonstrations in CALVIN format (:mod:`deer_ros.expert.collect`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deer_ros.benchmark.backends import load_policy_factory
from deer_ros.calvin_layout import EP_LEN
from deer_ros.expert.collect import DEFAULT_TAKEOVER_STEPS, ShardsFailed, Takeover, collect
from deer_ros.expert.task_mix import TaskMix
from deer_ros.sim.layout import SCENES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--output', type=Path, required=True,
                        help='dataset root (gets training/ and validation/; with --workers N, one root per worker: '
                             'shard_00/ ... )')
    parser.add_argument('--episodes', type=int, default=100,
                        help='number of language-annotated demos to record (one successful subtask each)')
    parser.add_argument('--scenes', nargs='+', default=['D'], choices=sorted(SCENES),
                        help='scene variants, one drawn per rollout')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--validation-fraction', type=float, default=0.1)
    parser.add_argument('--chain-length', type=int, default=5, help='subtasks per rollout before a fresh reset')
    parser.add_argument('--max-steps', type=int, default=EP_LEN, help='step budget per subtask')
    parser.add_argument('--takeover-policy',
                        help='module:callable (as deer-ros evaluate --policy) that starts each subtask before the '
                             'expert takes over; the annotation covers only the expert\'s part')
    parser.add_argument('--takeover-kwargs', type=json.loads,
                        help='JSON object passed to the takeover policy factory (needs --takeover-policy)')
    parser.add_argument('--takeover-steps', type=int,
                        help=f'the takeover policy runs a uniformly drawn 1..N steps per subtask '
                             f'(needs --takeover-policy; default {DEFAULT_TAKEOVER_STEPS})')
    parser.add_argument('--workers', type=int, default=1,
                        help='spawned processes recording in parallel, each its share of the demos into its own '
                             'shard_XX/ dataset root, with a seed derived from (--seed, worker index)')
    parser.add_argument('--tasks', nargs='+', metavar='TASK',
                        help='draw only these tasks (names or fnmatch patterns such as "rotate_*"; default: all)')
    parser.add_argument('--task-weights', type=json.loads, metavar='JSON',
                        help='JSON object task (or pattern) -> weight >= 0; among the applicable tasks each is drawn '
                             'with probability proportional to its weight (unlisted: 1, 0: never)')
    parser.add_argument('--no-progress', action='store_true')


def takeover_from_args(args: argparse.Namespace) -> Takeover | None:
    """The takeover options, or None; its options without a policy are an error, not silently ignored."""
    if args.takeover_policy is None:
        if args.takeover_kwargs is not None or args.takeover_steps is not None:
            raise ValueError('--takeover-kwargs and --takeover-steps need --takeover-policy')
        return None
    steps = DEFAULT_TAKEOVER_STEPS if args.takeover_steps is None else args.takeover_steps
    return Takeover(load_policy_factory(args.takeover_policy, args.takeover_kwargs or {}), steps)


def run(args: argparse.Namespace) -> int:
    """Print the summary as JSON; exit 1 if a worker failed (the summary's ``failed_shards`` says which)."""
    if args.task_weights is not None and not isinstance(args.task_weights, dict):
        raise ValueError(f'--task-weights must be a JSON object, got {args.task_weights!r}')
    mix = TaskMix.build(args.tasks, args.task_weights)
    takeover = takeover_from_args(args)
    try:
        summary, code = collect(args.output, args.episodes, args.scenes, args.seed, args.validation_fraction,
                                args.chain_length, args.max_steps, progress=not args.no_progress, takeover=takeover,
                                workers=args.workers, mix=mix), 0
    except ShardsFailed as failure:
        summary, code = failure.summary, 1
        print(f'error: {failure}', file=sys.stderr)
    print(json.dumps(summary.to_json(), indent=1))
    return code
