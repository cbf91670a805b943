"""Training metrics: a long-format CSV always, TensorBoard scalars when ``tensorboard`` is installed.

Long format (``step,stage,name,value``) lets train and validation rows, whose
columns differ, share one append-only file; a resumed run first drops the
rows logged after its checkpoint so the curve has no duplicates.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

METRICS_FILE = 'metrics.csv'
HEADER = ['step', 'stage', 'name', 'value']


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics CSV with ``step`` as int and ``value`` as float."""
    with open(path, newline='') as handle:
        return [{**row, 'step': int(row['step']), 'value': float(row['value'])} for row in csv.DictReader(handle)]


class MetricsLog:
    """Append metrics of the main process; ``resume_step`` keeps earlier rows up to that step."""

    def __init__(self, directory: Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = directory / METRICS_FILE
        kept = [row for row in read_metrics(self.path) if row['step'] <= resume_step] \
            if resume_step is not None and self.path.is_file() else []
        self._handle = open(self.path, 'w', newline='')
        self._writer = csv.DictWriter(self._handle, fieldnames=HEADER)
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._tensorboard = None
        if tensorboard and importlib.util.find_spec('tensorboard') is not None:
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(str(directory / 'tensorboard'), purge_step=resume_step)

    def log(self, step: int, stage: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._writer.writerow({'step': step, 'stage': stage, 'name': name, 'value': f'{value:.6g}'})
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(name, value, step)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
