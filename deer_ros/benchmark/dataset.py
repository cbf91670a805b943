"""CALVIN-format dataset: a writer for our recorded demos and a reader for ours and real CALVIN alike.

Layout per split folder (``training/``, ``validation/``): one
``episode_XXXXXXX.npz`` per frame (7-digit frame index, unique across both
splits), ``ep_start_end_ids.npy`` (inclusive frame ranges of contiguous
recordings), ``ep_lens.npy`` and ``lang_annotations/auto_lang_ann.npy`` (a
pickled dict: ``language.ann``, ``language.task``, ``language.emb``,
``info.indx``, ``info.episodes``). Using CALVIN's own format means the same
training code runs on our simulator's demos and on the real CALVIN splits.
A parallel collection writes one such root per worker (``shard_XX/``) instead of
merging index files; :func:`dataset_roots` lists a collection's roots.

``language.emb``: real CALVIN stores MiniLM sentence embeddings. We do not
compute embeddings, so the writer stores zeros of shape ``(n, 1, 384)``
(``LANG_EMB_DIM``, MiniLM's width) to keep the key's shape; the reader accepts
the key missing, zero or real. ``info.episodes`` is written empty.

The reader (``LanguageWindows``) is plain numpy; ``TorchLanguageWindows`` wraps
it as a ``torch.utils.data.Dataset`` and is built on first access so importing
this module never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deer_ros.calvin_layout import (
    ACTION_DIM,
    GRIPPER_CAMERA_SHAPE,
    GRIPPER_CAMERA_SIZE,
    ROBOT_OBS_DIM,
    SCENE_OBS_DIM,
    STATIC_CAMERA_SHAPE,
    STATIC_CAMERA_SIZE,
)

SPLITS = ('training', 'validation')
FRAME_SHAPES: dict[str, tuple[int, ...]] = {
    'actions': (ACTION_DIM,),
    'rel_actions': (ACTION_DIM,),
    'robot_obs': (ROBOT_OBS_DIM,),
    'scene_obs': (SCENE_OBS_DIM,),
    'rgb_static': STATIC_CAMERA_SHAPE,
    'rgb_gripper': GRIPPER_CAMERA_SHAPE,
}
OPTIONAL_FRAME_SHAPES: dict[str, tuple[int, ...]] = {'depth_static': (STATIC_CAMERA_SIZE, STATIC_CAMERA_SIZE),
                                                     'depth_gripper': (GRIPPER_CAMERA_SIZE, GRIPPER_CAMERA_SIZE)}
LANG_EMB_DIM = 384
DEFAULT_WINDOW = 12
_ANNOTATION_FILE = Path('lang_annotations') / 'auto_lang_ann.npy'
_SHARD_PREFIX = 'shard_'


def frame_path(split_dir: Path, index: int) -> Path:
    return Path(split_dir) / f'episode_{index:07d}.npz'


def shard_dir(root: Path | str, index: int) -> Path:
    """Where worker ``index`` of a parallel collection writes its own complete dataset root."""
    return Path(root) / f'{_SHARD_PREFIX}{index:02d}'


def dataset_roots(output: Path | str) -> list[Path]:
    """The dataset roots of a collection, to train on together: ``output`` itself when it holds ``training/`` (one
    process), else its ``shard_*`` roots in worker order (``deer-ros collect --workers N``).

    A shard without its index files (its worker was killed before closing it) is an error naming it, not a
    silently smaller dataset: delete it to use the others.
    """
    output = Path(output)
    if (output / 'training').is_dir():
        return [output]
    shards = sorted((path for path in output.glob(f'{_SHARD_PREFIX}*')
                     if path.is_dir() and path.name[len(_SHARD_PREFIX):].isdigit()),
                    key=lambda path: int(path.name[len(_SHARD_PREFIX):]))
    if not shards:
        raise FileNotFoundError(f'{output} holds neither training/ nor shard_*/ dataset roots')
    unfinished = [str(shard) for shard in shards
                  if not all((shard / split / 'ep_start_end_ids.npy').is_file() for split in SPLITS)]
    if unfinished:
        raise FileNotFoundError(f'{", ".join(unfinished)}: no index files (the worker did not finish); '
                                f'delete to use the other shards')
    return shards


@dataclass(frozen=True)
class Annotation:
    """A language label on the inclusive frame range ``[start, end]`` (episode-relative when writing)."""

    start: int
    end: int
    instruction: str
    task: str


class CalvinDatasetWriter:
    """Writes recordings into ``root/{training,validation}`` with one frame counter shared by both splits.

    Index files are written by ``close()`` (or leaving the ``with`` block), so a
    crashed collection leaves frames but no index, never a half-valid index.
    Refuses a split that already holds episodes: appending would need merging
    index files, and silently mixing two collections is worse than an error.
    """

    def __init__(self, root: Path | str, compress: bool = True) -> None:
        self.root = Path(root)
        self._save = np.savez_compressed if compress else np.savez
        self._next_frame = 0
        self._episodes: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
        self._annotations: dict[str, list[Annotation]] = {split: [] for split in SPLITS}
        for split in SPLITS:
            split_dir = self.root / split
            if split_dir.is_dir() and any(split_dir.glob('episode_*.npz')):
                raise FileExistsError(f'{split_dir} already holds episodes; write to an empty directory')
            split_dir.mkdir(parents=True, exist_ok=True)

    def add_episode(self, split: str, frames: Mapping[str, np.ndarray], annotations: Sequence[Annotation]) -> int:
        """Write a contiguous recording (``frames[key]`` has shape ``(T, ...)``); returns its first frame index.

        ``annotations`` use frame offsets within this recording.
        """
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        length = _check_frames(frames)
        for annotation in annotations:
            if not 0 <= annotation.start <= annotation.end < length:
                raise ValueError(f'annotation {annotation} lies outside the {length}-frame recording')
        first = self._next_frame
        split_dir = self.root / split
        for offset in range(length):
            self._save(frame_path(split_dir, first + offset), **{key: value[offset] for key, value in frames.items()})
        self._next_frame += length
        self._episodes[split].append((first, first + length - 1))
        self._annotations[split].extend(
            Annotation(first + a.start, first + a.end, a.instruction, a.task) for a in annotations)
        return first

    def close(self) -> None:
        for split in SPLITS:
            split_dir = self.root / split
            episodes = np.asarray(self._episodes[split], dtype=np.int64).reshape(-1, 2)
            np.save(split_dir / 'ep_start_end_ids.npy', episodes)
            np.save(split_dir / 'ep_lens.npy', episodes[:, 1] - episodes[:, 0] + 1)
            annotations = self._annotations[split]
            (split_dir / _ANNOTATION_FILE).parent.mkdir(exist_ok=True)
            np.save(split_dir / _ANNOTATION_FILE, {
                'language': {
                    'ann': [a.instruction for a in annotations],
                    'task': [a.task for a in annotations],
                    'emb': np.zeros((len(annotations), 1, LANG_EMB_DIM), dtype=np.float32),
                },
                'info': {'indx': [(a.start, a.end) for a in annotations], 'episodes': []},
            }, allow_pickle=True)

    def __enter__(self) -> 'CalvinDatasetWriter':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_frames(frames: Mapping[str, np.ndarray]) -> int:
    missing = sorted(set(FRAME_SHAPES) - set(frames))
    if missing:
        raise ValueError(f'frames lack keys {missing}')
    shapes = {**FRAME_SHAPES, **OPTIONAL_FRAME_SHAPES}
    unknown = sorted(set(frames) - set(shapes))
    if unknown:
        raise ValueError(f'unknown frame keys {unknown}; known: {sorted(shapes)}')
    lengths = {len(value) for value in frames.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f'all frame arrays need the same non-zero length, got {sorted(lengths)}')
    for key, value in frames.items():
        if value.shape[1:] != shapes[key]:
            raise ValueError(f'{key} frames must have shape (T, *{shapes[key]}), got {value.shape}')
        if key.startswith('rgb_') and value.dtype != np.uint8:
            raise ValueError(f'{key} must be uint8, got {value.dtype}')
    return lengths.pop()


def read_annotations(split_dir: Path | str) -> list[tuple[Annotation, np.ndarray | None]]:
    """Every language annotation of a split with its embedding (``None`` when absent or all zero)."""
    data = np.load(Path(split_dir) / _ANNOTATION_FILE, allow_pickle=True).item()
    language, ranges = data['language'], data['info']['indx']
    embeddings = language.get('emb')
    result = []
    for i, ((start, end), text, task) in enumerate(zip(ranges, language['ann'], language['task'])):
        embedding = None if embeddings is None else np.asarray(embeddings[i])
        if embedding is not None and not embedding.any():
            embedding = None
        result.append((Annotation(int(start), int(end), str(text), str(task)), embedding))
    return result


@dataclass
class Window:
    """``W`` consecutive frames (``frames[key]`` shape ``(W, ...)``) under one instruction."""

    frames: dict[str, np.ndarray]
    instruction: str
    task: str
    start: int
    embedding: np.ndarray | None


class LanguageWindows:
    """All ``window``-frame stretches inside language-annotated ranges of one split, as an indexable sequence.

    Loads only ``keys`` from each npz, so real CALVIN frames with depth and
    tactile images cost no extra decoding; states keep their stored dtype
    (float64 in both CALVIN and our data). Annotations shorter than
    ``window`` contribute nothing.
    """

    def __init__(self, split_dir: Path | str, window: int = DEFAULT_WINDOW, stride: int = 1,
                 keys: Sequence[str] = tuple(FRAME_SHAPES)) -> None:
        if window < 1 or stride < 1:
            raise ValueError(f'window and stride must be >= 1, got {window}, {stride}')
        self.split_dir = Path(split_dir)
        self.split_dirs = [self.split_dir]
        self.window = window
        self.keys = tuple(keys)
        self.annotations = read_annotations(self.split_dir)
        self._index = [(i, start)
                       for i, (annotation, _) in enumerate(self.annotations)
                       for start in range(annotation.start, annotation.end - window + 2, stride)]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: int) -> Window:
        annotation_index, start = self._index[item]
        annotation, embedding = self.annotations[annotation_index]
        per_frame = [self.load_frame(start + offset) for offset in range(self.window)]
        frames = {key: np.stack([frame[key] for frame in per_frame]) for key in self.keys}
        return Window(frames, annotation.instruction, annotation.task, start, embedding)

    def load_frame(self, index: int) -> dict[str, np.ndarray]:
        with np.load(frame_path(self.split_dir, index)) as npz:
            return {key: npz[key] for key in self.keys}


class ConcatenatedWindows:
    """Windows of several splits read as one sequence, e.g. fresh-start demos plus chained demos.

    Each split keeps its own frame numbering, so datasets recorded separately
    are combined without rewriting files; windows never span two splits.
    """

    def __init__(self, parts: Sequence[LanguageWindows]) -> None:
        if not parts:
            raise ValueError('no splits to concatenate')
        if len({(part.window, part.keys) for part in parts}) != 1:
            raise ValueError('concatenated splits must share window length and keys')
        self.parts = list(parts)
        self.window, self.keys = parts[0].window, parts[0].keys
        self.split_dirs = [part.split_dir for part in parts]
        self._ends = np.cumsum([len(part) for part in parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, item: int) -> Window:
        if not 0 <= item < len(self):
            raise IndexError(f'window {item} out of range for {len(self)} windows')
        part = int(np.searchsorted(self._ends, item, side='right'))
        return self.parts[part][item - (int(self._ends[part - 1]) if part else 0)]


def _build_torch_adapter() -> type:
    from torch import from_numpy
    from torch.utils.data import Dataset

    class TorchLanguageWindows(Dataset):
        """``LanguageWindows`` as a torch Dataset: items are dicts of tensors plus ``instruction``/``task`` strings.

        Images stay uint8 HWC; normalisation belongs to the model's preprocessing.
        """

        def __init__(self, windows: LanguageWindows) -> None:
            self.windows = windows

        def __len__(self) -> int:
            return len(self.windows)

        def __getitem__(self, item: int) -> dict[str, Any]:
            window = self.windows[item]
            return {**{key: from_numpy(value) for key, value in window.frames.items()},
                    'instruction': window.instruction, 'task': window.task}

    TorchLanguageWindows.__module__, TorchLanguageWindows.__qualname__ = __name__, TorchLanguageWindows.__name__
    return TorchLanguageWindows


def __getattr__(name: str) -> Any:
    """Build ``TorchLanguageWindows`` on first use (keeps torch an optional, lazy import; stays picklable)."""
    if name == 'TorchLanguageWindows':
        cls = _build_torch_adapter()
        globals()[name] = cls
        return cls
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
