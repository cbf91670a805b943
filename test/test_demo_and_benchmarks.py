"""The trade-off benchmark and both demo modes run end to end in a reduced mode."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tradeoff_benchmark_reduced(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'tradeoff.py'), '--reduced', '--output', str(tmp_path)],
                   check=True, cwd=ROOT, timeout=900, capture_output=True)
    results = json.loads((tmp_path / 'results.json').read_text())
    rows = {row['name']: row for row in results['rows']}
    assert set(rows) >= {'static exit 1', 'static exit 6'} and sum(r['kind'] == 'deer' for r in rows.values()) == 2
    assert rows['static exit 1']['avg_exit'] == 1.0 and rows['static exit 6']['avg_exit'] == 6.0
    assert rows['static exit 1']['avg_llm_gflops'] < rows['static exit 6']['avg_llm_gflops']
    for row in rows.values():
        assert abs(sum(row['exit_histogram']) - 1.0) < 1e-9
    assert (tmp_path / 'tradeoff.png').stat().st_size > 0
    assert 'headlines' in (tmp_path / 'table.md').read_text()


def test_demo_synthetic_mode_reports_exits_and_cost() -> None:
    done = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', '--source', 'tiny', '--synthetic', '--steps', '20',
                           '--avg-gflops', '0.2'], check=True, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert 'exit histogram' in done.stdout and 'LLM GFLOPs   avg' in done.stdout and 'p99' in done.stdout


def test_demo_runs_a_short_chain_through_ros(ros_domain_id) -> None:
    done = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', '--source', 'tiny', '--chains', '1', '--max-steps', '4',
                           '--timeout', '300'], check=True, cwd=ROOT, timeout=400, capture_output=True, text=True)
    assert 'chains: 1   average successful length: 0.000' in done.stdout
    assert 'exit histogram: exit 6: 100.0%' in done.stdout and 'LLM GFLOPs   avg 0.3272' in done.stdout
