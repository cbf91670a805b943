"""``deer-ros evaluate`` keeps each chain in a results file, resumes from it, and survives a failing chain."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deer_ros.benchmark.protocols import CALVIN, DEER_ROS
from deer_ros.cli import main
from deer_ros.cli.evaluate import policy_kwargs_for

RUN = ['evaluate', '--no-cameras', '--num-chains', '3', '--offset', '5', '--max-steps', '3', '--no-progress']


class Broken:
    """A policy that raises on every step: each chain fails, the run still ends with a summary."""

    def __init__(self, env: object) -> None:
        pass

    def reset(self) -> None:
        pass

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        raise ValueError('no model')


def test_results_file_beside_the_output_and_resume(tmp_path: Path, capsys) -> None:
    output = tmp_path / 'expert.json'
    assert main([*RUN, '--output', str(output)]) == 0
    whole = json.loads(output.read_text())
    results = tmp_path / 'expert.chains.jsonl'
    header, *lines = results.read_text().splitlines(keepends=True)
    assert json.loads(header)['settings'] == whole['settings'] and len(lines) == 3
    assert whole['settings']['protocol'] and whole['settings']['cameras'] is False and whole['num_failed'] == 0

    with pytest.raises(SystemExit, match='already holds an evaluation.*--resume continues it'):
        main([*RUN, '--output', str(output)])
    with pytest.raises(SystemExit, match='max_steps=3 there, 4 now'):
        main([*RUN, '--output', str(output), '--resume', '--max-steps', '4'])

    results.write_text(header + lines[0] + lines[1][:10])  # killed while writing the second chain
    output.unlink()
    capsys.readouterr()
    assert main([*RUN, '--output', str(output), '--resume']) == 0
    assert 'resuming' in capsys.readouterr().out
    assert json.loads(output.read_text()) == whole
    assert len(results.read_text().splitlines()) == 4


def test_resume_needs_a_results_file() -> None:
    with pytest.raises(SystemExit, match='--resume needs the results file'):
        main([*RUN, '--resume'])


def test_failing_chains_are_reported_and_the_exit_status_says_so(tmp_path: Path, capsys) -> None:
    results = tmp_path / 'broken.jsonl'
    assert main([*RUN, '--policy', f'{__name__}:Broken', '--results', str(results)]) == 1
    out, err = capsys.readouterr()
    assert 'failed chains: 3 (counted as 0 subtasks)' in out and 'chain 0: ValueError: no model' in out
    assert '3 chains failed' in err
    records = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert [record['error'] for record in records] == ['ValueError: no model'] * 3


def test_calvin_protocol_runs_calvins_chains_and_the_results_say_so(tmp_path: Path) -> None:
    output = tmp_path / 'calvin.json'
    assert main(['evaluate', '--protocol', 'calvin', '--no-cameras', '--num-chains', '1', '--no-progress',
                 '--output', str(output)]) == 0
    report = json.loads(output.read_text())
    assert report['settings']['protocol'] == 'calvin/1' and report['settings']['max_steps'] == 360
    assert report['chains'][0]['tasks'] == ['rotate_blue_block_right', 'move_slider_right', 'lift_red_block_slider',
                                            'place_in_slider', 'turn_off_lightbulb']  # CALVIN's first sequence
    assert report['chains'][0]['successes'] == 5
    with pytest.raises(SystemExit, match="protocol='calvin/1' there, 'deer_ros/1' now"):
        main(['evaluate', '--no-cameras', '--num-chains', '1', '--no-progress', '--output', str(output), '--resume'])


@pytest.mark.parametrize('options, reason', [
    (['--scene', 'A'], 'CALVIN evaluates on scene D'),
    (['--max-steps', '3'], '360 steps, not 3'),
    (['--chain-seed', '1'], 'fixed seeds'),
    (['--policy', 'deer_ros.policy.chain_policy:deer_policy', '--policy-kwargs', '{"ready_pose": true}'],
     'never taken back to a ready pose'),
])
def test_calvin_protocol_refuses_what_calvin_does_not_do(options: list[str], reason: str) -> None:
    with pytest.raises(SystemExit, match=reason):
        main(['evaluate', '--protocol', 'calvin', '--no-cameras', '--no-progress', *options])


def test_calvin_protocol_turns_the_deer_policys_ready_pose_off() -> None:
    deer = 'deer_ros.policy.chain_policy:deer_policy'
    assert policy_kwargs_for(CALVIN, deer, {'source': 'tiny'}) == {'source': 'tiny', 'ready_pose': False}
    assert policy_kwargs_for(CALVIN, 'expert', {}) == {}  # no ready pose to turn off
    assert policy_kwargs_for(DEER_ROS, deer, {'ready_pose': True}) == {'ready_pose': True}
