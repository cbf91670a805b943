"""Training batches from CALVIN-format splits: windows of consecutive frames under one instruction.

Reading goes through :class:`deer_ros.benchmark.dataset.LanguageWindows`, so real
CALVIN (extra depth/tactile keys, float64 states) and our simulator's demos
load the same way; only the keys the model needs are decoded. Targets follow
CALVIN's ``rel_actions``: 6 pose deltas in [-1, 1] and a gripper sign, turned
into a {0, 1} open-probability target for the BCE term.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from deer_ros.benchmark.dataset import ConcatenatedWindows, LanguageWindows
from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.model.modeling_deer_training import UNKNOWN_TASK, Batch
from deer_ros.model.tokenization import InstructionEncoder

TASK_NAMES: tuple[str, ...] = tuple(TASK_LANGUAGE)  # CALVIN's 34 tasks: the task probe's classes


def window_keys(robot_obs: bool) -> tuple[str, ...]:
    """Frame keys read from disk; ``robot_obs`` only when the model or a training loss uses it."""
    return ('rgb_static', 'rgb_gripper', 'rel_actions') + (('robot_obs',) if robot_obs else ())


def task_id(task: str) -> int:
    """The task probe's class of a CALVIN task name (``UNKNOWN_TASK`` for any other)."""
    return TASK_NAMES.index(task) if task in TASK_NAMES else UNKNOWN_TASK


def action_targets(rel_actions: np.ndarray) -> dict[str, np.ndarray]:
    """CALVIN ``rel_actions`` (T, 7) -> ``pose`` clipped to [-1, 1] and a {0, 1} ``gripper`` open target."""
    actions = rel_actions.astype(np.float32)
    return {'pose': np.clip(actions[:, :6], -1.0, 1.0), 'gripper': (actions[:, 6] > 0).astype(np.float32)}


class ActionWindows(Dataset):
    """``LanguageWindows`` items as training arrays: images, optional robot state, pose and gripper targets."""

    def __init__(self, windows: LanguageWindows | ConcatenatedWindows) -> None:
        if 'rel_actions' not in windows.keys:
            raise ValueError('training windows must load rel_actions')
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, item: int) -> dict[str, Any]:
        window = self.windows[item]
        sample = {'rgb_static': window.frames['rgb_static'], 'rgb_gripper': window.frames['rgb_gripper'],
                  **action_targets(window.frames['rel_actions']),
                  'instruction': window.instruction, 'task': np.int64(task_id(window.task))}
        if 'robot_obs' in window.frames:
            sample['robot_obs'] = window.frames['robot_obs'].astype(np.float32)
        return sample


class WindowCollator:
    """Stacks samples and encodes their instructions (one text row per window, not per frame)."""

    def __init__(self, instruction_encoder: InstructionEncoder) -> None:
        self.instruction_encoder = instruction_encoder

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        batch = {key: torch.as_tensor(np.stack([s[key] for s in samples]))
                 for key in samples[0] if key != 'instruction'}
        batch['text_input'], batch['text_mask'] = self.instruction_encoder([s['instruction'] for s in samples])
        return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches of a seeded permutation per epoch, this process's share only.

    Each rank takes every ``world``-th index of the same permutation, and the
    incomplete last batch is dropped, so all ranks run the same number of
    steps. Starting at ``start_batch`` resumes the exact sequence: the order
    depends only on (seed, epoch), never on how many runs came before.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 start_batch: int = 0) -> None:
        self.batches_per_epoch = size // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(f'{size} training windows cannot fill one batch of {batch_size} windows '
                             f'on each of {world} processes; lower --batch-size or add data')
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.start_batch = rank, world, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            mine = order[self.rank::self.world].tolist()
            for batch in range(offset, self.batches_per_epoch):
                yield mine[batch * self.batch_size:(batch + 1) * self.batch_size]
            epoch, offset = epoch + 1, 0


def split_windows(roots: Sequence[Path | str], split: str, window: int, stride: int,
                  keys: Sequence[str]) -> LanguageWindows | ConcatenatedWindows | None:
    """``window``-frame windows of ``root/split`` over every root that has that split (None when none has it)."""
    parts = []
    for root in roots:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            continue
        if not (split_dir / 'lang_annotations').is_dir():
            raise FileNotFoundError(f'{split_dir} is not a CALVIN-format split (no lang_annotations/)')
        parts.append(LanguageWindows(split_dir, window=window, stride=stride, keys=keys))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ConcatenatedWindows(parts)


def open_split(roots: Sequence[Path | str], split: str, window: int, stride: int,
               robot_obs: bool) -> ActionWindows | None:
    """Training arrays of ``split`` (``training`` or ``validation``) over all dataset roots, reading only used keys."""
    windows = split_windows(roots, split, window, stride, window_keys(robot_obs))
    return None if windows is None else ActionWindows(windows)


def state_statistics(dataset: ActionWindows, windows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (floored at 1e-3) of ``robot_obs`` over evenly spaced windows, to standardise state targets."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(windows, len(dataset))).astype(int))
    states = np.concatenate([dataset[int(i)]['robot_obs'] for i in picks])
    return states.mean(axis=0), np.maximum(states.std(axis=0), 1e-3)
