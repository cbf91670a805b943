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

A :class:`~deer_ros.expert.task_mix.TaskMix` restricts and weights the task
draw (more demos for the tasks a policy fails). With ``workers > 1`` each
spawned worker records its share of the demos, with its own seed, into its own
complete dataset root ``shard_XX/``: training concatenates roots anyway, so no
index files are ever merged, and a worker that dies costs only its own shard.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from deer_ros.benchmark.chains import initial_states
from deer_ros.benchmark.dataset import Annotation, CalvinDatasetWriter, shard_dir
from deer_ros.benchmark.evaluation import Policy, PolicyFactory
from deer_ros.benchmark.language import training_instructions
from deer_ros.benchmark.tasks import TaskOracle
from deer_ros.calvin_layout import EP_LEN
from deer_ros.expert.scripted_expert import ScriptedExpert
from deer_ros.expert.task_mix import TaskMix
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
    """How many demos went where, the expert's success per attempted task, and the shards whose worker failed."""

    demos: Counter = field(default_factory=Counter)
    frames: Counter = field(default_factory=Counter)
    attempted: Counter = field(default_factory=Counter)
    succeeded: Counter = field(default_factory=Counter)
    solved_by_policy: Counter = field(default_factory=Counter)
    failed_shards: dict[str, str] = field(default_factory=dict)

    def merge(self, other: 'CollectSummary') -> None:
        """Add another worker's counts (and failures) to these."""
        for counts in dataclasses.fields(self):
            mine, theirs = getattr(self, counts.name), getattr(other, counts.name)
            mine.update(theirs)  # Counter.update adds counts; dict.update adds entries

    def to_json(self) -> dict:
        summary = {'demos': dict(self.demos), 'frames': dict(self.frames),
                   'expert_success': {task: [self.succeeded[task], self.attempted[task]]
                                      for task in sorted(self.attempted)}}
        if self.solved_by_policy:
            summary['solved_by_takeover_policy'] = dict(sorted(self.solved_by_policy.items()))
        if self.failed_shards:
            summary['failed_shards'] = dict(sorted(self.failed_shards.items()))
        return summary


class ShardsFailed(RuntimeError):
    """Some collection workers failed; raised once all have ended, with the merged ``summary`` of every shard.

    The other shards are complete datasets; a failed worker's shard holds what it recorded before the error
    (nothing usable if its process was killed).
    """

    def __init__(self, summary: CollectSummary) -> None:
        super().__init__('collection workers failed: ' + '; '.join(
            f'{name}: {error}' for name, error in sorted(summary.failed_shards.items())))
        self.summary = summary


@dataclass(frozen=True)
class Takeover:
    """The policy that starts every subtask before the expert takes over, and its longest turn in steps."""

    policy_factory: PolicyFactory
    max_steps: int

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f'takeover steps must be >= 1, got {self.max_steps}')


class Collector:
    """Rolls out the expert over task sequences drawn from ``mix``; one env per scene, built on first use."""

    def __init__(self, scenes: Sequence[str], rng: np.random.Generator, max_steps: int = EP_LEN,
                 takeover: Takeover | None = None, mix: TaskMix | None = None,
                 summary: CollectSummary | None = None) -> None:
        self.scenes = list(scenes)
        self.rng = rng
        self.max_steps = max_steps
        self.takeover = takeover
        self.mix = mix or TaskMix()
        self.oracle = TaskOracle()
        self._envs: dict[str, tuple[PlayTableEnv, ScriptedExpert, Policy | None]] = {}
        self._starts = initial_states()
        self.summary = CollectSummary() if summary is None else summary

    def rollout(self, max_tasks: int) -> tuple[Recording, list[Annotation]]:
        """One recording with up to ``max_tasks`` successful, annotated subtasks."""
        scene = self.scenes[int(self.rng.integers(len(self.scenes)))]
        env, expert, policy = self._env(scene)
        state = self._starts[int(self.rng.integers(len(self._starts)))]
        robot_obs, scene_obs = initial_state(state.conditions(), self.rng, scene)
        obs = env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        recording, annotations = Recording(), []
        for _ in range(max_tasks):
            options = self.mix.options(state)
            if not options:  # e.g. every block already placed: nothing left to demonstrate from here
                break
            task, next_state = self.mix.draw(options, self.rng)
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


@dataclass(frozen=True)
class _Plan:
    """How every shard records (picklable: each spawned worker gets a copy)."""

    scenes: tuple[str, ...]
    validation_fraction: float
    chain_length: int
    max_steps: int
    takeover: Takeover | None
    mix: TaskMix

    def record(self, output: Path, num_demos: int, seed: np.random.SeedSequence, summary: CollectSummary,
               on_demos: Callable[[int], object]) -> None:
        """Record ``num_demos`` demos into the dataset root ``output``, counting into ``summary`` as they come."""
        collector = Collector(self.scenes, np.random.default_rng(seed), self.max_steps, self.takeover, self.mix,
                              summary)
        fraction, rollouts = self.validation_fraction, 0
        try:
            with CalvinDatasetWriter(output) as writer:
                while (left := num_demos - sum(summary.demos.values())) > 0:
                    recording, annotations = collector.rollout(min(self.chain_length, left))
                    if not annotations:
                        continue
                    # Every (1/fraction)-th kept rollout goes to validation: deterministic and proportional.
                    split = 'validation' if int((rollouts + 1) * fraction) > int(rollouts * fraction) else 'training'
                    rollouts += 1
                    writer.add_episode(split, recording.stacked(), annotations)
                    summary.demos[split] += len(annotations)
                    summary.frames[split] += len(recording)
                    on_demos(len(annotations))
        finally:
            collector.close()


