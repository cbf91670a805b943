"""Chain evaluation over several machines: the ranks of a torch.distributed group each run a share of the chains.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``
and the rendezvous address in every process it starts;
:meth:`DistributedContext.from_environment` joins that group, or, without them
(or with a world of one), is a single process that evaluates locally. Every rank
runs its share of the chains with :mod:`evaluation`'s own machinery (its own
``workers`` pool, failed chains recorded as failed) and sends each result to
rank 0 as the chain ends. Rank 0 alone reads and appends the results file (so a
killed run keeps every finished chain, whichever rank ran it), builds the
report and hands it to every rank. A chain's result depends only on the chain,
so the report is the local one.

The group is gloo (chains are CPU simulator work). torch.distributed rather than
Ray: torch is installed wherever this package runs, ``torchrun`` is what
``deer-ros train`` is already launched with, and Ray would add a heavy
dependency and a cluster service to start. torch is imported only when a group
is joined, so a local ``deer-ros evaluate --policy expert`` still starts without it.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import queue
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

from deer_ros.benchmark.chains import Chain
from deer_ros.benchmark.evaluation import (
    ChainResult,
    EvaluationReport,
    PolicyFactory,
    SimFactory,
    evaluate,
    gather_results,
    portable_error,
    recorded_results,
    run_chains,
)
from deer_ros.benchmark.protocols import DEER_ROS, ChainProtocol
from deer_ros.benchmark.results_file import ResultsFile
from deer_ros.calvin_layout import EP_LEN

T = TypeVar('T')
R = TypeVar('R')
V = TypeVar('V')

# A rank waits for the slowest rank's whole share at the end of an evaluation (hours for a large model): the
# default 30 minutes would end a healthy run. A rank that dies is seen at once (its connections close).
GROUP_TIMEOUT = timedelta(days=7)
_SIZE_TAG, _DATA_TAG = 1, 2


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the group: ``rank`` of ``world`` processes (``world == 1``: no group)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_environment(cls) -> 'DistributedContext':
        """Join the gloo group the launcher's environment describes (``WORLD_SIZE > 1``), else a single process."""
        if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
            return cls()
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group('gloo', timeout=GROUP_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items, round robin (every ``world``-th from ``rank`` on): shares differ by one at most."""
        return list(items[self.rank::self.world])

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (the other ranks' ``value`` is ignored)."""
        if not self.enabled:
            return value
        import torch.distributed as dist
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def send(self, value: Any) -> None:
        """``value`` to rank 0, which takes it with :meth:`receive` (from whichever rank sends first)."""
        import torch
        import torch.distributed as dist
        data = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)
        dist.send(torch.tensor([data.numel()], dtype=torch.int64), 0, tag=_SIZE_TAG)
        dist.send(data, 0, tag=_DATA_TAG)

    def receive(self) -> Any:
        """Rank 0: the next value any rank sent (its size from any rank, then its bytes from that rank)."""
        import torch
        import torch.distributed as dist
        size = torch.zeros(1, dtype=torch.int64)
        source = dist.recv(size, tag=_SIZE_TAG)
        data = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.recv(data, source, tag=_DATA_TAG)
        return pickle.loads(data.numpy().tobytes())

    def lockstep(self, work: Callable[[T], R], lead: Callable[[Callable[[T], R]], V]) -> V | None:
        """Rank 0 runs ``lead(step)``; each ``step(x)`` hands ``x`` to every rank and runs ``work(x)`` on all of
        them (their parts of one distributed job). The other ranks follow until ``lead`` returns or raises.

        Returns ``lead``'s value on rank 0, None on the others.
        """
        if not self.is_main:
            while (message := self.broadcast()) is not None:
                work(message[0])
            return None

        def step(argument: T) -> R:
            self.broadcast((argument,))  # a tuple, so that None stays the signal to stop
            return work(argument)

        try:
            return lead(step)
        finally:
            self.broadcast(None)

    def close(self) -> None:
        """Leave the group (nothing to do for a single process)."""
        if self.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def evaluate_distributed(context: DistributedContext, chains: Sequence[Chain], sim_factory: SimFactory,
                         policy_factory: PolicyFactory, workers: int = 1, max_steps: int = EP_LEN,
                         progress: bool = True, results: ResultsFile | None = None,
                         protocol: ChainProtocol = DEER_ROS) -> EvaluationReport:
    """:func:`~deer_ros.benchmark.evaluation.evaluate` over the ranks of ``context``; every rank gets the report.

    Rank 0 takes the chains ``results`` already holds (the other ranks' ``results`` and ``progress`` are ignored)
    and hands the indices left to every rank; each rank runs its :meth:`~DistributedContext.share` of them with
    ``workers`` processes of its own and sends each result to rank 0, which appends it to ``results`` at once.
    Raises what :func:`evaluate` raises, on rank 0 also what another rank's simulator or policy raised when they
    were built (noted with that rank); a rank that dies makes the others raise torch.distributed's error.
    """
    if not context.enabled:
        return evaluate(chains, sim_factory, policy_factory, workers, max_steps, progress, results, protocol)
    done = {}
    if context.is_main and results is not None:
        done = recorded_results(results, chains, max_steps, protocol=protocol)
    remaining = context.broadcast([index for index in range(len(chains)) if index not in done])
    mine = context.share(remaining)
    runs = run_chains([(index, chains[index]) for index in mine], sim_factory, policy_factory, workers, max_steps,
                      protocol)
    if not context.is_main:
        _send_all(context, runs)
        return EvaluationReport(context.broadcast())
    arrivals = _arrivals(context, runs, len(mine), len(remaining) - len(mine))
    report = gather_results(arrivals, len(chains), list(done.values()), results, progress)
    context.broadcast(report.results)
    return report


