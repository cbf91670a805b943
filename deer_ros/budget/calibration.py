"""Consistency values collected on held-out demonstrations, and their file format.

The threshold solvers need, for many (window, timestep) samples, the
difference between each exit's pose action and the previous exit's. Upstream
DeeR cached these inside the checkpoint and re-saved it; here they live in a
separate ``.npz`` beside the weights, tied to them by a SHA-256, so the
checkpoint is never rewritten and a stale file is detected instead of used.

File layout (``numpy.savez``, no pickled objects): ``values`` float64
``(N, num_exits)`` and ``meta``, a JSON string with ``format_version``,
``metric``, ``exit_layers`` and free-form ``metadata`` (checkpoint hash,
window size, data split, ...).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deer_ros.budget.exit_criterion import check_metric, first_exit_decided

FORMAT_VERSION = 1
CALIBRATION_SUFFIX = '.calibration.npz'
CALIBRATION_FILE = 'calibration.npz'


class CalibrationFileError(ValueError):
    """A calibration file that cannot be read, is malformed, or belongs to another checkpoint."""


@dataclass
class CalibrationData:
    """Consistency matrix of one checkpoint.

    Attributes:
        values: ``(N, num_exits)``; column k >= 1 is the difference between
            exits k and k-1 (finite, >= 0 except for the cosine metric's
            rounding); column 0 is exit 0's difference from the reference of
            a model with ``first_exit_reference`` (:attr:`first_exit_checked`),
            else NaN (exit 0 is never decided).
        metric: the exit-rule metric the values were computed with.
        exit_layers: decoder layers run at each exit, to match a cost table.
        metadata: provenance, e.g. ``checkpoint_sha256``, ``window_size``.
    """

    values: np.ndarray
    metric: str
    exit_layers: tuple[int, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.exit_layers = tuple(int(layer) for layer in self.exit_layers)
        check_metric(self.metric)
        self.validate()

    @property
    def num_exits(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_samples(self) -> int:
        return int(self.values.shape[0])

    @property
    def first_exit_checked(self) -> bool:
        """Whether exit 0 is decided: the rule and the solvers then use column 0 too."""
        return first_exit_decided(self.values)

    def validate(self) -> None:
        """Raise ``ValueError`` describing the first inconsistency found."""
        values = self.values
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise ValueError(f'values must be a non-empty (N, num_exits) matrix, got shape {values.shape}')
        if len(self.exit_layers) != values.shape[1]:
            raise ValueError(f'{len(self.exit_layers)} exit_layers for {values.shape[1]} value columns')
        if list(self.exit_layers) != sorted(set(self.exit_layers)):
            raise ValueError(f'exit_layers must be strictly increasing, got {list(self.exit_layers)}')
        first = 0 if first_exit_decided(values) else 1
        if first and not np.all(np.isnan(values[:, 0])):
            raise ValueError('column 0 must be NaN, or finite everywhere (exit 0 against the first-exit reference)')
        decided = values[:, first:]
        if not np.all(np.isfinite(decided)):
            bad = np.argwhere(~np.isfinite(decided))[0]
            raise ValueError(f'non-finite consistency value at sample {bad[0]}, exit {bad[1] + first}')
        if np.any(decided < -1e-9):
            raise ValueError('consistency values must be >= 0')

    def matches(self, exit_layers: tuple[int, ...] | list[int]) -> bool:
        """True when the values were collected for the same exits."""
        return tuple(int(layer) for layer in exit_layers) == self.exit_layers

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` file (atomically: a crash never leaves half a file)."""
        path = Path(path)
        meta = json.dumps({'format_version': FORMAT_VERSION, 'metric': self.metric,
                           'exit_layers': list(self.exit_layers), 'metadata': self.metadata})
        tmp = path.with_name(path.name + '.tmp')
        with open(tmp, 'wb') as handle:
            np.savez(handle, values=self.values, meta=np.array(meta))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, checkpoint_sha256: str | None = None,
             exit_layers: tuple[int, ...] | None = None) -> 'CalibrationData':
        """Read a calibration file, optionally checking it belongs to a checkpoint / exit layout.

        Raises:
            CalibrationFileError: missing, unreadable, malformed or mismatched file.
        """
        path = Path(path)
        if not path.is_file():
            raise CalibrationFileError(f'calibration file {path} does not exist; run `deer-ros calibrate`')
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = {'values', 'meta'} - set(archive.files)
                if missing:
                    raise CalibrationFileError(f'{path}: missing arrays {sorted(missing)}')
                values = archive['values']
                meta = json.loads(str(archive['meta']))
        except CalibrationFileError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as error:
            raise CalibrationFileError(f'{path}: not a readable calibration file ({error})') from error
        if not isinstance(meta, dict) or meta.get('format_version') != FORMAT_VERSION:
            raise CalibrationFileError(f'{path}: unsupported calibration format {meta!r:.80}; '
                                       f'expected format_version {FORMAT_VERSION}')
        try:
            data = cls(values, meta['metric'], tuple(meta['exit_layers']), dict(meta.get('metadata', {})))
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationFileError(f'{path}: malformed calibration data ({error})') from error
        if checkpoint_sha256 is not None and data.metadata.get('checkpoint_sha256') != checkpoint_sha256:
            raise CalibrationFileError(
                f'{path} was collected for checkpoint {data.metadata.get("checkpoint_sha256")!r}, '
                f'not {checkpoint_sha256!r}; re-run calibration for this checkpoint')
        if exit_layers is not None and not data.matches(exit_layers):
            raise CalibrationFileError(f'{path} has exits at layers {list(data.exit_layers)}, '
                                       f'the model has {list(exit_layers)}')
        return data


def calibration_path(checkpoint: str | Path) -> Path:
    """Where the calibration of ``checkpoint`` lives.

    A checkpoint directory (``config.json`` + ``model.safetensors``) gets
    ``<dir>/calibration.npz``; a single checkpoint file gets
    ``<dir>/<stem>.calibration.npz``. Either way the weights are not touched.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return checkpoint / CALIBRATION_FILE
    return checkpoint.with_name(checkpoint.stem + CALIBRATION_SUFFIX)


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks so multi-GB checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b''):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_sha256(checkpoint: str | Path) -> str:
    """Identity of a checkpoint: its file's hash, or for a directory the hash of its config and weights."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return file_sha256(checkpoint)
    from deer_ros.model.modeling_deer import CONFIG_NAME, WEIGHTS_NAME  # torch only when a model is involved
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        digest.update(f'{name}:{file_sha256(checkpoint / name)};'.encode())
    return digest.hexdigest()
