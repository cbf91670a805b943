"""Smoke run of scripts/reproduce_default_policy.sh: every stage for real, at the smallest sizes, then the checks.

collect -> train -> + proprio -> + sentence encoder -> 12 exits -> calibrate -> evaluate -> install, with
12 demos (so the validation split, 10 %, that calibration is collected on is not empty) and a step or two per
training stage. It takes minutes (184 s at load average ~3.5, most of it the proprio stage's head steps and the
evaluation's rendered chain), so the test suite runs a reduced form instead
(test/cli/test_demo_and_benchmarks.py: every stage's command line against the real parser).

    .venv/bin/python benchmarks/reproduce_smoke.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from deer_ros.policy.runtime import PolicyRuntime

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {'DEMOS': '12', 'JOINT_STEPS': '2', 'HEAD_STEPS': '1', 'PROPRIO_STEPS': '2', 'PROPRIO_HEAD_STEPS': '1',
         'BATCH': '2', 'TEXT_STEPS': '2', 'TEXT_HEAD_STEPS': '1', 'TEXT_BATCH': '2', 'EXIT_HEAD_STEPS': '1',
         'CHAINS': '1'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work', type=Path, help='run directory (default: a new temporary one)')
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix='reproduce_smoke_'))
    installed = work / 'installed'
    started = time.monotonic()
    done = subprocess.run(['bash', str(ROOT / 'scripts' / 'reproduce_default_policy.sh')], cwd=ROOT, text=True,
                          env={**os.environ, **SMOKE, 'WORK': str(work / 'work'), 'INSTALL_DIR': str(installed)},
                          capture_output=True)
    print('\n'.join(line for line in done.stdout.splitlines() if line.startswith('==')))
    if done.returncode != 0:
        raise SystemExit(f'the script failed ({done.returncode}):\n{done.stderr[-3000:]}')
    assert {p.name for p in installed.iterdir()} == {'config.json', 'model.safetensors', 'calibration.npz',
                                                     'train_config.json', 'evaluation.json'}
    runtime = PolicyRuntime(installed)
    assert runtime.config.use_proprio and runtime.config.decoder.tokenizer == 'minilm'
    assert runtime.config.exit_layers == tuple(range(1, 13))
    assert runtime.calibration_source.endswith('calibration.npz')
    assert json.loads((installed / 'evaluation.json').read_text())['num_chains'] == 1
    print(f'smoke run passed in {time.monotonic() - started:.0f} s ({work})')


if __name__ == '__main__':
    main()
