"""``deer-ros collect``: record scripted-expert demonstrations in CALVIN format (:mod:`deer_ros.expert.collect`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from deer_ros.benchmark.backends import load_policy_factory
from deer_ros.calvin_layout import EP_LEN
from deer_ros.expert.collect import DEFAULT_TAKEOVER_STEPS, Takeover, collect
from deer_ros.sim.layout import SCENES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--output', type=Path, required=True, help='dataset root (gets training/ and validation/)')
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
    takeover = takeover_from_args(args)
    summary = collect(args.output, args.episodes, args.scenes, args.seed, args.validation_fraction,
                      args.chain_length, args.max_steps, progress=not args.no_progress, takeover=takeover)
    print(json.dumps(summary.to_json(), indent=1))
    return 0
