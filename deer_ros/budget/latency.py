"""The per-exit step-time table: measured on this device, cached, never guessed from GFLOPs.

A robot's budget is the control period, and how GFLOPs turn into
milliseconds depends on the CPU/GPU, the thread count, the torch build and
the checkpoint. So the table is measured: one full step capped at each exit
(both cameras, the decoder up to that exit, the head at every exit checked),
repeated, with p50/p99/mean per exit. The model is run by whoever owns it
(:mod:`deer_ros.policy.latency_probe`); this module only needs a callable
``step_at(exit_index) -> milliseconds``, so it stays below the policy layer.

Rounds visit every exit in turn (alternating direction) instead of timing
one exit after the other, so a burst of load from another process is spread
over all exits rather than inflating one of them; a short rest after each step
keeps the measurement's duty cycle like a control loop's.

Measuring takes seconds, so the table is cached as JSON under
``$XDG_CACHE_HOME/deer_ros/latency/``, one file per :class:`LatencyKey`
(device, checkpoint hash, thread count, torch version): a second start with
the same key reuses it; any differing key field is another file, so a stale
table is never read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deer_ros.model.pretrained_weights import cache_dir

FORMAT_VERSION = 1
DEFAULT_REPETITIONS = 20
DEFAULT_WARMUP = 2
DEFAULT_REST = 0.1  # sleep after a step, as a fraction of its time
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyKey:
    """What a table is valid for; a table measured under any other key is not used.

    Attributes:
        device: the compute device in words, e.g. ``cpu: AMD EPYC 7B13 (2 cpus)``.
        checkpoint: the checkpoint's SHA-256 (``config <hash>`` for a config built with random weights).
        threads: torch intra-op threads the steps ran with.
        torch_version: ``torch.__version__``.
    """

    device: str
    checkpoint: str
    threads: int
    torch_version: str

    def digest(self) -> str:
        """Stable hash of every field: names the cache file."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        """Short words for messages: where the numbers hold."""
        threads = 'thread' if self.threads == 1 else 'threads'
        return f'{self.device}, {self.threads} {threads}, torch {self.torch_version}'


@dataclass(frozen=True)
class LatencyTable:
    """Measured step time (ms) of a step that stops at each exit.

    The percentiles are as measured. The solvers use :meth:`peak_costs` and
    :meth:`average_costs`, their running maxima: a step stopping at exit k+1
    does everything one stopping at k does and more, so a deeper exit
    measured faster is noise, and a hard limit must not trust it.
    """

    key: LatencyKey
    exit_layers: tuple[int, ...]
    mean_ms: tuple[float, ...]
    p50_ms: tuple[float, ...]
    p99_ms: tuple[float, ...]
    repetitions: int
    measured_at: str

    def __post_init__(self) -> None:
        sizes = {len(self.exit_layers), len(self.mean_ms), len(self.p50_ms), len(self.p99_ms)}
        if len(sizes) != 1 or not self.exit_layers:
            raise ValueError(f'a latency table needs one entry per exit in every column, got sizes {sorted(sizes)}')
        for name in ('mean_ms', 'p50_ms', 'p99_ms'):
            values = getattr(self, name)
            if not all(math.isfinite(value) and value > 0 for value in values):
                raise ValueError(f'{name} must be finite and > 0, got {list(values)}')
        if self.repetitions < 1:
            raise ValueError(f'repetitions must be >= 1, got {self.repetitions}')

    @classmethod
    def from_samples(cls, key: LatencyKey, exit_layers: Sequence[int], samples: Sequence[Sequence[float]],
                     measured_at: str | None = None) -> 'LatencyTable':
        """Summarise ``samples[k]`` (step times in ms at exit k, the same count for every exit)."""
        counts = {len(times) for times in samples}
        if len(counts) != 1:
            raise ValueError(f'every exit needs the same number of samples, got counts {sorted(counts)}')
        arrays = [np.asarray(times, dtype=np.float64) for times in samples]
        return cls(key=key, exit_layers=tuple(int(layer) for layer in exit_layers),
                   mean_ms=tuple(float(times.mean()) for times in arrays),
                   p50_ms=tuple(float(np.percentile(times, 50)) for times in arrays),
                   p99_ms=tuple(float(np.percentile(times, 99)) for times in arrays),
                   repetitions=counts.pop(),
                   measured_at=measured_at or datetime.now(timezone.utc).isoformat(timespec='seconds'))

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def peak_costs(self) -> np.ndarray:
        """Per-exit p99 step time, made non-decreasing: what ``peak_ms`` is checked against."""
        return np.maximum.accumulate(np.asarray(self.p99_ms, dtype=np.float64))

    def average_costs(self) -> np.ndarray:
        """Per-exit mean step time, made non-decreasing: the costs ``avg_ms`` is solved with."""
        return np.maximum.accumulate(np.asarray(self.mean_ms, dtype=np.float64))

    def matches(self, exit_layers: Sequence[int]) -> bool:
        """True when the table was measured for the same exits."""
        return tuple(int(layer) for layer in exit_layers) == self.exit_layers

    # ---- file format
    def to_dict(self) -> dict[str, Any]:
        return {'format_version': FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'LatencyTable':
        """The table of :meth:`to_dict`; raises ``ValueError`` for another format or malformed fields."""
        if not isinstance(data, dict) or data.get('format_version') != FORMAT_VERSION:
            raise ValueError(f'not a latency table of format {FORMAT_VERSION}')
        try:
            fields = {name: tuple(value) if isinstance(value, list) else value
                      for name, value in data.items() if name != 'format_version'}
            return cls(**{**fields, 'key': LatencyKey(**data['key'])})
        except (KeyError, TypeError) as error:
            raise ValueError(f'malformed latency table ({error})') from error


def measure_latency(step_at: Callable[[int], float], num_exits: int, *, repetitions: int = DEFAULT_REPETITIONS,
                    warmup: int = DEFAULT_WARMUP, rest: float = DEFAULT_REST) -> list[list[float]]:
    """Step times (ms) per exit: ``warmup`` discarded rounds, then ``repetitions`` rounds over every exit.

    ``step_at(k)`` runs one step that stops at exit ``k`` and returns its time
    in ms. Each round visits all exits, alternating direction. After each step
    the measurement sleeps ``rest`` times the step's duration: a control node at
    real-time priority that ran flat out would be stopped by the kernel for 50 ms
    every second (``sched_rt_runtime_us``, 95 %), a stall its control loop, which
    sleeps between steps, never sees.
    """
    if num_exits < 1 or repetitions < 1 or warmup < 0 or rest < 0:
        raise ValueError(f'need num_exits >= 1, repetitions >= 1, warmup >= 0, rest >= 0; got {num_exits}, '
                         f'{repetitions}, {warmup}, {rest}')
    samples: list[list[float]] = [[] for _ in range(num_exits)]
    for round_index in range(warmup + repetitions):
        order = range(num_exits) if round_index % 2 == 0 else range(num_exits - 1, -1, -1)
        for exit_index in order:
            milliseconds = step_at(exit_index)
            if round_index >= warmup:
                samples[exit_index].append(milliseconds)
            time.sleep(rest * milliseconds / 1e3)
    return samples


class LatencyCache:
    """Latency tables on disk, one JSON file per key; ``directory`` defaults to the user cache."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir() / 'latency'

    def path(self, key: LatencyKey) -> Path:
        return self.directory / f'latency-{key.digest()[:20]}.json'

    def load(self, key: LatencyKey) -> LatencyTable | None:
        """The cached table for ``key``; ``None`` when there is none or the file is unreadable (it is re-measured)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            _LOG.warning('ignoring unreadable latency cache %s: %s', path, error)
            return None
        return table if table.key == key else None

    def save(self, table: LatencyTable) -> Path:
        """Write ``table`` under its key (atomically: a crash never leaves half a file)."""
        path = self.path(table.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')  # two nodes measuring at once each write whole
        tmp.write_text(json.dumps(table.to_dict(), indent=2))
        tmp.replace(path)
        return path

    def get_or_measure(self, key: LatencyKey, measure: Callable[[], LatencyTable], *,
                       refresh: bool = False) -> tuple[LatencyTable, bool]:
        """``(table, reused)``: the cached table for ``key``, else ``measure()`` saved; ``refresh`` always measures."""
        cached = None if refresh else self.load(key)
        if cached is not None:
            return cached, True
        table = measure()
        if table.key != key:
            raise ValueError(f'measured a table for {table.key}, asked for {key}')
        self.save(table)
        return table, False
