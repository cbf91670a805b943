"""Frozen-trunk features computed once per frame and kept on disk, so training steps skip the vision trunk.

Upstream DeeR freezes its vision encoder; a frozen encoder gives the same features for a frame at every
epoch, so computing them once turns the most expensive part of a CPU training step into a memory read
(``benchmarks/train_speed.py``: docs/training.md, section 6).

Layout, one cache per dataset split and trunk setting::

    SPLIT/feature_cache/efficientnet_lite0-b11-s112-g84-<weights sha256[:12]>/
        frame_ids.npy      (N,) int64, sorted: the split's language-annotated frames (what training windows read)
        static.npy         (N, C, g, g) float16: the static camera's trunk features
        gripper.npy        (N, C, g', g') float16
        rel_actions.npy    (N, 7) float32     robot_obs.npy (N, 15) float32: the frame's targets and state
        meta.json          written last: a cache without it is incomplete and is rebuilt

Features are fp16: exactly what :func:`deer_ros.model.modeling_deer.trunk_features` returns at run time, so a
cached frame and a live one go through the same numbers. The key holds everything that changes the features (encoder, depth,
input sizes, the weights' digest); a second build with the same key only checks ``meta.json`` and reads.
At 112 px static / 84 px gripper and 11 blocks a frame costs (49 + 25) x 112 x 2 bytes = 16.6 KB,
about 1 GB per 60,000 frames (1,000 demonstrations).

Random-shift augmentation on cached features is a shift of the feature grid (``feature_shift`` cells,
edge cells repeated, :func:`deer_ros.train.augment.augment_batch`): one cell is 16 input pixels.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from deer_ros.benchmark.dataset import frame_path, read_annotations
from deer_ros.calvin_layout import ACTION_DIM, ROBOT_OBS_DIM
from deer_ros.model.configuration_deer import FROZEN_VISION_ENCODERS, VisionConfig
from deer_ros.model.efficientnet_lite import weights_digest
from deer_ros.model.modeling_deer import camera_image_size, trunk_features

from .data import action_targets, task_id

CACHE_ROOT = 'feature_cache'
META_FILE = 'meta.json'
CAMERAS = ('static', 'gripper')


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes a frame's cached features."""

    encoder: str
    feature_blocks: int
    static_size: int
    gripper_size: int
    weights_sha256: str

    @classmethod
    def of(cls, vision: VisionConfig) -> 'CacheKey':
        if vision.encoder not in FROZEN_VISION_ENCODERS:
            raise ValueError(f'vision.encoder {vision.encoder!r} is trained, not frozen: '
                             'its features change every step and cannot be cached')
        return cls(vision.encoder, vision.feature_blocks, camera_image_size(vision, 'static'),
                   camera_image_size(vision, 'gripper'), weights_digest())

    @property
    def name(self) -> str:
        return (f'{self.encoder}-b{self.feature_blocks}-s{self.static_size}-g{self.gripper_size}-'
                f'{self.weights_sha256[:12]}')


def cache_dir(split_dir: Path | str, key: CacheKey) -> Path:
    return Path(split_dir) / CACHE_ROOT / key.name


def annotated_frames(split_dir: Path | str) -> np.ndarray:
    """Sorted frame indices inside any language annotation of the split: the only frames training reads."""
    ranges = [np.arange(annotation.start, annotation.end + 1) for annotation, _ in read_annotations(split_dir)]
    return np.unique(np.concatenate(ranges)) if ranges else np.zeros(0, dtype=np.int64)


def is_complete(directory: Path, key: CacheKey) -> bool:
    meta = directory / META_FILE
    return meta.is_file() and json.loads(meta.read_text()).get('key') == asdict(key)


