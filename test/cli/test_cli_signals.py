"""SIGTERM stops a `deer-ros` command the way Ctrl-C does: a collection killed midway keeps a readable dataset."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from deer_ros.benchmark.dataset import LanguageWindows

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_makes_a_background_collection_write_its_index(tmp_path: Path) -> None:
    """Started as a script's background job (SIGINT ignored, as bash does), `kill` is the way to stop it."""
    output = tmp_path / 'demos'
    command = [sys.executable, '-m', 'deer_ros.cli', 'collect', '--output', str(output), '--episodes', '1000',
               '--chain-length', '1', '--validation-fraction', '0', '--no-progress']
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120  # a generous bound: the first demos take seconds on a quiet machine
        while len(list((output / 'training').glob('episode_*.npz'))) < 60:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, 'no demo recorded in 120 s'
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    ranges = np.load(output / 'training' / 'ep_start_end_ids.npy')
    assert len(ranges) >= 1
    windows = LanguageWindows(output / 'training', window=4)
    assert len(windows) > 0 and windows[0].frames['rgb_static'].shape[0] == 4
