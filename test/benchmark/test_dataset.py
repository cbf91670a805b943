"""Round trips through the CALVIN-format writer and reader, plus a fixture shaped like the real CALVIN files."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from deer_ros.benchmark import dataset
from deer_ros.benchmark.dataset import (
    FRAME_SHAPES,
    LANG_EMB_DIM,
    Annotation,
    CalvinDatasetWriter,
    LanguageWindows,
    frame_path,
    read_annotations,
)


def _frames(length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    frames = {key: rng.normal(size=(length, *shape)) for key, shape in FRAME_SHAPES.items()}
    for key in ('rgb_static', 'rgb_gripper'):
        frames[key] = rng.integers(0, 256, size=(length, *FRAME_SHAPES[key]), dtype=np.uint8)
    return frames


def test_round_trip_keeps_frames_ranges_and_language(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first, second, third = _frames(15, rng), _frames(4, rng), _frames(13, rng)
    with CalvinDatasetWriter(tmp_path, compress=False) as writer:
        assert writer.add_episode('training', first, [Annotation(0, 13, 'open the drawer', 'open_drawer')]) == 0
        assert writer.add_episode('validation', second, [Annotation(0, 3, 'too short', 'close_drawer')]) == 15
        writer.add_episode('training', third, [Annotation(1, 12, 'switch the lamp on', 'turn_on_lightbulb')])

    train = tmp_path / 'training'
    np.testing.assert_array_equal(np.load(train / 'ep_start_end_ids.npy'), [[0, 14], [19, 31]])
    np.testing.assert_array_equal(np.load(train / 'ep_lens.npy'), [15, 13])
    raw = np.load(train / 'lang_annotations' / 'auto_lang_ann.npy', allow_pickle=True).item()
    assert raw['language']['emb'].shape == (2, 1, LANG_EMB_DIM)
    assert raw['info']['indx'] == [(0, 13), (20, 31)]

    windows = LanguageWindows(train, window=12)
    assert len(windows) == 3 + 1  # 14 frames -> 3 windows, 12 frames -> 1
    item = windows[2]
    assert (item.instruction, item.task, item.start, item.embedding) == ('open the drawer', 'open_drawer', 2, None)
    for key, value in item.frames.items():
        np.testing.assert_array_equal(value, first[key][2:14])
    last = windows[3]
    assert last.start == 20 and last.task == 'turn_on_lightbulb'
    np.testing.assert_array_equal(last.frames['robot_obs'], third['robot_obs'][1:13])
    assert len(LanguageWindows(tmp_path / 'validation', window=12)) == 0
    assert len(LanguageWindows(tmp_path / 'validation', window=2, stride=2)) == 2


def test_writer_rejects_bad_input_and_non_empty_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    writer = CalvinDatasetWriter(tmp_path)
    frames = _frames(3, rng)
    with pytest.raises(ValueError, match='outside'):
        writer.add_episode('training', frames, [Annotation(0, 3, 'x', 'open_drawer')])
    with pytest.raises(ValueError, match='rgb_static'):
        writer.add_episode('training', {**frames, 'rgb_static': frames['rgb_static'].astype(np.float32)}, [])
    with pytest.raises(ValueError, match='lack'):
        writer.add_episode('training', {'actions': frames['actions']}, [])
    writer.add_episode('training', frames, [])
    writer.close()
    with pytest.raises(FileExistsError):
        CalvinDatasetWriter(tmp_path)


def _write_calvin_like_split(split_dir: Path, first: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Files as in CALVIN's debug set: extra camera keys, float64 states, real-valued embeddings, numpy ranges."""
    (split_dir / 'lang_annotations').mkdir(parents=True)
    robot_obs = rng.normal(size=(length, 15))
    for offset in range(length):
        np.savez(frame_path(split_dir, first + offset),
                 actions=rng.normal(size=7), rel_actions=rng.uniform(-1, 1, size=7), robot_obs=robot_obs[offset],
                 scene_obs=rng.normal(size=24),
                 rgb_static=np.zeros((200, 200, 3), np.uint8), rgb_gripper=np.zeros((84, 84, 3), np.uint8),
                 rgb_tactile=np.zeros((160, 120, 6), np.uint8), depth_static=np.zeros((200, 200), np.float32),
                 depth_gripper=np.zeros((84, 84), np.float32), depth_tactile=np.zeros((160, 120, 2), np.float32))
    np.save(split_dir / 'ep_start_end_ids.npy', np.array([[first, first + length - 1]]))
    annotations = {
        'language': {'ann': ['lift the red block', 'slide the door'], 'task': ['lift_red_block_table', 'move_slider_left'],
                     'emb': rng.normal(size=(2, 1, LANG_EMB_DIM)).astype(np.float32)},
        'info': {'indx': [(np.int64(first), np.int64(first + 13)), (np.int64(first + 4), np.int64(first + 16))],
                 'episodes': []},
    }
    np.save(split_dir / 'lang_annotations' / 'auto_lang_ann.npy', annotations, allow_pickle=True)
    return robot_obs


def test_reader_loads_real_calvin_shaped_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    first = 358482
    robot_obs = _write_calvin_like_split(tmp_path / 'training', first, 17, rng)

    windows = LanguageWindows(tmp_path / 'training', window=12)
    assert len(windows) == 3 + 2
    item = windows[4]
    assert item.task == 'move_slider_left' and item.start == first + 5
    assert set(item.frames) == set(FRAME_SHAPES)
    assert item.frames['robot_obs'].dtype == np.float64
    np.testing.assert_array_equal(item.frames['robot_obs'], robot_obs[5:17])
    assert item.embedding is not None and item.embedding.shape == (1, LANG_EMB_DIM)
    depth = LanguageWindows(tmp_path / 'training', window=2, keys=('depth_static',))[0]
    assert depth.frames['depth_static'].shape == (2, 200, 200)


def test_reader_accepts_annotations_without_embeddings(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    split = tmp_path / 'validation'
    _write_calvin_like_split(split, 10, 14, rng)
    path = split / 'lang_annotations' / 'auto_lang_ann.npy'
    data = np.load(path, allow_pickle=True).item()
    del data['language']['emb']
    np.save(path, data, allow_pickle=True)
    assert [embedding for _, embedding in read_annotations(split)] == [None, None]


def test_torch_adapter_batches_windows(tmp_path: Path) -> None:
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(4)
    with CalvinDatasetWriter(tmp_path) as writer:
        writer.add_episode('training', _frames(6, rng), [Annotation(0, 5, 'push the drawer shut', 'close_drawer')])
    adapter = dataset.TorchLanguageWindows(LanguageWindows(tmp_path / 'training', window=4))
    assert isinstance(adapter, torch.utils.data.Dataset)
    pickle.loads(pickle.dumps(adapter))
    batch = next(iter(torch.utils.data.DataLoader(adapter, batch_size=3)))
    assert batch['rgb_static'].shape == (3, 4, 200, 200, 3) and batch['rgb_static'].dtype == torch.uint8
    assert batch['robot_obs'].dtype == torch.float64
    assert batch['instruction'] == ['push the drawer shut'] * 3
