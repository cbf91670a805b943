"""``deer-ros evaluate`` and ``deer-ros refine`` under torchrun (two local gloo processes) match a local run.

The commands run as users launch them, ``python -m torch.distributed.run
--nproc-per-node 2 -m deer_ros.cli ...``, and are compared chain by chain with
the same command run in one process.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deer_ros.benchmark.distributed_evaluation import DistributedContext
from deer_ros.benchmark.language import evaluation_instruction
from deer_ros.cli import main
from deer_ros.expert.scripted_expert import ExpertPolicy

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Chains 0-4 with 60 steps a subtask: the expert completes some subtasks and misses others.
RUN = ['evaluate', '--no-cameras', '--num-chains', '5', '--max-steps', '60', '--no-progress',
       '--policy', f'{__name__}:RankedExpert']
RANK_LOG = 'DEER_ROS_TEST_RANK_LOG'
FAULTY_INSTRUCTION = evaluation_instruction('push_red_block_right')  # reached by one of the chains


class RankedExpert(ExpertPolicy):
    """The expert, noting which rank runs each subtask (in the file ``$DEER_ROS_TEST_RANK_LOG``), with a bug that
    only one chain reaches: that chain fails wherever it runs."""

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        if instruction == FAULTY_INSTRUCTION:
            raise RuntimeError('policy bug')
        return super().step(obs, instruction)

    def reset(self) -> None:
        with open(os.environ[RANK_LOG], 'a') as log:
            log.write(os.environ.get('RANK', 'local') + '\n')
        super().reset()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def torchrun(arguments: list[str], rank_log: Path | None = None) -> subprocess.CompletedProcess:
    """``deer-ros <arguments>`` over two local processes, as a user launches it on each machine."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(HERE), os.environ.get('PYTHONPATH')]))}
    if rank_log is not None:
        env[RANK_LOG] = str(rank_log)
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-addr', '127.0.0.1',
               '--master-port', str(_free_port()), '-m', 'deer_ros.cli', *arguments]
    return subprocess.run(command, cwd=ROOT, env=env, timeout=300, capture_output=True, text=True)


def ranks_in(log: Path) -> set[str]:
    return set(log.read_text().split())


def test_shares_are_round_robin_and_balanced() -> None:
    shares = [DistributedContext(rank, 3).share(list(range(8))) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert DistributedContext().share([4, 5]) == [4, 5] and not DistributedContext().enabled


def test_two_processes_give_the_local_report_chain_by_chain(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(RANK_LOG, str(tmp_path / 'local.log'))
    assert main([*RUN, '--output', str(tmp_path / 'local.json')]) == 1  # the faulty chain fails
    local = json.loads((tmp_path / 'local.json').read_text())
    assert local['num_failed'] == 1 and 0 < local['average_length'] < 5
    assert ranks_in(tmp_path / 'local.log') == {'local'}
    capsys.readouterr()

    done = torchrun([*RUN, '--output', str(tmp_path / 'spread.json')], tmp_path / 'spread.log')
    assert done.returncode != 0, done.stderr  # failed chains: exit status 1, as locally
    spread = json.loads((tmp_path / 'spread.json').read_text())
    assert ranks_in(tmp_path / 'spread.log') == {'0', '1'}  # both ranks ran chains
    assert [chain['index'] for chain in spread['chains']] == list(range(5))
    for ours, theirs in zip(spread['chains'], local['chains']):
        assert ours == theirs
    assert spread == local
    assert done.stdout.count('average successful length') == 1  # only rank 0 prints
    records = [json.loads(line) for line in (tmp_path / 'spread.chains.jsonl').read_text().splitlines()[1:]]
    assert sorted(record['index'] for record in records) == list(range(5))  # every rank's chains, in rank 0's file


def test_a_resumed_results_file_runs_only_the_chains_it_lacks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(RANK_LOG, str(tmp_path / 'local.log'))
    main([*RUN, '--output', str(tmp_path / 'local.json')])
    local = json.loads((tmp_path / 'local.json').read_text())
    header, *lines = (tmp_path / 'local.chains.jsonl').read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)['error'] is None][:2]
    results = tmp_path / 'spread.chains.jsonl'
    results.write_text(header + ''.join(kept) + lines[-1][:10])  # killed while writing a third chain

    done = torchrun([*RUN, '--output', str(tmp_path / 'spread.json'), '--resume'], tmp_path / 'spread.log')
    assert 'resuming' in done.stdout, done.stderr
    assert json.loads((tmp_path / 'spread.json').read_text()) == local
    subtasks = len((tmp_path / 'local.log').read_text().split())  # one line a subtask tried
    kept_subtasks = sum(len(json.loads(line)['steps']) for line in kept)
    assert len((tmp_path / 'spread.log').read_text().split()) == subtasks - kept_subtasks  # kept chains not rerun
    records = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert sorted(record['index'] for record in records) == list(range(5))


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint: refine writes its refined thresholds beside the weights."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / 'checkpoint'))


def test_refine_over_two_processes_searches_as_one_process(checkpoint: Path, tmp_path: Path) -> None:
    refine = ['refine', '--checkpoint', str(checkpoint), '--avg-gflops', '0.2', '--chains', '3', '--max-steps', '2',
              '--n-calls', '3', '--initial-points', '2']
    local = subprocess.run([sys.executable, '-m', 'deer_ros.cli', *refine, '--state', str(tmp_path / 'local.json')],
                           cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr
    refined = checkpoint / 'refined_thresholds.json'
    local_refined = json.loads(refined.read_text())
    refined.unlink()

    spread = torchrun([*refine, '--state', str(tmp_path / 'spread.json')])
    assert spread.returncode == 0, spread.stderr
    evaluations = json.loads((tmp_path / 'spread.json').read_text())['evaluations']
    assert len(evaluations) == 3 and evaluations == json.loads((tmp_path / 'local.json').read_text())['evaluations']
    assert json.loads(refined.read_text()) == local_refined
    assert spread.stdout.count('refined thresholds') == 1