def shard_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Worker ``index``'s seed: the ``index``-th child of ``seed`` (as ``SeedSequence(seed).spawn``), so a worker's
    stream depends on the seed and its index only, never on how many workers run beside it."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def collect(output: Path, num_demos: int, scenes: Sequence[str], seed: int = 0, validation_fraction: float = 0.1,
            chain_length: int = 5, max_steps: int = EP_LEN, progress: bool = True,
            takeover: Takeover | None = None, workers: int = 1, mix: TaskMix | None = None) -> CollectSummary:
    """Record ``num_demos`` successful subtask demos into ``output/{training,validation}``.

    With ``workers > 1``: that many spawned processes (at most one per demo), worker i recording its even share
    with :func:`shard_seed` (seed, i) into the dataset root ``output/shard_{i:02d}``
    (:func:`deer_ros.benchmark.dataset.dataset_roots` lists them). Raises :class:`ShardsFailed` once every worker
    has ended if any failed.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f'validation fraction must be in [0, 1), got {validation_fraction}')
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    output = Path(output)
    mix = mix or TaskMix()
    mix.check_reachable(chain_length)
    plan = _Plan(tuple(scenes), validation_fraction, chain_length, max_steps, takeover, mix)
    shards = min(workers, max(num_demos, 1))
    _refuse_other_collection(output, shards if workers > 1 else 0)
    with tqdm(total=num_demos, desc='demos', unit='demo', disable=not progress) as bar:
        if workers == 1:
            summary = CollectSummary()
            plan.record(output, num_demos, np.random.SeedSequence(seed), summary, bar.update)
            return summary
        shares = [num_demos // shards + (index < num_demos % shards) for index in range(shards)]
        return _collect_shards(output, plan, shares, seed, bar.update)


def _refuse_other_collection(output: Path, shards: int) -> None:
    """Refuse, before any worker starts, an output that already holds shards (or, for shards, a ``training/``):
    ``dataset_roots`` reads a root with ``training/`` as one dataset, so the two layouts must never share one."""
    taken = [output / 'training', *(shard_dir(output, index) for index in range(shards))] if shards else \
        [shard_dir(output, 0)]
    existing = [str(path) for path in taken if path.exists()]
    if existing:
        raise FileExistsError(f'{", ".join(existing)} already exist; write to an empty directory')


def _collect_shards(output: Path, plan: _Plan, shares: Sequence[int], seed: int,
                    on_demos: Callable[[int], object]) -> CollectSummary:
    """One spawned process per share (spawn, not fork: a forked child would inherit the parent's pybullet/torch
    state), each writing its own shard; the parent counts progress and merges their summaries as they end."""
    context = multiprocessing.get_context('spawn')
    running: dict[Connection, tuple[str, multiprocessing.process.BaseProcess]] = {}
    summary, reported = CollectSummary(), set()
    try:
        for index, share in enumerate(shares):
            receiver, sender = context.Pipe(duplex=False)
            root = shard_dir(output, index)
            process = context.Process(target=_record_shard, args=(sender, plan, root, share, shard_seed(seed, index)),
                                      name=f'collect-{root.name}', daemon=True)
            process.start()
            sender.close()
            running[receiver] = (root.name, process)
        while running:
            for receiver in wait(list(running)):
                name, process = running[receiver]
                try:
                    message = receiver.recv()
                except EOFError:  # the worker has ended: it reported its summary first unless it was killed
                    del running[receiver]
                    receiver.close()
                    process.join()
                    if name not in reported:
                        summary.failed_shards[name] = f'worker process died ({_how_it_ended(process.exitcode)})'
                    continue
                if isinstance(message, int):
                    on_demos(message)
                else:
                    reported.add(name)
                    summary.merge(message)
    finally:  # only on an error or interrupt here: let the workers close their shards, then end them
        for _, process in running.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        for receiver, (_, process) in running.items():
            process.join(timeout=30.0)
            if process.is_alive():
                process.terminate()
                process.join()
            receiver.close()
    if summary.failed_shards:
        raise ShardsFailed(summary)
    return summary


def _how_it_ended(exitcode: int | None) -> str:
    return f'killed by {signal.Signals(-exitcode).name}' if exitcode is not None and exitcode < 0 \
        else f'exit code {exitcode}'


def _record_shard(sender: Connection, plan: _Plan, root: Path, num_demos: int, seed: np.random.SeedSequence) -> None:
    """A worker: record one shard, sending the demo count after each kept rollout, then its summary.

    An error ends the shard early but keeps it readable (the writer still writes its index) and is reported in
    the summary, so the parent can tell it from the other shards.
    """
    signal.signal(signal.SIGINT, _interrupt_once)
    summary = CollectSummary()
    try:
        plan.record(root, num_demos, seed, summary, sender.send)
    except BaseException as error:  # Ctrl-C included: the parent reports every shard's fate
        traceback.print_exc()
        summary.failed_shards[root.name] = f'{type(error).__name__}: {error}'
    sender.send(summary)
    sender.close()


def _interrupt_once(signum: int, frame: object) -> None:
    """Ctrl-C reaches a worker from the terminal and from the parent: only the first may interrupt, so that the
    writer's index files, written on the way out, are never cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
