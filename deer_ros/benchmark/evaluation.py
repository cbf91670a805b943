"""CALVIN's long-horizon protocol: run 5-instruction chains, stop a chain at its first failed subtask.

Per chain the env is reset once, from the chain's symbolic start state made
concrete by the protocol (:mod:`protocols`) with an RNG seeded from the FNV-1
hash of the conditions (so a chain always starts identically, whichever worker
runs it). Per subtask: ``policy.reset()``, remember ``start_info``, then at most
``max_steps`` of ``policy.step(obs, instruction)`` / ``env.step(action)`` (the
protocol's wording of the task) until the oracle reports the subtask. The env
is not reset between subtasks: each one starts wherever the previous left the
scene, which is the point.

Chains run in worker processes that each build their own simulator and
policy from picklable factories. A chain's result depends only on the chain
(the embedded env rebuilds its world on every reset), so results are identical
for any number of workers, provided the policy is deterministic after ``reset()``.
:mod:`distributed_evaluation` spreads chains over machines with the same
runner (:func:`run_chains`) and report (:func:`gather_results`).

An evaluation survives its chains: a chain that raises (policy, simulator or
their factories) or whose worker process dies is recorded as failed with the
reason, and the next chain runs. With a results file (:mod:`results_file`)
every chain is on disk as soon as it ends, and an interrupted evaluation
resumed from it gives the summary of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from deer_ros.benchmark.chains import CHAIN_LENGTH, Chain, chains_digest
from deer_ros.benchmark.protocols import DEER_ROS, ChainProtocol
from deer_ros.benchmark.results_file import ResultsFile
from deer_ros.benchmark.tasks import TaskOracle
from deer_ros.calvin_layout import EP_LEN
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.interface import Info, Obs, SimEnv

_LOG = logging.getLogger(__name__)


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
    """Outcome of one chain: ``steps[i]`` is how long subtask i took (only attempted subtasks are listed).

    A chain that could not finish has an ``error`` (exception type and message), 0 successes and no steps.
    """

    index: int
    chain: Chain
    successes: int
    steps: list[int]
    stat_sums: dict[str, float] = field(default_factory=dict)
    stat_counts: dict[str, int] = field(default_factory=dict)  # steps that reported each stat
    error: str | None = None

    @classmethod
    def failed(cls, index: int, chain: Chain, error: str) -> 'ChainResult':
        return cls(index, chain, 0, [], error=error)

    def add_stats(self, stats: Mapping[str, float]) -> None:
        for key, value in stats.items():
            self.stat_sums[key] = self.stat_sums.get(key, 0.0) + float(value)
            self.stat_counts[key] = self.stat_counts.get(key, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {'index': self.index, **self.chain.to_json(), 'successes': self.successes, 'steps': self.steps,
                'step_stats': {key: value / self.stat_counts[key] for key, value in self.stat_sums.items()},
                'error': self.error}

    def to_record(self) -> dict[str, Any]:
        """Its line in a results file: the JSON plus the exact stat sums, so a resumed report averages the same."""
        return {**self.to_json(), 'stat_sums': self.stat_sums, 'stat_counts': self.stat_counts}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> 'ChainResult':
        return cls(record['index'], Chain.from_json(record), record['successes'], list(record['steps']),
                   dict(record['stat_sums']), dict(record['stat_counts']), record['error'])


def run_chain(sim: Simulator, policy: Policy, chain: Chain, index: int = 0, max_steps: int = EP_LEN,
              protocol: ChainProtocol = DEER_ROS) -> ChainResult:
    """Evaluate one chain in ``sim`` with ``policy``, from the protocol's start state and in its words."""
    robot_obs, scene_obs = protocol.start_state(chain, sim.scene)
    obs = sim.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    result = ChainResult(index, chain, 0, [])
    for task in chain.tasks:
        done, obs = _run_subtask(sim, policy, obs, task, protocol.instruction(task), max_steps, result)
        if not done:
            break
        result.successes += 1
    return result


def _run_subtask(sim: Simulator, policy: Policy, obs: Obs, task: str, instruction: str, max_steps: int,
                 result: ChainResult) -> tuple[bool, Obs]:
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
    """CALVIN's metrics over a list of chain results (ordered by chain index).

    Failed chains (``ChainResult.error``) stay in the denominator with 0 successes in the average length and the
    success rates, so a failure can only lower the score, never raise it; they are counted and listed separately
    (``failed``, ``num_failed``) and, having no steps, add nothing to the task counts and step stats.
    """

    results: list[ChainResult]

    @property
    def failed(self) -> list[ChainResult]:
        return [result for result in self.results if result.error is not None]

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
        return {'num_chains': len(self.results), 'num_failed': len(self.failed), 'average_length': self.average_length,
                'success_rates': dict(zip(range(1, CHAIN_LENGTH + 1), self.success_rates)),
                'task_counts': self.task_counts(), 'step_stats': self.step_stats(),
                'chains': [result.to_json() for result in self.results]}

    def format_table(self) -> str:
        """Human-readable summary: success rate per chain position, average length, per-task rates."""
        lines = [f'chains: {len(self.results)}   average successful length: {self.average_length:.3f}',
                 '  '.join(f'{k}/5: {rate * 100:5.1f}%' for k, rate in enumerate(self.success_rates, 1))]
        lines += [f'  {key}: {value:.4g}' for key, value in self.step_stats().items()]
        if self.failed:
            lines.append(f'failed chains: {len(self.failed)} (counted as 0 subtasks)')
            lines += [f'  chain {result.index}: {result.error}' for result in self.failed]
        lines.append(f'{"task":<26} {"success":>7} / {"tried":<5}')
        for task, counts in self.task_counts().items():
            lines.append(f'{task:<26} {counts["succeeded"]:>7} / {counts["attempted"]:<5}')
        return '\n'.join(lines)