@torch.no_grad()
def build_split_cache(split_dir: Path | str, vision: VisionConfig, batch_size: int = 64, progress: bool = True,
                      device: str = 'cpu') -> Path:
    """The cache of ``split_dir`` for the frozen trunk of ``vision``: built once, found and reused afterwards.

    Writes into ``<name>.partial`` and renames it when complete, so an interrupted build leaves no cache
    that looks valid; the next call starts that split over.
    """
    key = CacheKey.of(vision)
    final = cache_dir(split_dir, key)
    if is_complete(final, key):
        return final
    frames = annotated_frames(split_dir)
    partial = final.with_name(final.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / 'frame_ids.npy', frames.astype(np.int64))
    outputs: dict[str, np.memmap] = {}
    try:
        for start in tqdm(range(0, len(frames), batch_size), desc=f'features {Path(split_dir).name}', unit='batch',
                          disable=not progress):
            loaded = [_load_frame(split_dir, int(index)) for index in frames[start:start + batch_size]]
            arrays = {name: np.stack([frame[name] for frame in loaded]) for name in loaded[0]}
            rows = {'rel_actions': arrays['rel_actions'].astype(np.float32),
                    'robot_obs': arrays['robot_obs'].astype(np.float32)}
            for camera in CAMERAS:
                images = torch.from_numpy(arrays[f'rgb_{camera}']).to(device)
                rows[camera] = trunk_features(vision, images, camera).cpu().numpy()
            for name, values in rows.items():
                if name not in outputs:
                    outputs[name] = np.lib.format.open_memmap(partial / f'{name}.npy', mode='w+', dtype=values.dtype,
                                                              shape=(len(frames), *values.shape[1:]))
                outputs[name][start:start + len(values)] = values
        for array in outputs.values():
            array.flush()
        (partial / META_FILE).write_text(json.dumps({'key': asdict(key), 'frames': int(len(frames))}, indent=1))
    finally:
        outputs.clear()
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def build_caches(split_dirs: Sequence[Path | str], vision: VisionConfig, workers: int = 1,
                 progress: bool = True) -> list[Path]:
    """Caches of every split, ``workers`` splits at a time in spawned processes (one torch thread each).

    Splits are independent files, so parallel builds need no coordination; the largest go first so the pool
    finishes together. A split already cached costs one ``meta.json`` read.
    """
    order = sorted(split_dirs, key=lambda split: -len(annotated_frames(split)))
    if workers <= 1 or len(order) <= 1:
        built = {str(split): build_split_cache(split, vision, progress=progress) for split in order}
    else:
        context = multiprocessing.get_context('spawn')
        with context.Pool(min(workers, len(order)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            paths = pool.starmap(build_split_cache, [(split, vision, 64, False) for split in order])
        built = {str(split): path for split, path in zip(order, paths)}
    return [built[str(split)] for split in split_dirs]


def _load_frame(split_dir: Path | str, index: int) -> dict[str, np.ndarray]:
    with np.load(frame_path(Path(split_dir), index)) as npz:
        return {name: npz[name] for name in ('rgb_static', 'rgb_gripper', 'rel_actions', 'robot_obs')}


class CachedSplit:
    """A complete cache opened read-only (memory-mapped: many epochs, one copy in the page cache)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.frame_ids = np.load(directory / 'frame_ids.npy')
        self.arrays = {name: np.load(directory / f'{name}.npy', mmap_mode='r')
                       for name in (*CAMERAS, 'rel_actions', 'robot_obs')}
        if self.arrays['rel_actions'].shape[1:] != (ACTION_DIM,) or \
                self.arrays['robot_obs'].shape[1:] != (ROBOT_OBS_DIM,):
            raise ValueError(f'{directory} holds arrays of unexpected shapes; delete it to rebuild')

    def rows(self, first_frame: int, count: int) -> slice:
        """Rows of ``count`` consecutive frames from ``first_frame`` (they lie inside one annotation)."""
        row = int(np.searchsorted(self.frame_ids, first_frame))
        if row + count > len(self.frame_ids) or self.frame_ids[row + count - 1] != first_frame + count - 1:
            raise KeyError(f'frames {first_frame}..{first_frame + count - 1} are not in {self.directory}')
        return slice(row, row + count)


class CachedWindows(torch.utils.data.Dataset):
    """Training samples like :class:`deer_ros.train.data.ActionWindows`, with trunk features instead of images.

    Same windows (every ``stride``-th start inside each annotation of each split, splits concatenated in order),
    same targets; ``features_static`` / ``features_gripper`` replace ``rgb_static`` / ``rgb_gripper``.
    """

    def __init__(self, split_dirs: Sequence[Path | str], vision: VisionConfig, window: int, stride: int) -> None:
        key = CacheKey.of(vision)
        self.window = window
        self.splits: list[CachedSplit] = []
        self.items: list[tuple[int, int, str, int]] = []  # (split, first frame, instruction, task id)
        for split_dir in split_dirs:
            directory = cache_dir(split_dir, key)
            if not is_complete(directory, key):
                raise FileNotFoundError(f'no complete feature cache in {directory}: build it first '
                                        '(deer_ros.train.feature_cache.build_split_cache)')
            annotations = read_annotations(split_dir)
            if not annotations:  # an empty split (a collection without validation episodes) caches no arrays
                continue
            self.splits.append(CachedSplit(directory))
            for annotation, _ in annotations:
                self.items += [(len(self.splits) - 1, start, annotation.instruction, task_id(annotation.task))
                               for start in range(annotation.start, annotation.end - window + 2, stride)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, Any]:
        split_index, first, instruction, task = self.items[item]
        split = self.splits[split_index]
        rows = split.rows(first, self.window)
        return {'features_static': np.asarray(split.arrays['static'][rows]),
                'features_gripper': np.asarray(split.arrays['gripper'][rows]),
                'robot_obs': np.asarray(split.arrays['robot_obs'][rows]),
                **action_targets(np.asarray(split.arrays['rel_actions'][rows])),
                'instruction': instruction, 'task': np.int64(task)}
