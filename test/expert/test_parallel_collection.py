"""``collect(workers=N)`` and ``deer-ros collect --workers/--tasks/--task-weights``: shards, seeds, task mix.

Tasks are restricted to the short ones (slider, LED: ~60 rendered steps each) to keep rendering, the slow part, brief.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from deer_ros.benchmark.dataset import LanguageWindows, dataset_roots, frame_path, read_annotations, shard_dir
from deer_ros.cli import main
from deer_ros.expert.collect import ShardsFailed, Takeover, collect
from deer_ros.expert.task_mix import TaskMix
from deer_ros.sim.interface import Obs

SHORT_TASKS = TaskMix.build(['move_slider_*', 'turn_*_led'])


def _shard_contents(root: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Per annotation: task, instruction, and the robot and scene states of its frames."""
    split_dir = root / 'training'
    contents = []
    for annotation, _ in read_annotations(split_dir):
        frames = [np.load(frame_path(split_dir, index)) for index in range(annotation.start, annotation.end + 1)]
        contents.append((annotation.task, annotation.instruction, np.stack([f['robot_obs'] for f in frames]),
                         np.stack([f['scene_obs'] for f in frames])))
    return contents


def test_workers_write_disjoint_shards_that_a_seed_reproduces(tmp_path: Path) -> None:
    runs = {}
    for name in ('first', 'again'):
        summary = collect(tmp_path / name, num_demos=3, scenes=['D'], seed=5, validation_fraction=0.0,
                          chain_length=1, progress=False, workers=2, mix=SHORT_TASKS)
        roots = dataset_roots(tmp_path / name)
        assert roots == [shard_dir(tmp_path / name, 0), shard_dir(tmp_path / name, 1)]
        assert not (tmp_path / name / 'training').exists(), 'shards only: no top-level split'
        runs[name] = [_shard_contents(root) for root in roots]
        assert [len(contents) for contents in runs[name]] == [2, 1], 'each worker records its share'
        assert dict(summary.demos) == {'training': 3}, 'the summaries are merged'
        assert sum(summary.frames.values()) == sum(len(list((root / 'training').glob('episode_*.npz')))
                                                   for root in roots)
        assert sum(done for done, _ in summary.to_json()['expert_success'].values()) == 3
        assert len(LanguageWindows(roots[1] / 'training', window=4, stride=4)) > 0
    first, again = runs['first'], runs['again']
    # Different seeds per worker: the shards' first demos start from different scenes.
    assert not np.array_equal(first[0][0][3][0], first[1][0][3][0])
    for shard, shard_again in zip(first, again):
        for (task, instruction, robot, scene), (task2, instruction2, robot2, scene2) in zip(shard, shard_again):
            assert (task, instruction) == (task2, instruction2)
            np.testing.assert_array_equal(robot, robot2)
            np.testing.assert_array_equal(scene, scene2)


class _Still:
    """A takeover policy that holds the arm still (the expert then does the task)."""

    def reset(self) -> None:
        pass

    def step(self, obs: Obs, instruction: str) -> np.ndarray:
        return np.array([0, 0, 0, 0, 0, 0, 1.0])


def _dies_once(env: object, marker: str) -> _Still:
    """Kill the first worker that builds it (whichever claims ``marker``), the way a segfault would."""
    try:
        os.remove(marker)
    except FileNotFoundError:
        return _Still()
    os._exit(3)


def test_a_dead_worker_costs_only_its_own_shard(tmp_path: Path) -> None:
    marker = tmp_path / 'kill_one'
    marker.touch()
    takeover = Takeover(functools.partial(_dies_once, marker=str(marker)), max_steps=1)
    with pytest.raises(ShardsFailed, match=r'shard_0[01]: worker process died \(exit code 3\)') as failure:
        collect(tmp_path / 'data', num_demos=2, scenes=['D'], seed=1, validation_fraction=0.0, chain_length=1,
                progress=False, workers=2, mix=SHORT_TASKS, takeover=takeover)
    summary = failure.value.summary
    [dead] = summary.failed_shards
    assert summary.to_json()['failed_shards'] == {dead: 'worker process died (exit code 3)'}
    assert dict(summary.demos) == {'training': 1}, 'the other worker finished its share'
    with pytest.raises(FileNotFoundError, match=dead):
        dataset_roots(tmp_path / 'data')
    shutil.rmtree(tmp_path / 'data' / dead)
    [survivor] = dataset_roots(tmp_path / 'data')
    assert survivor.name != dead and len(read_annotations(survivor / 'training')) == 1


def test_cli_tasks_and_weights_choose_what_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Weight 0 removes the slider tasks that --tasks selected: only LED demos remain.
    assert main(['collect', '--output', str(tmp_path), '--episodes', '2', '--seed', '2', '--chain-length', '1',
                 '--validation-fraction', '0', '--no-progress', '--workers', '1',
                 '--tasks', 'move_slider_*', 'turn_*_led', '--task-weights', '{"move_slider_*": 0}']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert dataset_roots(tmp_path) == [tmp_path], 'one worker keeps the single-root layout'
    tasks = [annotation.task for annotation, _ in read_annotations(tmp_path / 'training')]
    assert len(tasks) == 2 and set(tasks) <= {'turn_on_led', 'turn_off_led'}
    assert set(summary['expert_success']) <= {'turn_on_led', 'turn_off_led'}


@pytest.mark.parametrize(('options', 'message'), [
    (['--tasks', 'rotate_green_block_left'], 'names no supported task'),
    (['--task-weights', '{"lift_*_shelf": 2}'], 'names no supported task'),
    (['--task-weights', '{"open_drawer": -1}'], 'must be a finite number >= 0'),
    (['--task-weights', '[1, 2]'], 'must be a JSON object'),
    (['--tasks', 'open_drawer', '--task-weights', '{"close_drawer": 2}'], 'matches none of the tasks selected'),
    (['--task-weights', '{"rotate_*": 2, "rotate_red_*": 3}'], 'weighted twice'),
    (['--tasks', 'open_drawer', '--task-weights', '{"open_drawer": 0}'], 'nothing to collect'),
    (['--tasks', 'stack_block'], 'none of the tasks'),
    (['--tasks', 'stack_block', 'move_slider_*', '--chain-length', '5'], 'can never be drawn'),
    (['--workers', '0'], 'workers must be >= 1'),
])
def test_cli_rejects_bad_task_choices_before_recording(tmp_path: Path, options: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        main(['collect', '--output', str(tmp_path / 'data'), '--episodes', '1', '--no-progress', *options])
    assert not (tmp_path / 'data').exists()


def test_the_two_layouts_never_share_an_output(tmp_path: Path) -> None:
    shard_dir(tmp_path / 'sharded', 0).mkdir(parents=True)
    with pytest.raises(FileExistsError, match='shard_00'):
        collect(tmp_path / 'sharded', num_demos=1, scenes=['D'], progress=False)
    (tmp_path / 'single' / 'training').mkdir(parents=True)
    with pytest.raises(FileExistsError, match='training'):
        collect(tmp_path / 'single', num_demos=2, scenes=['D'], progress=False, workers=2)
