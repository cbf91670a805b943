"""The frozen-trunk feature cache: built once and reused, equal to the image path, trainable, same runtime action."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import write_demo_dataset

from deer_ros import cli
from deer_ros.benchmark.dataset import frame_path
from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.model import DeerConfig, DeerVLA, load_config
from deer_ros.model.efficientnet_lite import frozen_trunk
from deer_ros.model.flops import count_cost_table
from deer_ros.model.modeling_deer import trunk_features
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.types import Observation
from deer_ros.train.augment import augment_batch
from deer_ros.train.data import open_split
from deer_ros.train.feature_cache import (
    CachedWindows,
    CacheKey,
    annotated_frames,
    build_caches,
    build_split_cache,
    cache_dir,
)
from deer_ros.train.metrics import read_metrics

VISION = load_config('tiny-efficientnet').vision
ARRAYS = ('frame_ids', 'static', 'gripper', 'rel_actions', 'robot_obs')


def small_efficientnet_config() -> DeerConfig:
    """``tiny-efficientnet``'s vision (frozen trunk, 112/84 px, 11 blocks) with a 3-layer decoder: fast steps."""
    data = load_config('tiny-efficientnet').to_dict()
    data['num_exits'] = 3
    data['decoder'].update(hidden_size=64, num_hidden_layers=3, intermediate_size=128, tokenizer='byte',
                           text_length=24)
    data['head'].update(lstm_hidden_size=64, mlp_hidden_sizes=[64])
    return DeerConfig.from_dict(data)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three training and one validation episode of 10 frames: 40 frames to cache."""
    return write_demo_dataset(tmp_path / 'demos', train_episodes=3, val_episodes=1, length=10)


@pytest.fixture
def trunk_calls() -> Iterator[list[int]]:
    """Batch sizes of every forward of the shared trunk (a hook on the real module, removed afterwards)."""
    calls: list[int] = []
    handle = frozen_trunk(VISION.feature_blocks, 'cpu').register_forward_hook(
        lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    yield calls
    handle.remove()


class Interrupted(Exception):
    """Stands for a build stopped half-way (Ctrl-C, a killed job)."""


def _stamps(directory: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in directory.iterdir()}


def _frame(split_dir: Path, index: int) -> dict[str, np.ndarray]:
    with np.load(frame_path(split_dir, index)) as npz:
        return {name: npz[name] for name in npz.files}


def test_cache_is_built_once_reused_redone_after_an_interruption_and_keyed(data, trunk_calls):
    split = data / 'training'
    directory = build_split_cache(split, VISION, progress=False)
    assert directory == cache_dir(split, CacheKey.of(VISION)) and sum(trunk_calls) == 2 * 30  # both cameras
    assert {path.name for path in directory.iterdir()} == {f'{name}.npy' for name in ARRAYS} | {'meta.json'}
    stamps = _stamps(directory)
    trunk_calls.clear()
    assert build_split_cache(split, VISION, progress=False) == directory
    assert build_caches([split], VISION, workers=1, progress=False) == [directory]
    assert trunk_calls == [] and _stamps(directory) == stamps  # found by its meta.json, nothing recomputed

    # Interrupted half-way (stopped in the third batch): no cache that looks valid is left behind.
    def interrupt(module, inputs):
        if len(trunk_calls) >= 4:
            raise Interrupted

    hook = frozen_trunk(VISION.feature_blocks, 'cpu').register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(Interrupted):
            build_split_cache(data / 'validation', VISION, batch_size=4, progress=False)
    finally:
        hook.remove()
    val_dir = cache_dir(data / 'validation', CacheKey.of(VISION))
    partial = val_dir.with_name(val_dir.name + '.partial')
    assert partial.is_dir() and not val_dir.exists()
    with pytest.raises(FileNotFoundError, match='no complete feature cache'):
        CachedWindows([data / 'validation'], VISION, window=4, stride=2)
    trunk_calls.clear()
    assert build_split_cache(data / 'validation', VISION, progress=False) == val_dir
    assert sum(trunk_calls) == 2 * 10 and not partial.exists()  # the whole split again, one batch per camera
    assert len(CachedWindows([data / 'validation'], VISION, window=4, stride=2)) == 4

    # Another depth or image size is another cache beside the first, which stays untouched.
    shallower = dataclasses.replace(VISION, feature_blocks=8)
    smaller = dataclasses.replace(VISION, image_size=96)
    for vision in (shallower, smaller):
        other = build_split_cache(split, vision, progress=False)
        assert other.parent == directory.parent and other != directory
    assert len(list(directory.parent.iterdir())) == 3 and _stamps(directory) == stamps
    assert np.load(cache_dir(split, CacheKey.of(shallower)) / 'static.npy').shape == (30, 80, 7, 7)
    assert np.load(cache_dir(split, CacheKey.of(smaller)) / 'static.npy').shape == (30, 112, 6, 6)


def test_cached_windows_equal_the_image_windows_and_the_trunk_on_the_same_batches(tmp_path):
    roots = [write_demo_dataset(tmp_path / 'a', train_episodes=2, val_episodes=0, length=10),
             write_demo_dataset(tmp_path / 'b', train_episodes=1, val_episodes=0, length=12, seed=1)]
    splits = [root / 'training' for root in roots]
    for split in splits:
        build_split_cache(split, VISION, batch_size=8, progress=False)
    cached = CachedWindows(splits, VISION, window=4, stride=2)
    images = open_split(roots, 'training', window=4, stride=2, robot_obs=True)
    assert len(cached) == len(images) == 2 * 4 + 5  # starts 0, 2, 4, 6 (and 8 in the 12-frame episode)
    for item in range(len(images)):
        mine, reference = cached[item], images[item]
        assert mine.keys() - {'features_static', 'features_gripper'} == \
            reference.keys() - {'rgb_static', 'rgb_gripper'}
        assert mine['instruction'] == reference['instruction'] and mine['task'] == reference['task']
        for name in ('pose', 'gripper', 'robot_obs'):
            assert mine[name].dtype == reference[name].dtype == np.float32
            np.testing.assert_array_equal(mine[name], reference[name], err_msg=name)
        assert mine['features_static'].shape == (4, 112, 7, 7) and mine['features_gripper'].shape == (4, 112, 5, 5)

    # The cache holds trunk_features of its build batches exactly (same batch, same kernels) ...
    split, directory = splits[1], cache_dir(splits[1], CacheKey.of(VISION))
    frames = annotated_frames(split)
    assert np.array_equal(np.load(directory / 'frame_ids.npy'), frames)
    for camera in ('static', 'gripper'):
        stored = np.load(directory / f'{camera}.npy')
        assert stored.dtype == np.float16
        for start in range(0, len(frames), 8):  # batches of 8 and 4 frames
            batch = torch.from_numpy(np.stack([_frame(split, int(i))[f'rgb_{camera}']
                                               for i in frames[start:start + 8]]))
            np.testing.assert_array_equal(trunk_features(VISION, batch, camera).numpy(), stored[start:start + 8])
        # ... and frame by frame within one fp16 step: fp32 kernels round differently for another batch size.
        single = np.concatenate([trunk_features(VISION, torch.from_numpy(_frame(split, int(i))[f'rgb_{camera}'])[None],
                                                camera).numpy() for i in frames])
        ulp = np.spacing(np.maximum(np.abs(single), np.abs(stored)))
        assert np.all(np.abs(single.astype(np.float32) - stored.astype(np.float32)) <= ulp)


def test_training_on_cached_features_lowers_the_loss_and_a_second_start_reuses_the_cache(tmp_path, trunk_calls):
    data = write_demo_dataset(tmp_path / 'demos', train_episodes=4, val_episodes=2, length=10)
    config_file = tmp_path / 'small-efficientnet.json'
    small_efficientnet_config().save(config_file)
    common = ['--data', str(data), '--model', str(config_file), '--window', '4', '--stride', '2',
              '--batch-size', '4', '--head-steps', '0', '--lr', '1e-3', '--head-lr-scale', '1', '--warmup-steps', '2',
              '--num-workers', '0', '--val-windows', '4', '--no-progress']
    # Two splits built by two spawned processes; a one-cell grid shift as augmentation.
    assert cli.main(['train', *common, '--output', str(tmp_path / 'first'), '--joint-steps', '30', '--log-every', '5',
                     '--eval-every', '15', '--save-every', '30', '--calibration-windows', '4', '--feature-shift', '1',
                     '--cache-workers', '2']) == 0
    loss = {row['step']: row['value'] for row in read_metrics(tmp_path / 'first' / 'metrics.csv')
            if row['name'] == 'train/loss'}
    assert sorted(loss) == list(range(5, 31, 5))
    assert loss[30] < 0.5 * loss[5]  # measured 0.87 -> 0.19
    caches = [cache_dir(data / split, CacheKey.of(VISION)) for split in ('training', 'validation')]
    stamps = [_stamps(directory) for directory in caches]

    trunk_calls.clear()  # the calibration above ran the trunk on images; a start without calibration never does
    assert cli.main(['train', *common, '--output', str(tmp_path / 'second'), '--joint-steps', '2', '--log-every', '1',
                     '--eval-every', '2', '--save-every', '2', '--calibration-windows', '0']) == 0
    assert trunk_calls == [] and [_stamps(directory) for directory in caches] == stamps


def test_no_feature_cache_trains_on_images_and_writes_no_cache(data, tmp_path, trunk_calls):
    config_file = tmp_path / 'small-efficientnet.json'
    small_efficientnet_config().save(config_file)
    assert cli.main(['train', '--data', str(data), '--model', str(config_file), '--output', str(tmp_path / 'run'),
                     '--window', '4', '--stride', '2', '--batch-size', '2', '--joint-steps', '1', '--head-steps', '0',
                     '--num-workers', '0', '--val-windows', '2', '--calibration-windows', '0', '--no-feature-cache',
                     '--no-progress']) == 0
    assert not (data / 'training' / 'feature_cache').exists()
    assert 2 * 4 in trunk_calls  # the training step ran the trunk on a batch of 2 windows x 4 frames


def test_an_empty_validation_split_caches_to_no_windows(tmp_path):
    """A collection without validation episodes still writes an empty validation/ split: no windows, no failure."""
    data = write_demo_dataset(tmp_path / 'demos', train_episodes=2, val_episodes=0, length=8)
    config_file = tmp_path / 'small-efficientnet.json'
    small_efficientnet_config().save(config_file)
    assert cli.main(['train', '--data', str(data), '--model', str(config_file), '--output', str(tmp_path / 'run'),
                     '--window', '4', '--stride', '2', '--batch-size', '2', '--joint-steps', '1', '--head-steps', '0',
                     '--num-workers', '0', '--calibration-windows', '0', '--cache-workers', '1', '--no-progress']) == 0
    assert len(CachedWindows([data / 'validation'], VISION, window=4, stride=4)) == 0
    assert len(open_split([data], 'validation', window=4, stride=4, robot_obs=True)) == 0


def test_runtime_action_from_live_and_cached_features_is_the_same(data):
    """The policy runs the trunk on each frame (batch 1); a cache built one frame per batch feeds the model the same
    fp16 features, so the actions are bit-identical. A cache built in batches of 64 (the default) differs in ~1 %
    of the features by one fp16 step (oneDNN's fp32 sums depend on the batch size): the action moves by < 1e-5
    (measured 3.6e-6), well inside the 1e-4 asserted."""
    split = data / 'training'
    single = build_split_cache(split, VISION, batch_size=1, progress=False)
    batched = build_split_cache(write_demo_dataset(data.parent / 'copy', train_episodes=3, val_episodes=1,
                                                   length=10) / 'training', VISION, progress=False)
    torch.manual_seed(0)
    model = DeerVLA(small_efficientnet_config()).eval()
    with torch.no_grad():  # random init closes the gates: open them, so the images reach the decoder
        for block in model.cross_attention:
            block.attention_gate.fill_(1.0)
    policy = EarlyExitPolicy(model, ExitCriterion.always_last(model.num_exits), count_cost_table(model))
    text_input, mask = InstructionEncoder(model.config.decoder)(['open the drawer'])
    frame_ids = np.load(single / 'frame_ids.npy')
    assert np.array_equal(np.load(batched / 'frame_ids.npy'), frame_ids)

    def cached_action(directory: Path, row: int, robot_obs: np.ndarray) -> tuple[int, np.ndarray, int]:
        """Exit index, pose and gripper of the model fed the cached features of ``row`` (the policy's first step)."""
        features = [torch.from_numpy(np.load(directory / f'{camera}.npy')[row:row + 1])
                    for camera in ('static', 'gripper')]
        with torch.inference_mode():
            visual = model.encode_vision_features(*features, torch.from_numpy(robot_obs)[None])
            *_, (last, feature) = model.iter_exit_features(visual, text_input, mask)
            output = model.action_head(feature.unsqueeze(1), None)
        gripper = GRIPPER_OPEN if float(output.gripper_logit[0, 0]) > 0 else GRIPPER_CLOSE
        return last, np.clip(output.pose[0, 0].double().numpy(), -1.0, 1.0), gripper

    live_poses = []
    for row in (0, 7, 25):
        frame = _frame(split, int(frame_ids[row]))
        robot_obs = frame['robot_obs'].astype(np.float32)
        policy.reset()
        live, info = policy.step(Observation(frame['rgb_static'], frame['rgb_gripper'], robot_obs), 'open the drawer')
        last, pose, gripper = cached_action(single, row, robot_obs)
        assert info.exit_index == last == model.num_exits - 1
        np.testing.assert_array_equal(live.pose, pose)
        assert live.gripper == gripper
        _, pose, gripper = cached_action(batched, row, robot_obs)
        np.testing.assert_allclose(live.pose, pose, rtol=0, atol=1e-4)
        assert live.gripper == gripper
        live_poses.append(live.pose)
    assert not np.allclose(live_poses[0], live_poses[2])  # the images do move the action


def test_feature_shift_moves_each_grid_by_whole_cells_and_zero_is_identity():
    generator = torch.Generator().manual_seed(0)
    batch = {'features_static': torch.randn(3, 4, 112, 7, 7).half(), 'features_gripper': torch.randn(3, 4, 112, 5, 5),
             'pose': torch.randn(3, 4, 6)}
    unchanged = augment_batch(batch, static_pad=10, gripper_pad=4, generator=generator, feature_shift=0)
    assert all(unchanged[key] is batch[key] for key in batch)  # no images to shift, no feature shift asked
    shifted = augment_batch(batch, static_pad=10, gripper_pad=4, generator=generator, feature_shift=2)
    assert shifted['pose'] is batch['pose']
    offsets = set()
    for key in ('features_static', 'features_gripper'):
        assert shifted[key].shape == batch[key].shape and shifted[key].dtype == batch[key].dtype
        grids, moved = batch[key].flatten(0, 1), shifted[key].flatten(0, 1)
        size = grids.shape[-1]
        for grid, result in zip(grids, moved):
            matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                       if torch.equal(result, grid[:, (torch.arange(size) + dy).clamp(0, size - 1)]
                                                  [:, :, (torch.arange(size) + dx).clamp(0, size - 1)])]
            assert matches, 'every frame is its own grid moved by whole cells, edge cells repeated'
            offsets.add(matches[0])
    assert len(offsets) > 1  # each frame draws its own offset


def test_a_model_without_a_frozen_trunk_refuses_caching(data):
    conv = load_config('tiny').vision
    with pytest.raises(ValueError, match="vision.encoder 'conv' is trained, not frozen"):
        build_split_cache(data / 'training', conv, progress=False)
    with pytest.raises(ValueError, match='cannot be cached'):
        CachedWindows([data / 'training'], conv, window=4, stride=2)
    assert not (data / 'training' / 'feature_cache').exists()
