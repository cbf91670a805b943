"""Record scripted-expert demonstrations in CALVIN format (``deer-ros collect``).

Each rollout starts from a random CALVIN start state and does up to
``--chain-length`` random tasks in a row, each picked among those the symbolic
model says are possible in the current state (so place/stack tasks get demos
too: they follow a lift). Like CALVIN's play data, one rollout is one
contiguous recording and every oracle-confirmed subtask is a language-annotated
range inside it; a failed subtask ends the rollout and its frames are dropped.
Whole rollouts go to ``training`` or ``validation``, so windows never leak
across the split.

With a takeover policy (``--takeover-policy``, DAgger-style), each subtask
starts with 1..``--takeover-steps`` steps of that policy (uniformly drawn) and
the expert finishes it from wherever the policy left the robot and scene (resuming
its plan where the hand already lies on it, else rising and re-planning): the
policy's frames stay in the recording unannotated (like CALVIN's unlabelled
play), the annotation covers only the expert's recovery. Demos from the home
pose alone never show how to get back from a learned policy's own mistakes
(overshooting a handle, descending too early), which is where closed-loop
rollouts fail. A subtask the policy solves by itself gets no annotation.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from deer_ros.benchmark.chains import applicable_tasks, initial_states
from deer_ros.benchmark.dataset import Annotation, CalvinDatasetWriter
from deer_ros.benchmark.evaluation import Policy, PolicyFactory
from deer_ros.benchmark.language import training_instructions
from deer_ros.benchmark.tasks import SUPPORTED_TASKS, TaskOracle
from deer_ros.calvin_layout import EP_LEN
from deer_ros.expert.scripted_expert import ScriptedExpert
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state
from deer_ros.sim.interface import Info, Obs

DEFAULT_TAKEOVER_STEPS = 60


class Recording:
    """Frames of one rollout in CALVIN's per-frame layout.

    Frame t holds the observation at t and the action taken from it:
    ``rel_actions[t]`` as sent, ``actions[t]`` the absolute tcp pose reached at
    t+1 with the same gripper command (CALVIN's definition).
    """

    def __init__(self) -> None:
        self._frames: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, obs: Obs, action: np.ndarray, next_obs: Obs) -> None:
        action = np.asarray(action, dtype=np.float64)
        self._frames.append({
            'actions': np.concatenate([next_obs['robot_obs'][:6], action[6:]]),
            'rel_actions': action,
            'robot_obs': obs['robot_obs'],
            'scene_obs': obs['scene_obs'],
            'rgb_static': obs['rgb_obs']['rgb_static'],
            'rgb_gripper': obs['rgb_obs']['rgb_gripper'],
        })

    def truncate(self, length: int) -> None:
        del self._frames[length:]

    def stacked(self) -> dict[str, np.ndarray]:
        return {key: np.stack([frame[key] for frame in self._frames]) for key in self._frames[0]}


@dataclass
class CollectSummary:
    """How many demos went where, and the expert's success per attempted task."""

    demos: Counter = field(default_factory=Counter)
    frames: Counter = field(default_factory=Counter)
    attempted: Counter = field(default_factory=Counter)
    succeeded: Counter = field(default_factory=Counter)
    solved_by_policy: Counter = field(default_factory=Counter)

    def to_json(self) -> dict:
        summary = {'demos': dict(self.demos), 'frames': dict(self.frames),
                   'expert_success': {task: [self.succeeded[task], self.attempted[task]]
                                      for task in sorted(self.attempted)}}
        if self.solved_by_policy:
            summary['solved_by_takeover_policy'] = dict(sorted(self.solved_by_policy.items()))
        return summary


@dataclass(frozen=True)
class Takeover:
    """The policy that starts every subtask before the expert takes over, and its longest turn in steps."""

    policy_factory: PolicyFactory
    max_steps: int

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f'takeover steps must be >= 1, got {self.max_steps}')


