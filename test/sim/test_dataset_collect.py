"""``collect`` end to end: expert rollouts rendered, oracle-checked and written in CALVIN format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deer_ros.sim.collect import collect
from deer_ros.sim.dataset import LanguageWindows, frame_path
from deer_ros.sim.language import training_instructions
from deer_ros.sim.tasks import SUPPORTED_TASKS


def test_collect_writes_a_readable_calvin_dataset(tmp_path: Path) -> None:
    # Seed 3 draws two short tasks (about 90 rendered steps in all): rendering is the slow part.
    summary = collect(tmp_path, num_demos=2, scenes=['A', 'D'], seed=3, validation_fraction=0.5, chain_length=1,
                      progress=False)
    assert dict(summary.demos) == {'training': 1, 'validation': 1}
    seen_frames: set[int] = set()
    for split in ('training', 'validation'):
        split_dir = tmp_path / split
        [(first, last)] = np.load(split_dir / 'ep_start_end_ids.npy').tolist()
        frames = set(range(first, last + 1))
        assert not frames & seen_frames
        seen_frames |= frames
        assert {int(p.stem.split('_')[1]) for p in split_dir.glob('episode_*.npz')} == frames
        episode = [np.load(frame_path(split_dir, index)) for index in range(first, last + 1)]
        robot_obs = np.stack([frame['robot_obs'] for frame in episode])
        actions = np.stack([frame['actions'] for frame in episode])
        rel_actions = np.stack([frame['rel_actions'] for frame in episode])
        np.testing.assert_allclose(actions[:-1, :6], robot_obs[1:, :6])  # CALVIN: action t = pose at t+1
        assert np.all(np.abs(rel_actions[:, :6]) <= 1) and set(np.unique(rel_actions[:, 6])) <= {-1.0, 1.0}
        np.testing.assert_array_equal(actions[:, 6], rel_actions[:, 6])

        windows = LanguageWindows(split_dir, window=8, stride=4)
        [(annotation, embedding)] = windows.annotations
        assert (annotation.start, annotation.end) == (first, last) and embedding is None
        assert annotation.task in SUPPORTED_TASKS
        assert annotation.instruction in training_instructions(annotation.task)
        item = windows[len(windows) - 1]
        assert item.frames['rgb_static'].shape == (8, 200, 200, 3) and item.frames['rgb_static'].any()
    assert sum(summary.frames.values()) == len(seen_frames)
