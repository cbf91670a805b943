"""Thresholds refined by Bayesian optimisation, stored beside the checkpoint.

``deer-ros refine`` tunes the offline thresholds of one average budget on
simulator chains and records the best point here; the live
:class:`~deer_ros.budget.controller.ThresholdController` then uses it whenever
exactly that budget (and the same cap and cost kind) is requested, and the
offline solution otherwise. The checkpoint and its
calibration file are never rewritten.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

REFINED_FILE = 'refined_thresholds.json'


class RefinedFileError(ValueError):
    """The refined-thresholds file cannot be read or is malformed; the message names the file."""


@dataclass(frozen=True)
class RefinedEntry:
    avg_gflops: float
    cap: int
    cost_kind: str
    thresholds: tuple[float, ...]
    average_length: float
    average_cost: float
    tuning: dict[str, Any] = field(default_factory=dict)

    def matches(self, avg_gflops: float | None, cap: int, cost_kind: str) -> bool:
        return (avg_gflops is not None and math.isclose(self.avg_gflops, avg_gflops, rel_tol=1e-9)
                and self.cap == cap and self.cost_kind == cost_kind)


def refined_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / REFINED_FILE


def load_refined(path: str | Path) -> list[RefinedEntry]:
    """Entries of ``path``; none when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
        return [RefinedEntry(**{**entry, 'thresholds': tuple(float(t) for t in entry['thresholds'])})
                for entry in raw['entries']]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RefinedFileError(f'malformed refined-thresholds file {path}: {error}') from error


def save_refined(path: str | Path, entry: RefinedEntry) -> Path:
    """Add ``entry``, replacing one for the same budget, cap and cost kind; atomic write."""
    path = Path(path)
    entries = [e for e in load_refined(path) if not e.matches(entry.avg_gflops, entry.cap, entry.cost_kind)]
    entries.append(entry)
    temporary = path.with_name(path.name + '.tmp')
    temporary.write_text(json.dumps({'entries': [asdict(e) for e in entries]}, indent=1))
    temporary.replace(path)
    return path


def find_refined(entries: Sequence[RefinedEntry], avg_gflops: float | None, cap: int,
                 cost_kind: str) -> RefinedEntry | None:
    return next((entry for entry in entries if entry.matches(avg_gflops, cap, cost_kind)), None)