def run_settings(chains: Sequence[Chain], max_steps: int, protocol: ChainProtocol = DEER_ROS) -> dict[str, Any]:
    """The settings of a results file that :func:`evaluate` knows itself; callers add policy and simulator ones."""
    return {'protocol': protocol.setting, 'max_steps': max_steps, 'chains_sha256': chains_digest(chains)}


def evaluate(chains: Sequence[Chain], sim_factory: SimFactory, policy_factory: PolicyFactory, workers: int = 1,
             max_steps: int = EP_LEN, progress: bool = True, results: ResultsFile | None = None,
             protocol: ChainProtocol = DEER_ROS) -> EvaluationReport:
    """Run every chain under ``protocol``; ``workers > 1`` spreads chains over spawned processes with identical results.

    With ``results`` (opened with :func:`run_settings` of the same protocol among its settings), each chain's
    record is appended as the chain ends, and the chains it already holds are taken from it, not run again, except
    failed ones.
    Raises only what building the simulator or policy raises in a fresh process (the first, or one replacing
    a dead worker), which no chain could get past, and ``KeyboardInterrupt``; the file keeps every chain
    finished until then.
    """
    done = recorded_results(results, chains, max_steps, protocol=protocol) if results is not None else {}
    items = [(index, chain) for index, chain in enumerate(chains) if index not in done]
    runs = run_chains(items, sim_factory, policy_factory, workers, max_steps, protocol)
    return gather_results(runs, len(chains), list(done.values()), results, progress)


def run_chains(items: Sequence[tuple[int, Chain]], sim_factory: SimFactory, policy_factory: PolicyFactory,
               workers: int, max_steps: int, protocol: ChainProtocol) -> Iterator[ChainResult]:
    """Each ``(index, chain)`` run as :func:`evaluate` runs it, results in the order chains end.

    Lazy: nothing starts before the first ``next()``; closing the iterator stops its workers.
    """
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    return _run_all(list(items), _ChainRunner(sim_factory, policy_factory, max_steps, protocol), workers)


def gather_results(runs: Iterator[ChainResult], total: int, finished: list[ChainResult],
                   results: ResultsFile | None = None, progress: bool = True) -> EvaluationReport:
    """The report of ``finished`` (taken from ``results``) and everything ``runs`` yields, ``total`` chains in all.

    Each new result is appended to ``results`` as it arrives, before the next is waited for; ``runs`` is closed
    on the way out, so an interrupt stops its workers at once, not whenever its traceback is freed.
    """
    finished = list(finished)
    with tqdm(total=total, initial=len(finished), desc='chains', unit='chain', disable=not progress) as bar, \
            contextlib.closing(runs):
        for result in runs:
            if results is not None:
                results.append(result.to_record())
            finished.append(result)
            bar.update()
            bar.set_postfix(avg_len=f'{np.mean([r.successes for r in finished]):.2f}',
                            failed=sum(r.error is not None for r in finished))
    return EvaluationReport(sorted(finished, key=lambda result: result.index))


def recorded_results(results: ResultsFile, chains: Sequence[Chain], max_steps: int, first_index: int = 0,
                     protocol: ChainProtocol = DEER_ROS) -> dict[int, ChainResult]:
    """The chains ``results`` holds that need not run again (failed ones do), by index.

    ``chains[i]`` has index ``first_index + i`` (:func:`evaluate` numbers from 0, the ROS bridge from its offset).
    """
    results.require(run_settings(chains, max_steps, protocol))
    done = {}
    for index, record in results.records.items():
        result = ChainResult.from_record(record)
        position = index - first_index
        if not 0 <= position < len(chains) or result.chain != chains[position]:
            raise ValueError(f'{results.path}: the record of chain {index} is not a chain of this evaluation')
        if result.error is None:
            done[index] = result
    return done


