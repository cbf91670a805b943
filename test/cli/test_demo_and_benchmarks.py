"""The trade-off benchmark and both demo modes run end to end in a reduced mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmark_scripts import load_benchmark

from deer_ros.policy.runtime import PolicyRuntime

ROOT = Path(__file__).resolve().parents[2]


def test_tradeoff_benchmark_reduced(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'tradeoff.py'), '--reduced', '--output', str(tmp_path)],
                   check=True, cwd=ROOT, timeout=900, capture_output=True)
    results = json.loads((tmp_path / 'results.json').read_text())
    rows = {row['name']: row for row in results['rows']}
    assert set(rows) >= {'static exit 1', 'static exit 6'} and sum(r['kind'] == 'deer' for r in rows.values()) == 2
    assert rows['static exit 1']['avg_exit'] == 1.0 and rows['static exit 6']['avg_exit'] == 6.0
    assert rows['static exit 1']['avg_llm_gflops'] < rows['static exit 6']['avg_llm_gflops']
    for row in rows.values():
        assert abs(sum(row['exit_histogram']) - 1.0) < 1e-9 and len(row['successes']) == 1
    assert (tmp_path / 'tradeoff.png').stat().st_size > 0
    assert 'headlines' in (tmp_path / 'table.md').read_text()


def test_tradeoff_headlines_judge_equal_success_strictly_and_paired() -> None:
    """One chain fewer than full depth fails the strict rule; the paired chain-by-chain interval still reaches 0."""
    tradeoff = load_benchmark('tradeoff')
    full = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1]  # 8 of 12
    cheap = full[:-1] + [0]                      # the same chains, one success fewer
    bad = [0] * 12

    def row(name: str, kind: str, gflops: float, successes: list[int]) -> dict:
        return {'name': name, 'kind': kind, 'avg_llm_gflops': gflops, 'successes': successes,
                'average_length': sum(successes) / len(successes), 'budget_error': 0.01}

    rows = [row('static exit 12', 'static', 0.12, full), row('static exit 1', 'static', 0.01, bad),
            row('DeeR 0.02', 'deer', 0.02, cheap), row('DeeR 0.015', 'deer', 0.015, bad),
            row('DeeR 0.06', 'deer', 0.06, full)]
    tradeoff.compare_with_full_depth(rows)
    head = tradeoff.headlines(rows)
    assert head['deer_setting_matching_full_depth'] == 'DeeR 0.06'
    assert head['full_over_deer_gflops_at_equal_success'] == 0.12 / 0.06
    assert head['deer_setting_not_measurably_worse'] == 'DeeR 0.02'
    assert abs(head['full_over_deer_gflops_not_measurably_worse'] - 6.0) < 1e-12
    assert rows[2]['paired_difference'] == -1 / 12 and rows[2]['paired_ci95'] > 1 / 12
    assert rows[3]['paired_difference'] + rows[3]['paired_ci95'] < 0  # 8 fewer of 12: measurably worse


def test_demo_synthetic_mode_reports_exits_and_cost() -> None:
    done = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', '--source', 'tiny', '--synthetic', '--steps', '20',
                           '--avg-gflops', '0.2'], check=True, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert 'exit histogram' in done.stdout and 'LLM GFLOPs   avg' in done.stdout and 'p99' in done.stdout


def test_demo_runs_a_short_chain_through_ros_with_the_shipped_policy(ros_domain_id) -> None:
    """The README's main job as CI can afford it: shipped policy, config/deer.yaml budget, one 4-step chain."""
    done = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', '--chains', '1', '--max-steps', '4',
                           '--timeout', '300'], check=True, cwd=ROOT, timeout=400, capture_output=True, text=True)
    assert 'deer_ros/pretrained/tiny' in done.stdout
    assert 'chains: 1   average successful length: 0.000' in done.stdout  # 4 steps cannot finish a subtask
    assert 'exit histogram: exit' in done.stdout and 'LLM GFLOPs   avg' in done.stdout and 'p99' in done.stdout


def test_reproduce_script_runs_end_to_end_in_a_smoke_run(tmp_path: Path) -> None:
    """collect -> train -> + proprio -> + sentence encoder -> 12 exits -> calibrate -> evaluate -> install.

    12 demos, so the validation split (10 %) that calibration is collected on is not empty.
    """
    installed = tmp_path / 'installed'
    env = {**os.environ, 'WORK': str(tmp_path / 'work'), 'DEMOS': '12', 'JOINT_STEPS': '2', 'HEAD_STEPS': '1',
           'PROPRIO_STEPS': '2', 'BATCH': '2', 'TEXT_STEPS': '2', 'TEXT_HEAD_STEPS': '1', 'TEXT_BATCH': '2',
           'EXIT_HEAD_STEPS': '1', 'CHAINS': '1',
           'INSTALL_DIR': str(installed)}
    subprocess.run(['bash', str(ROOT / 'scripts' / 'reproduce_default_policy.sh')], env=env, check=True, cwd=ROOT,
                   timeout=900, capture_output=True)
    assert {p.name for p in installed.iterdir()} == {'config.json', 'model.safetensors', 'calibration.npz',
                                                     'train_config.json', 'evaluation.json'}
    runtime = PolicyRuntime(installed)
    assert runtime.config.use_proprio and runtime.config.decoder.tokenizer == 'minilm'
    assert runtime.config.exit_layers == tuple(range(1, 13))
    assert runtime.calibration_source.endswith('calibration.npz')
    assert json.loads((installed / 'evaluation.json').read_text())['num_chains'] == 1