class Collector:
    """Rolls out the expert over random task sequences; one env per scene, built on first use."""

    def __init__(self, scenes: Sequence[str], rng: np.random.Generator, max_steps: int = EP_LEN,
                 takeover: Takeover | None = None) -> None:
        self.scenes = list(scenes)
        self.rng = rng
        self.max_steps = max_steps
        self.takeover = takeover
        self.oracle = TaskOracle()
        self._envs: dict[str, tuple[PlayTableEnv, ScriptedExpert, Policy | None]] = {}
        self._starts = initial_states()
        self.summary = CollectSummary()

    def rollout(self, max_tasks: int) -> tuple[Recording, list[Annotation]]:
        """One recording with up to ``max_tasks`` successful, annotated subtasks."""
        scene = self.scenes[int(self.rng.integers(len(self.scenes)))]
        env, expert, policy = self._env(scene)
        state = self._starts[int(self.rng.integers(len(self._starts)))]
        robot_obs, scene_obs = initial_state(state.conditions(), self.rng, scene)
        obs = env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        recording, annotations = Recording(), []
        for _ in range(max_tasks):
            options = applicable_tasks(state, SUPPORTED_TASKS)
            if not options:  # e.g. every block already placed: nothing left to demonstrate from here
                break
            task, next_state = options[int(self.rng.integers(len(options)))]
            phrasings = training_instructions(task)
            instruction = phrasings[int(self.rng.integers(len(phrasings)))]
            start = len(recording)
            start_info = env.get_info()
            solved, obs = self._policy_turn(env, policy, obs, task, instruction, start_info, recording)
            if not solved:
                expert_start = len(recording)
                done, obs = self._attempt(env, expert, obs, task, start_info, recording)
                if not done:
                    recording.truncate(start)
                    break
                annotations.append(Annotation(expert_start, len(recording) - 1, instruction, task))
            state = next_state
        return recording, annotations

    def _policy_turn(self, env: PlayTableEnv, policy: Policy | None, obs: Obs, task: str, instruction: str,
                     start_info: Info, recording: Recording) -> tuple[bool, Obs]:
        """The takeover policy's steps before the expert (none without one); True if it solved the task."""
        if policy is None:
            return False, obs
        policy.reset()
        steps = int(self.rng.integers(1, self.takeover.max_steps + 1))
        solved, obs = self._record(env, lambda o: policy.step(o, instruction), obs, task, start_info, recording, steps)
        if solved:
            self.summary.solved_by_policy[task] += 1
        return solved, obs

    def _attempt(self, env: PlayTableEnv, expert: ScriptedExpert, obs: Obs, task: str, start_info: Info,
                 recording: Recording) -> tuple[bool, Obs]:
        self.summary.attempted[task] += 1
        expert.reset(task, resume=self.takeover is not None)
        done, obs = self._record(env, expert.act, obs, task, start_info, recording, self.max_steps)
        if done:
            self.summary.succeeded[task] += 1
        return done, obs

    def _record(self, env: PlayTableEnv, act: Callable[[Obs], np.ndarray], obs: Obs, task: str, start_info: Info,
                recording: Recording, steps: int) -> tuple[bool, Obs]:
        """Step ``act`` for up to ``steps`` steps, recording every frame; True once the oracle sees ``task`` done."""
        for _ in range(steps):
            action = act(obs)
            next_obs, _, _, info = env.step(action)
            recording.add(obs, action, next_obs)
            obs = next_obs
            if self.oracle.get_task_info_for_set(start_info, info, {task}):
                return True, obs
        return False, obs

    def _env(self, scene: str) -> tuple[PlayTableEnv, ScriptedExpert, Policy | None]:
        if scene not in self._envs:
            env = PlayTableEnv(scene=scene)
            policy = self.takeover.policy_factory(env) if self.takeover else None
            self._envs[scene] = (env, ScriptedExpert(env), policy)
        return self._envs[scene]

    def close(self) -> None:
        for env, _, _ in self._envs.values():
            env.close()


def collect(output: Path, num_demos: int, scenes: Sequence[str], seed: int = 0, validation_fraction: float = 0.1,
            chain_length: int = 5, max_steps: int = EP_LEN, progress: bool = True,
            takeover: Takeover | None = None) -> CollectSummary:
    """Record ``num_demos`` successful subtask demos into ``output/{training,validation}``."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f'validation fraction must be in [0, 1), got {validation_fraction}')
    collector = Collector(scenes, np.random.default_rng(seed), max_steps, takeover)
    summary = collector.summary
    bar = tqdm(total=num_demos, desc='demos', unit='demo', disable=not progress)
    rollouts = 0
    try:
        with CalvinDatasetWriter(output) as writer:
            while sum(summary.demos.values()) < num_demos:
                recording, annotations = collector.rollout(min(chain_length, num_demos - sum(summary.demos.values())))
                if not annotations:
                    continue
                # Every (1/fraction)-th kept rollout goes to validation: deterministic and proportional.
                split = ('validation' if int((rollouts + 1) * validation_fraction) > int(rollouts * validation_fraction)
                         else 'training')
                rollouts += 1
                writer.add_episode(split, recording.stacked(), annotations)
                summary.demos[split] += len(annotations)
                summary.frames[split] += len(recording)
                bar.update(len(annotations))
    finally:
        bar.close()
        collector.close()
    return summary