class _ChainRunner:
    """Runs chains with a simulator and policy built on first use, and rebuilt after a chain failed.

    Rebuilding keeps a failure (a broken env, a policy in a bad state) from spreading to later chains.
    The first build's error is raised, not recorded: a missing package or a wrong path is a setup error that
    would fail every chain. Picklable before first use, so each worker process gets its own.
    """

    def __init__(self, sim_factory: SimFactory, policy_factory: PolicyFactory, max_steps: int,
                 protocol: ChainProtocol) -> None:
        self.sim_factory, self.policy_factory, self.max_steps = sim_factory, policy_factory, max_steps
        self.protocol = protocol
        self._built: tuple[Simulator, Policy] | None = None
        self._started = False

    def __call__(self, index: int, chain: Chain) -> ChainResult:
        try:
            sim, policy = self._build()
            return run_chain(sim, policy, chain, index, self.max_steps, self.protocol)
        except Exception as error:  # whatever stops one chain is that chain's result, not the run's end
            if not self._started:
                raise
            _LOG.error('chain %d failed', index, exc_info=True)
            self.close()
            return ChainResult.failed(index, chain, f'{type(error).__name__}: {error}')

    def _build(self) -> tuple[Simulator, Policy]:
        if self._built is None:
            sim = self.sim_factory()
            try:
                self._built = (sim, self.policy_factory(sim.env))
            except BaseException:
                sim.env.close()
                raise
            self._started = True
        return self._built

    def close(self) -> None:
        if self._built is not None:
            built, self._built = self._built, None
            built[0].env.close()


def _run_all(items: list[tuple[int, Chain]], runner: _ChainRunner, workers: int) -> Iterator[ChainResult]:
    if workers == 1:
        try:
            for index, chain in items:
                yield runner(index, chain)
        finally:
            runner.close()
        return
    yield from _run_in_processes(items, runner, workers)


class _Worker:
    """A spawned process running one chain at a time (spawn, not fork: a forked child would inherit the
    parent's pybullet/torch state); ``job`` is the chain it runs, None when idle."""

    def __init__(self, runner: _ChainRunner) -> None:
        context = multiprocessing.get_context('spawn')
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, runner), daemon=True)
        self.process.start()
        child.close()
        self.job: tuple[int, Chain] | None = None

    def submit(self, item: tuple[int, Chain]) -> None:
        self.job = item
        self.connection.send(item)

    def collect(self) -> ChainResult | _CannotStart | None:
        """The result of its chain, or None if the process died without one."""
        try:
            return self.connection.recv() if self.connection.poll() else None
        except (EOFError, OSError):
            return None
        finally:
            self.job = None

    def death(self) -> str:
        self.process.join()
        code = self.process.exitcode
        how = f'killed by {signal.Signals(-code).name}' if code is not None and code < 0 else f'exit code {code}'
        return f'WorkerDied: the worker process running this chain died ({how})'

    def stop(self) -> None:
        """Ask an idle worker to finish; end a busy one (the caller is giving up on its chain)."""
        if self.job is None and self.process.is_alive():
            try:
                self.connection.send(None)
                self.process.join(timeout=30.0)
            except OSError:
                pass
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.connection.close()


def _run_in_processes(items: list[tuple[int, Chain]], runner: _ChainRunner, workers: int) -> Iterator[ChainResult]:
    """Chains over ``workers`` processes, results as they end; a worker that dies fails only the chain it ran."""
    pending = deque(items)
    pool = [_Worker(runner) for _ in range(min(workers, len(items)))]
    try:
        while True:
            for worker in pool:
                if worker.job is None and pending:
                    worker.submit(pending.popleft())
            busy = [worker for worker in pool if worker.job is not None]
            if not busy:
                return
            ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.connection not in ready and worker.process.sentinel not in ready:
                    continue
                index, chain = worker.job
                result = worker.collect()
                if isinstance(result, _CannotStart):
                    raise result.error
                if result is None:
                    result = ChainResult.failed(index, chain, worker.death())
                    worker.stop()
                    pool.remove(worker)
                    if pending:
                        pool.append(_Worker(runner))
                yield result
    finally:
        for worker in pool:
            worker.stop()


@dataclass
class _CannotStart:
    """A worker's answer when it cannot build its simulator or policy: the parent raises ``error``."""

    error: BaseException


def portable_error(error: Exception) -> Exception:
    """``error``, or a ``RuntimeError`` with its type and message if it would not survive pickling.

    For errors sent to another process: an exception needing other constructor arguments cannot be rebuilt there.
    """
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f'{type(error).__name__}: {error}')
    return error


def _serve(connection: multiprocessing.connection.Connection, runner: _ChainRunner) -> None:
    """A worker's loop: run each chain sent, answer its result, until sent None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops its workers
    try:
        while (item := connection.recv()) is not None:
            try:
                result = runner(*item)
            except Exception as error:
                _LOG.error('worker cannot start', exc_info=True)
                connection.send(_CannotStart(portable_error(error)))
                return
            connection.send(result)
    except (EOFError, OSError):  # the parent is gone
        pass
    finally:
        runner.close()


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
