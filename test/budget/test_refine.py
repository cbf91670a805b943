"""Refined thresholds: file round trip, picked up by the runtime, and ``deer-ros refine`` end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deer_ros.budget.calibration import calibration_path, checkpoint_sha256
from deer_ros.budget.caps import Budget
from deer_ros.budget.refined import RefinedEntry, RefinedFileError, load_refined, refined_path, save_refined
from deer_ros.model import DeerVLA, load_config
from deer_ros.policy.runtime import PolicyRuntime, synthetic_calibration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint with a calibration file (values from random images)."""
    directory = tmp_path_factory.mktemp('checkpoint')
    torch.manual_seed(0)
    model = DeerVLA(load_config('tiny')).eval()
    model.save_pretrained(directory)
    data = synthetic_calibration(model, windows=8, window=6)
    data.metadata['checkpoint_sha256'] = checkpoint_sha256(directory)
    data.save(calibration_path(directory))
    return directory


def test_runtime_uses_refined_thresholds_only_for_their_budget(checkpoint: Path, tmp_path: Path) -> None:
    runtime = PolicyRuntime(checkpoint, budget=Budget(avg_gflops=0.2))
    offline = runtime.thresholds.solution.criterion.thresholds
    refined = offline.copy()
    refined[1:-1] = offline[1:-1] * 1.5
    cap = runtime.thresholds.solution.cap
    save_refined(refined_path(checkpoint), RefinedEntry(0.2, cap, 'llm', tuple(refined), 1.0, 0.2))
    try:
        reloaded = PolicyRuntime(checkpoint, budget=Budget(avg_gflops=0.2), track_average=True)
        np.testing.assert_allclose(reloaded.thresholds.solution.criterion.thresholds, refined)
        assert reloaded.describe()['avg tracking'] == 'off'  # tuned in closed loop already: never re-solved
        other = reloaded.thresholds.solve(Budget(avg_gflops=0.25))
        reloaded.apply(Budget(avg_gflops=0.25), other)
        assert not np.allclose(other.criterion.thresholds[1:-1], refined[1:-1])
        assert reloaded.describe()['avg tracking'].startswith('solver target')  # no refined entry for 0.25
    finally:
        refined_path(checkpoint).unlink()


def test_malformed_refined_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / 'refined_thresholds.json'
    path.write_text('{"entries": [{"avg_gflops": 1}]}')
    with pytest.raises(RefinedFileError, match='refined_thresholds.json'):
        load_refined(path)


def test_refine_command_writes_and_resumes(checkpoint: Path, tmp_path: Path) -> None:
    state = tmp_path / 'bo.json'
    command = [sys.executable, '-m', 'deer_ros.cli', 'refine', '--checkpoint', str(checkpoint), '--avg-gflops',
               '0.2', '--chains', '1', '--max-steps', '2', '--initial-points', '2', '--state', str(state)]
    try:
        subprocess.run(command + ['--n-calls', '2'], check=True, cwd=ROOT, timeout=600, capture_output=True)
        assert len(json.loads(state.read_text())['evaluations']) == 2
        done = subprocess.run(command + ['--n-calls', '3'], check=True, cwd=ROOT, timeout=600, capture_output=True,
                              text=True)
        assert len(json.loads(state.read_text())['evaluations']) == 3  # resumed: one more, not three
        [entry] = load_refined(refined_path(checkpoint))
        assert entry.avg_gflops == 0.2 and entry.tuning['evaluations'] == 3 and 'refined thresholds' in done.stdout
    finally:
        refined_path(checkpoint).unlink(missing_ok=True)
