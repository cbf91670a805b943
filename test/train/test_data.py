"""Training windows from our writer's demos and from files shaped like real CALVIN; sampling and augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from train_fixtures import INSTRUCTIONS, write_calvin_like_split

from deer_ros.benchmark.dataset import LanguageWindows
from deer_ros.model import load_config
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.train.augment import random_shift
from deer_ros.train.data import EpochBatchSampler, WindowCollator, open_split, state_statistics


def test_embedded_demos_become_batches(demo_data):
    dataset = open_split([demo_data], 'training', window=4, stride=2, robot_obs=False)
    raw = LanguageWindows(demo_data / 'training', window=4, stride=2)
    assert len(dataset) == len(raw) == 4 * 4  # 10-frame episodes, starts 0, 2, 4, 6
    sample = dataset[5]
    np.testing.assert_array_equal(sample['rgb_static'], raw[5].frames['rgb_static'])
    np.testing.assert_allclose(sample['pose'], raw[5].frames['rel_actions'][:, :6])
    np.testing.assert_array_equal(sample['gripper'], (raw[5].frames['rel_actions'][:, 6] + 1) / 2)
    assert sample['pose'].dtype == sample['gripper'].dtype == np.float32 and 'robot_obs' not in sample
    instruction_encoder = InstructionEncoder(load_config('tiny').decoder)
    batch = WindowCollator(instruction_encoder)([dataset[0], dataset[4], dataset[5]])
    assert batch['rgb_static'].shape == (3, 4, 200, 200, 3) and batch['rgb_static'].dtype == torch.uint8
    assert batch['rgb_gripper'].shape == (3, 4, 84, 84, 3) and batch['pose'].shape == (3, 4, 6)
    expected_ids, _ = instruction_encoder([INSTRUCTIONS[0][0], INSTRUCTIONS[1][0], INSTRUCTIONS[1][0]])
    torch.testing.assert_close(batch['text_input'], expected_ids)
    assert batch['text_mask'].shape == batch['text_input'].shape


def test_real_calvin_shaped_split_loads_with_robot_state(tmp_path):
    rel_actions = write_calvin_like_split(tmp_path / 'training', first=100, length=8, rng=np.random.default_rng(0))
    dataset = open_split([tmp_path], 'training', window=6, stride=1, robot_obs=True)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample['robot_obs'].shape == (6, 15) and sample['robot_obs'].dtype == np.float32
    np.testing.assert_allclose(sample['pose'], np.clip(rel_actions[1:7, :6], -1, 1), rtol=1e-6)
    assert sample['pose'].min() >= -1 and sample['pose'].max() <= 1
    np.testing.assert_array_equal(sample['gripper'], rel_actions[1:7, 6] > 0)
    assert set(dataset.windows.keys) == {'rgb_static', 'rgb_gripper', 'rel_actions', 'robot_obs'}
    mean, std = state_statistics(dataset)
    states = np.concatenate([dataset[i]['robot_obs'] for i in range(3)])
    np.testing.assert_allclose(mean, states.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, states.std(axis=0), rtol=1e-5)
    assert open_split([tmp_path], 'validation', window=6, stride=1, robot_obs=False) is None  # no such split
    (tmp_path / 'validation').mkdir()
    with pytest.raises(FileNotFoundError, match='CALVIN-format'):
        open_split([tmp_path], 'validation', window=6, stride=1, robot_obs=False)


def test_several_roots_concatenate_without_windows_across_them(demo_data, tmp_path):
    write_calvin_like_split(tmp_path / 'training', first=100, length=8, rng=np.random.default_rng(0))
    embedded = LanguageWindows(demo_data / 'training', window=4, stride=2)
    calvin_like = LanguageWindows(tmp_path / 'training', window=4, stride=2)
    dataset = open_split([demo_data, tmp_path], 'training', window=4, stride=2, robot_obs=False)
    assert len(dataset) == len(embedded) + len(calvin_like) == 16 + 3
    np.testing.assert_array_equal(dataset[15]['rgb_static'], embedded[15].frames['rgb_static'])
    np.testing.assert_array_equal(dataset[16]['rgb_static'], calvin_like[0].frames['rgb_static'])
    np.testing.assert_array_equal(dataset[18]['rgb_gripper'], calvin_like[2].frames['rgb_gripper'])
    with pytest.raises(IndexError):
        dataset.windows[19]
    validation = open_split([demo_data, tmp_path], 'validation', window=4, stride=4, robot_obs=False)
    assert len(validation) == len(LanguageWindows(demo_data / 'validation', window=4, stride=4))  # one root has it


@pytest.mark.parametrize('world', [1, 2])
def test_sampler_epochs_are_disjoint_shards_and_resume_exactly(world):
    size, batch = 23, 3
    samplers = [EpochBatchSampler(size, batch, seed=7, rank=rank, world=world) for rank in range(world)]
    per_epoch = samplers[0].batches_per_epoch
    assert per_epoch == size // (batch * world)
    streams = [iter(sampler) for sampler in samplers]
    for _ in range(2):  # two epochs
        epoch = [[next(stream) for _ in range(per_epoch)] for stream in streams]
        seen = [i for rank in epoch for b in rank for i in b]
        assert all(len(b) == batch for rank in epoch for b in rank)
        assert len(seen) == len(set(seen)) == per_epoch * batch * world  # no window twice within an epoch
    reference = iter(EpochBatchSampler(size, batch, seed=7, rank=0, world=world))
    expected = [next(reference) for _ in range(3 * per_epoch)]
    resumed = iter(EpochBatchSampler(size, batch, seed=7, rank=0, world=world, start_batch=per_epoch + 1))
    assert [next(resumed) for _ in range(2 * per_epoch - 1)] == expected[per_epoch + 1:]
    with pytest.raises(ValueError, match='batch'):
        EpochBatchSampler(5, 3, seed=0, world=2)


def _edge_shift(image: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
    return padded[pad + dy:pad + dy + image.shape[0], pad + dx:pad + dx + image.shape[1]]


def test_random_shift_is_an_edge_padded_crop_per_image():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (24, 20, 16, 3), dtype=np.uint8))
    pad = 4
    shifted = random_shift(images, pad, torch.Generator().manual_seed(0)).numpy()
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    offsets = set()
    for image, out in zip(images.numpy(), shifted):
        matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if np.array_equal(out, _edge_shift(image, dy, dx, pad))]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 12  # each image draws its own shift
    assert random_shift(images, 0) is images
