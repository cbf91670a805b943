"""CALVIN's long-horizon protocol: run 5-instruction chains, stop a chain at its first failed subtask.

Per chain the env is reset once, from the chain's symbolic start state made
concrete by ``initial_state`` with an RNG seeded from the FNV-1 hash of the
conditions (so a chain always starts identically, whichever worker runs it).
Per subtask: ``policy.reset()``, remember ``start_info``, then at most
``max_steps`` of ``policy.step(obs, instruction)`` / ``env.step(action)``
until the oracle reports the subtask. The env is not reset between subtasks:
each one starts wherever the previous left the scene, which is the point.

Chains run in worker processes that each build their own simulator and
policy from picklable factories. A chain's result depends only on the chain
(the embedded env rebuilds its world on every reset), so results are identical
for any number of workers, provided the policy is deterministic after ``reset()``.
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from deer_ros.benchmark.chains import CHAIN_LENGTH, Chain, initial_state_seed
from deer_ros.benchmark.language import evaluation_instruction
from deer_ros.benchmark.tasks import TaskOracle
from deer_ros.calvin_layout import EP_LEN
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state
from deer_ros.sim.interface import Info, Obs, SimEnv


class Policy(Protocol):
    """What the evaluator drives. Optionally also ``step_stats() -> Mapping[str, float]``.

    ``step_stats`` is read after every step (e.g. the DeeR policy's GFLOPs and
    exit index) and each stat is averaged, per chain and over the whole
    evaluation, over the steps that reported it.
    """

    def reset(self) -> None: ...

    def step(self, obs: Obs, instruction: str) -> np.ndarray: ...


class Oracle(Protocol):
    def get_task_info_for_set(self, start_info: Info, end_info: Info, tasks: set[str]) -> set[str]: ...


@dataclass
class Simulator:
    """An env, the oracle that judges it, and the scene variant ``initial_state`` lays out."""

    env: SimEnv
    oracle: Oracle
    scene: str


SimFactory = Callable[[], Simulator]
PolicyFactory = Callable[[SimEnv], Policy]
"""Gets the worker's env so privileged policies (the scripted expert) can read it; learned policies ignore it."""


