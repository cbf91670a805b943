"""``collect`` end to end: expert rollouts rendered, oracle-checked and written in CALVIN format."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from deer_ros.benchmark.dataset import LanguageWindows, frame_path
from deer_ros.benchmark.language import training_instructions
from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.cli import main
from deer_ros.expert.collect import Takeover, collect
from deer_ros.policy.chain_policy import deer_policy
from deer_ros.resources import pretrained_dir


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


def test_takeover_collect_annotates_only_the_expert_recovery(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The shipped policy starts the subtask; the expert finishes it from there (DAgger-style recovery data).
    policy_kwargs = json.dumps({'source': str(pretrained_dir() / 'tiny')})
    assert main(['collect', '--output', str(tmp_path), '--episodes', '1', '--scenes', 'D', '--seed', '3',
                 '--validation-fraction', '0', '--chain-length', '1', '--no-progress',
                 '--takeover-policy', 'deer_ros.policy.chain_policy:deer_policy',
                 '--takeover-kwargs', policy_kwargs, '--takeover-steps', '6']) == 0
    summary = json.loads(capsys.readouterr().out)
    split_dir = tmp_path / 'training'
    [(first, last)] = np.load(split_dir / 'ep_start_end_ids.npy').tolist()
    [(annotation, _)] = LanguageWindows(split_dir, window=4, stride=4).annotations
    policy_steps = annotation.start - first
    assert 1 <= policy_steps <= 6, 'the policy turn is recorded, unannotated, before the expert part'
    assert annotation.end == last and summary['frames'] == {'training': last - first + 1}
    assert sum(done for done, _ in summary['expert_success'].values()) == 1
    assert annotation.instruction in training_instructions(annotation.task)
    first_expert = np.load(frame_path(split_dir, annotation.start))
    last_policy = np.load(frame_path(split_dir, annotation.start - 1))
    np.testing.assert_allclose(first_expert['robot_obs'][:6], last_policy['actions'][:6])  # one contiguous recording


def test_takeover_options_without_a_policy_are_rejected(tmp_path: Path) -> None:
    for option in (['--takeover-steps', '6'], ['--takeover-kwargs', '{"source": "tiny"}']):
        with pytest.raises(ValueError, match='need --takeover-policy'):
            main(['collect', '--output', str(tmp_path / 'data'), '--episodes', '1', *option])
    assert not (tmp_path / 'data').exists(), 'rejected before anything is recorded'


def test_takeover_needs_at_least_one_policy_step() -> None:
    with pytest.raises(ValueError, match='takeover steps'):
        Takeover(functools.partial(deer_policy, source='tiny'), max_steps=0)
