"""An evaluation's results file: JSON Lines written as chains end, so a killed run keeps every finished chain.

Line 1 is the header, ``{"format": "deer_ros.chain_results", "version": 1, "settings": {...}}``:
every setting a chain's result depends on (the policy and its arguments, the
simulator, the chain slice and its sha256, the step budget, the protocol
version), so a file is only ever continued by the run that started it. Every
later line is one chain's record, a JSON object with at least its ``index``,
appended in the order chains end (workers finish out of order) and flushed to
disk (``fsync``) before the next one: a kill loses at most the chains in
progress, and a line cut short by the kill is dropped with a warning when the
file is resumed. A later record for an index replaces an earlier one (a resumed
evaluation re-runs chains recorded as failed).

Records are plain dicts so every evaluator can share the format: the in-process
one (``deer_ros.benchmark.evaluation.evaluate``) and the ROS bridge.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FORMAT = 'deer_ros.chain_results'
VERSION = 1

_LOG = logging.getLogger(__name__)


class SettingsMismatch(ValueError):
    """The file was written by a run with other settings: continuing it would mix two measurements."""


@dataclass
class ResultsFile:
    """An open results file: its settings and its chain records by index (the last one of an index)."""

    path: Path
    settings: dict[str, Any]
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | str, settings: Mapping[str, Any], resume: bool = False) -> 'ResultsFile':
        """Start ``path`` with a header for ``settings``, or with ``resume`` continue it (starting it if absent).

        Refuses (``FileExistsError``) to start over a file that already holds a run, and
        (``SettingsMismatch``) to resume a file written with other settings, naming each difference.
        """
        path, settings = Path(path), _as_json(settings)
        exists = path.exists() and path.stat().st_size > 0
        if exists and not resume:
            raise FileExistsError(f'{path} already holds an evaluation: resume it, or remove it or write elsewhere')
        if exists:
            header, records, end = _read(path)
            if header is not None:
                _check(path, header.get('settings', {}), settings)
                if end < path.stat().st_size:
                    _LOG.warning('%s: its last line was cut short (the run stopped while writing it): ignored, '
                                 'that chain runs again', path)
                    os.truncate(path, end)
                return cls(path, settings, records)
            _LOG.warning('%s: its header was cut short: starting the file again', path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open('w') as stream:
            _write_line(stream, {'format': FORMAT, 'version': VERSION, 'settings': settings})
        return cls(path, settings)

    def require(self, settings: Mapping[str, Any]) -> None:
        """``SettingsMismatch`` unless the file's settings include ``settings`` (what a caller knows for sure)."""
        _check(self.path, {key: self.settings.get(key) for key in settings}, _as_json(settings))

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one chain's record and put it on disk before returning."""
        if not isinstance(record.get('index'), int):
            raise ValueError(f'a chain record needs an integer index, got {record.get("index")!r}')
        with self.path.open('a') as stream:
            _write_line(stream, record)
        self.records[record['index']] = dict(record)


def recorded(path: Path | str) -> dict[int, dict[str, Any]]:
    """The chain records ``path`` holds (the last one of each index), read without opening it for a run:
    what a stopped evaluation kept. A line cut short is left out."""
    return _read(Path(path))[1]


def _as_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """As the file will hold it (tuples become lists), so fresh settings compare equal to read ones."""
    return json.loads(json.dumps(dict(value)))


def _write_line(stream, value: Mapping[str, Any]) -> None:
    stream.write(json.dumps(value) + '\n')
    stream.flush()
    os.fsync(stream.fileno())


def _read(path: Path) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]], int]:
    """Header (None if not complete), the records by index, and the byte length of the complete lines."""
    data = path.read_bytes()
    end = data.rfind(b'\n') + 1  # an unterminated last line is a write the run did not finish
    lines = data[:end].splitlines()
    if not lines:
        return None, {}, 0
    values = []
    for number, line in enumerate(lines, 1):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f'{path}:{number} is not a JSON line ({error}): not a results file, or damaged') from None
    header, records = values[0], values[1:]
    if header.get('format') != FORMAT or header.get('version') != VERSION:
        raise ValueError(f'{path} is not a {FORMAT} version {VERSION} file (header: {lines[0][:200]!r})')
    return header, {record['index']: record for record in records}, end


def _check(path: Path, written: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    differences = [f'{key}={written.get(key)!r} there, {requested.get(key)!r} now'
                   for key in sorted(set(written) | set(requested)) if written.get(key) != requested.get(key)]
    if differences:
        raise SettingsMismatch(f'{path} was written with other settings ({"; ".join(differences)}): '
                               'resume with the settings it was started with, or write to another file')
