"""Scripted-expert success per task over random start states (physics only, no rendering).

    .venv/bin/python benchmarks/expert_success.py --episodes 20 --scene D [--tasks open_drawer ...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.expert.scenarios import run_episode
from deer_ros.expert.scripted_expert import ScriptedExpert
from deer_ros.sim.env import PlayTableEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--scene', default='D')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tasks', nargs='*', default=list(SUPPORTED_TASKS))
    args = parser.parse_args()
    env = PlayTableEnv(args.scene, seed=args.seed, cameras=False)
    expert = ScriptedExpert(env)
    print(f'scene {args.scene}, {args.episodes} episodes per task, 360-step limit')
    print(f'{"task":28s} {"success":>8s} {"mean steps":>11s}')
    rates = []
    started = time.perf_counter()
    for index, task in enumerate(args.tasks):
        rng = np.random.default_rng([args.seed, index])
        results = [run_episode(env, expert, task, rng) for _ in range(args.episodes)]
        successes = [steps for ok, steps in results if ok]
        rates.append(len(successes) / args.episodes)
        mean_steps = f'{np.mean(successes):.0f}' if successes else '-'
        print(f'{task:28s} {rates[-1]:8.0%} {mean_steps:>11s}', flush=True)
    print(f'{"mean":28s} {np.mean(rates):8.1%}   ({time.perf_counter() - started:.0f} s)')
    env.close()


if __name__ == '__main__':
    main()
