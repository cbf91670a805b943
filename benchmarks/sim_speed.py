"""Embedded simulator speed: env steps per second, single process, CALVIN camera resolutions.

    .venv/bin/python benchmarks/sim_speed.py [--steps 300] [--scene D]

Steps are driven by the scripted expert (so the arm moves and contacts happen) through a chain of
tasks; rows: full step with both cameras, physics + IK + info without rendering, each camera
render alone, and ``reset`` (which rebuilds the world).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable

from deer_ros.expert.scripted_expert import ScriptedExpert
from deer_ros.sim.env import PlayTableEnv

TASKS = ('open_drawer', 'lift_red_block_table', 'place_in_drawer', 'turn_on_led', 'move_slider_left')
CONDITIONS_SEED = 0


Timing = tuple[float, float]  # wall seconds, process CPU seconds


def _clock() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing, repeats: int) -> Timing:
    now = _clock()
    return (now[0] - start[0]) / repeats, (now[1] - start[1]) / repeats


def _steps(env: PlayTableEnv, steps: int) -> Timing:
    """Seconds per env.step while the expert works through TASKS."""
    expert = ScriptedExpert(env)
    obs = env.reset()
    tasks = iter(TASKS * (steps // 40 + 1))
    expert.reset(next(tasks))
    wall = cpu = 0.0
    for _ in range(steps):
        action = expert.act(obs)
        start = _clock()
        obs, *_ = env.step(action)
        step_wall, step_cpu = _since(start, 1)
        wall, cpu = wall + step_wall, cpu + step_cpu
        if expert.done:
            expert.reset(next(tasks))
    return wall / steps, cpu / steps


def _timed(call: Callable[[], object], repeats: int) -> Timing:
    start = _clock()
    for _ in range(repeats):
        call()
    return _since(start, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--scene', default='D')
    args = parser.parse_args()
    rows = []
    with PlayTableEnv(args.scene, seed=CONDITIONS_SEED) as env:
        rows.append(('env.step, static 200x200 + gripper 84x84', _steps(env, args.steps)))
        env.reset()
        rows.append(('  static camera render', _timed(env.cameras['rgb_static'].render, 50)))
        rows.append(('  gripper camera render', _timed(env.cameras['rgb_gripper'].render, 50)))
        rows.append(('env.reset (rebuilds the world, renders)', _timed(env.reset, 10)))
    with PlayTableEnv(args.scene, seed=CONDITIONS_SEED, cameras=False) as env:
        rows.append(('env.step, physics + IK + info only', _steps(env, args.steps)))
    print(f'scene {args.scene}, {args.steps} steps, {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.1f}')
    # CPU time is what one core would give without other processes competing for it.
    print(f'{"what":44s} {"wall ms":>8s} {"per s":>7s} {"CPU ms":>8s} {"per s":>7s}')
    for name, (wall, cpu) in rows:
        print(f'{name:44s} {wall * 1e3:8.1f} {1 / wall:7.1f} {cpu * 1e3:8.1f} {1 / cpu:7.1f}')


if __name__ == '__main__':
    main()