@dataclass
class ChainResult:
    """Outcome of one chain: ``steps[i]`` is how long subtask i took (only attempted subtasks are listed)."""

    index: int
    chain: Chain
    successes: int
    steps: list[int]
    stat_sums: dict[str, float] = field(default_factory=dict)
    stat_counts: dict[str, int] = field(default_factory=dict)  # steps that reported each stat

    def add_stats(self, stats: Mapping[str, float]) -> None:
        for key, value in stats.items():
            self.stat_sums[key] = self.stat_sums.get(key, 0.0) + float(value)
            self.stat_counts[key] = self.stat_counts.get(key, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {'index': self.index, **self.chain.to_json(), 'successes': self.successes, 'steps': self.steps,
                'step_stats': {key: value / self.stat_counts[key] for key, value in self.stat_sums.items()}}


def run_chain(sim: Simulator, policy: Policy, chain: Chain, index: int = 0, max_steps: int = EP_LEN) -> ChainResult:
    """Evaluate one chain in ``sim`` with ``policy``."""
    rng = np.random.default_rng(initial_state_seed(chain.initial))
    robot_obs, scene_obs = initial_state(chain.initial.conditions(), rng, sim.scene)
    obs = sim.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    result = ChainResult(index, chain, 0, [])
    for task in chain.tasks:
        done, obs = _run_subtask(sim, policy, obs, task, max_steps, result)
        if not done:
            break
        result.successes += 1
    return result


def _run_subtask(sim: Simulator, policy: Policy, obs: Obs, task: str, max_steps: int,
                 result: ChainResult) -> tuple[bool, Obs]:
    instruction = evaluation_instruction(task)
    stats = getattr(policy, 'step_stats', None)
    policy.reset()
    start_info = sim.env.get_info()
    result.steps.append(0)
    for _ in range(max_steps):
        action = policy.step(obs, instruction)
        obs, _, _, info = sim.env.step(action)
        result.steps[-1] += 1
        if stats is not None:
            result.add_stats(stats())
        if sim.oracle.get_task_info_for_set(start_info, info, {task}):
            return True, obs
    return False, obs


@dataclass
class EvaluationReport:
    """CALVIN's metrics over a list of chain results (ordered by chain index)."""

    results: list[ChainResult]

    @property
    def success_rates(self) -> list[float]:
        """Fraction of chains that completed at least k subtasks, k = 1..5."""
        counts = np.array([result.successes for result in self.results])
        return [float(np.mean(counts >= k)) if counts.size else 0.0 for k in range(1, CHAIN_LENGTH + 1)]

    @property
    def average_length(self) -> float:
        """CALVIN's headline number: mean count of consecutive completed subtasks (0-5)."""
        return float(np.mean([result.successes for result in self.results])) if self.results else 0.0

    def task_counts(self) -> dict[str, dict[str, int]]:
        """Per task, how often it was attempted and how often it succeeded."""
        attempted, succeeded = Counter(), Counter()
        for result in self.results:
            attempted.update(result.chain.tasks[:len(result.steps)])
            succeeded.update(result.chain.tasks[:result.successes])
        return {task: {'attempted': attempted[task], 'succeeded': succeeded[task]} for task in sorted(attempted)}

    def step_stats(self) -> dict[str, float]:
        """Each policy stat averaged over the steps of the evaluation that reported it.

        A policy reports model stats (exit, GFLOPs) only on the steps its model
        ran: scripted steps such as the return to the ready pose are not model
        actions, and averaging zeros for them would understate the cost per action.
        """
        keys = sorted({key for result in self.results for key in result.stat_sums})
        return {key: sum(r.stat_sums.get(key, 0.0) for r in self.results)
                / sum(r.stat_counts.get(key, 0) for r in self.results) for key in keys}

    def to_json(self) -> dict[str, Any]:
        return {'num_chains': len(self.results), 'average_length': self.average_length,
                'success_rates': dict(zip(range(1, CHAIN_LENGTH + 1), self.success_rates)),
                'task_counts': self.task_counts(), 'step_stats': self.step_stats(),
                'chains': [result.to_json() for result in self.results]}

    def format_table(self) -> str:
        """Human-readable summary: success rate per chain position, average length, per-task rates."""
        lines = [f'chains: {len(self.results)}   average successful length: {self.average_length:.3f}',
                 '  '.join(f'{k}/5: {rate * 100:5.1f}%' for k, rate in enumerate(self.success_rates, 1))]
        lines += [f'  {key}: {value:.4g}' for key, value in self.step_stats().items()]
        lines.append(f'{"task":<26} {"success":>7} / {"tried":<5}')
        for task, counts in self.task_counts().items():
            lines.append(f'{task:<26} {counts["succeeded"]:>7} / {counts["attempted"]:<5}')
        return '\n'.join(lines)


def evaluate(chains: Sequence[Chain], sim_factory: SimFactory, policy_factory: PolicyFactory, workers: int = 1,
             max_steps: int = EP_LEN, progress: bool = True) -> EvaluationReport:
    """Run every chain; ``workers > 1`` spreads chains over spawned processes with identical results."""
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    items = list(enumerate(chains))
    bar = tqdm(total=len(items), desc='chains', unit='chain', disable=not progress)
    results: list[ChainResult] = []
    for result in _run_all(items, sim_factory, policy_factory, workers, max_steps):
        results.append(result)
        bar.update()
        bar.set_postfix(avg_len=f'{np.mean([r.successes for r in results]):.2f}')
    bar.close()
    return EvaluationReport(sorted(results, key=lambda result: result.index))


def _run_all(items: list[tuple[int, Chain]], sim_factory: SimFactory, policy_factory: PolicyFactory,
             workers: int, max_steps: int) -> Iterator[ChainResult]:
    if workers == 1:
        _init_worker(sim_factory, policy_factory, max_steps)
        try:
            for item in items:  # not map(): a StopIteration leaking from a policy would end it silently
                yield _run_item(item)
        finally:
            _close_worker()
        return
    # spawn, not fork: a forked child would inherit pybullet/torch state of the parent.
    context = multiprocessing.get_context('spawn')
    with context.Pool(workers, initializer=_init_worker, initargs=(sim_factory, policy_factory, max_steps)) as pool:
        yield from pool.imap_unordered(_run_item, items)


_worker: tuple[Simulator, Policy, int] | None = None


def _init_worker(sim_factory: SimFactory, policy_factory: PolicyFactory, max_steps: int) -> None:
    global _worker
    sim = sim_factory()
    _worker = (sim, policy_factory(sim.env), max_steps)


def _run_item(item: tuple[int, Chain]) -> ChainResult:
    sim, policy, max_steps = _worker
    index, chain = item
    return run_chain(sim, policy, chain, index, max_steps)


def _close_worker() -> None:
    global _worker
    _worker[0].env.close()
    _worker = None


@dataclass(frozen=True)
class EmbeddedSim:
    """Factory for the embedded pybullet play table (picklable, so workers can build their own).

    ``cameras=False`` skips rendering (~15x faster steps): only for policies
    that do not look at images, such as the scripted expert.
    """

    scene: str = 'D'
    cameras: bool = True

    def __call__(self) -> Simulator:
        return Simulator(PlayTableEnv(scene=self.scene, cameras=self.cameras), TaskOracle(), self.scene)