@dataclass
class _RankFailed:
    """What a rank sends rank 0 instead of a result when it cannot go on: rank 0 raises ``error``.

    Rank 0's own threads use it too, for what stops its chains or its receiving.
    """

    rank: int
    error: BaseException


def _send_all(context: DistributedContext, runs: Iterator[ChainResult]) -> None:
    with contextlib.closing(runs):
        try:
            for result in runs:
                context.send(result)
        except Exception as error:
            context.send(_RankFailed(context.rank, portable_error(error)))
            raise


def _arrivals(context: DistributedContext, local: Iterator[ChainResult], num_local: int,
              num_remote: int) -> Iterator[ChainResult]:
    """Rank 0: the results of its ``num_local`` chains and ``num_remote`` from the other ranks, as they arrive.

    Two threads feed one queue: one runs the local chains (its workers or, with one worker, the chains
    themselves), one receives exactly what the other ranks send for this evaluation (so none is left waiting to
    take the next one's). The caller's thread only takes what arrives, so a result is on disk as soon as it
    ends, whichever rank ran it.
    """
    inbox: queue.Queue[ChainResult | _RankFailed] = queue.Queue()
    stop = threading.Event()

    def run_local() -> None:
        try:
            with contextlib.closing(local):
                for result in local:
                    if stop.is_set():
                        return
                    inbox.put(result)
        except BaseException as error:
            inbox.put(_RankFailed(context.rank, error))

    def receive() -> None:
        try:
            for _ in range(num_remote):
                inbox.put(context.receive())
        except BaseException as error:
            inbox.put(_RankFailed(context.rank, error))

    threads = [threading.Thread(target=target, name=f'deer_ros-{name}', daemon=True)
               for name, target in (('chains', run_local), ('results', receive))]
    for thread in threads:
        thread.start()
    try:
        for _ in range(num_local + num_remote):
            item = inbox.get()
            if isinstance(item, _RankFailed):
                if item.rank > 0:
                    item.error.add_note(f'(raised on rank {item.rank})')
                raise item.error
            yield item
    finally:
        stop.set()  # interrupted: the local chains stop after the one running, without a thread waiting on them
    for thread in threads:
        thread.join()
