"""The trade-off benchmark and both demo modes run end to end in a reduced mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

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


@pytest.mark.parametrize('source', [['--source', 'tiny'], []], ids=['random-init tiny config', 'shipped policy'])
def test_demo_synthetic_mode_reports_exits_and_cost(source: list[str]) -> None:
    """Also with the shipped policy, which reads the robot state (use_proprio): the synthetic frames carry one."""
    budget = ['--avg-gflops', '0.2'] if source else []
    done = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', *source, '--synthetic', '--steps', '20',
                           *budget], check=True, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert 'exit histogram' in done.stdout and 'LLM GFLOPs   avg' in done.stdout and 'p99' in done.stdout


def test_demo_runs_a_short_chain_through_ros_with_the_shipped_policy(ros_domain_id) -> None:
    """The README's main job as CI can afford it: shipped policy, config/deer.yaml budget, one 4-step chain."""
    done = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', '--chains', '1', '--max-steps', '4',
                           '--timeout', '300'], check=True, cwd=ROOT, timeout=400, capture_output=True, text=True)
    assert 'deer_ros/pretrained/tiny' in done.stdout
    assert 'chains: 1   average successful length: 0.000' in done.stdout  # 4 steps cannot finish a subtask
    assert 'chain 0: 0/5 subtasks, steps [4]' in done.stdout  # read back from the results file
    assert 'exit histogram: exit' in done.stdout and 'LLM GFLOPs   avg' in done.stdout and 'p99' in done.stdout


def test_demo_reports_a_dead_node_with_its_log_and_the_chains_it_kept(tmp_path: Path) -> None:
    """What the demo prints when the bridge dies: why (its exit and last log lines, not only a code) and every
    chain the results file holds, the failed and restarted ones marked."""
    import numpy as np

    from deer_ros.benchmark.chains import Chain, SymbolicState
    from deer_ros.benchmark.evaluation import ChainResult
    from deer_ros.benchmark.results_file import ResultsFile
    from deer_ros.cli.demo_ros import NodeRun, format_chains
    from deer_ros.nodes.bridge import EvaluationTally

    lines = [f'line {i}' for i in range(30)] + ['[FATAL] [calvin_bridge]: cannot start: no simulator']
    node = NodeRun('bridge', [sys.executable, '-c', f'print({chr(10).join(lines)!r}); raise SystemExit(3)'],
                   dict(os.environ), tmp_path).start()
    node.process.wait(60)
    death = node.death()
    assert death.startswith('the bridge node exited with code 3') and str(node.log_path) in death
    assert death.endswith('cannot start: no simulator') and 'line 15' not in death and 'line 16' in death

    chain = Chain(SymbolicState(0, 1, 'right', 'closed', 'table', 'slider_left', 'table'),
                  ('turn_on_led', 'open_drawer', 'move_slider_left', 'turn_off_lightbulb', 'push_red_block_left'))
    tally = EvaluationTally({})
    tally.add(ChainResult(0, chain, 1, [30, 360]), np.zeros((0, 4)), 1)
    tally.add(ChainResult.failed(1, chain, 'PolicyTimeout: no action'), np.zeros((0, 4)))
    results = ResultsFile.open(tmp_path / 'chains.jsonl', {'scene': 'D'})
    for index in (0, 1):
        results.append(tally.record(index))
    assert format_chains(results.path) == [
        '  chain 0: 1/5 subtasks, steps [30, 360] (started again 1 times: the policy was lost)',
        '  chain 1: failed: PolicyTimeout: no action']
    refused = subprocess.run([sys.executable, '-m', 'deer_ros.cli', 'demo', '--resume'], cwd=ROOT, timeout=120,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and 'give the --results file to continue' in refused.stderr


FAKE_PYTHON = """#!{python}
# Stands in for the venv's python under scripts/reproduce_default_policy.sh: records each `-m deer_ros.cli ...`
# and leaves the files the real subcommand would, so the script runs through in a second.
import json, pathlib, sys
argv = sys.argv[1:]
with open({log!r}, 'a') as log:
    log.write(json.dumps(argv) + '\\n')
command, options = argv[2], argv[3:]
output = pathlib.Path(options[options.index('--output') + 1])
if command == 'collect':
    output.mkdir(parents=True)
    print(json.dumps({{'episodes': 12}}))
elif command == 'train':
    (output / 'policy').mkdir(parents=True, exist_ok=True)
    for name in ('config.json', 'model.safetensors', 'calibration.npz'):
        (output / 'policy' / name).write_text('{{}}')
    (output / 'train_config.json').write_text('{{}}')
elif command == 'evaluate':
    output.write_text(json.dumps({{'num_chains': 1}}))
"""


def run_script_with_fake_python(tmp_path: Path, script: str, knobs: dict[str, str]) -> tuple[list, Path]:
    """Run ``scripts/<script>`` with FAKE_PYTHON: every stage's ``deer-ros`` arguments parsed by the real
    subcommand parser (an option the CLI does not have fails the test), in order, and the install directory."""
    import argparse
    import importlib

    from deer_ros.cli import SUBCOMMANDS

    log = tmp_path / 'commands.jsonl'
    fake = tmp_path / 'python'
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    installed = tmp_path / 'installed'
    env = {**os.environ, 'PYTHON': str(fake), 'WORK': str(tmp_path / 'work'), 'INSTALL_DIR': str(installed), **knobs}
    subprocess.run(['bash', str(ROOT / 'scripts' / script)], env=env, check=True, cwd=ROOT, timeout=60,
                   capture_output=True)
    stages = []
    for line in log.read_text().splitlines():
        argv = json.loads(line)
        assert argv[:2] == ['-m', 'deer_ros.cli']
        parser = argparse.ArgumentParser()
        importlib.import_module(SUBCOMMANDS[argv[2]][0]).add_arguments(parser)
        stages.append((argv[2], parser.parse_args(argv[3:])))
    return stages, installed


INSTALLED_FILES = {'config.json', 'model.safetensors', 'calibration.npz', 'train_config.json', 'evaluation.json'}


def test_reproduce_script_stages_are_valid_commands(tmp_path: Path) -> None:
    """Reduced form of the smoke run (the full one, minutes long: benchmarks/reproduce_smoke.py): every stage of
    scripts/reproduce_default_policy.sh is a command line the real `deer-ros` parser accepts, each stage starts
    from the one before it, the knobs reach their options, and the install step copies the five files."""
    stages, installed = run_script_with_fake_python(tmp_path, 'reproduce_default_policy.sh', {
        'DEMOS': '12', 'JOINT_STEPS': '2', 'HEAD_STEPS': '1', 'CHAINS': '3'})
    assert [name for name, _ in stages] == ['collect', 'train', 'train', 'train', 'train', 'evaluate']
    collect, *trains, evaluate = [args for _, args in stages]
    assert collect.episodes == 12 and trains[0].model == 'tiny'
    assert (trains[0].joint_steps, trains[0].head_steps) == (2, 1)
    for before, after in zip(trains, trains[1:]):
        assert after.model == f'{before.output}/policy' and after.data == [str(collect.output)]
    assert trains[1].add_proprio and trains[2].sentence_encoder and trains[3].exit_interval == 1
    assert evaluate.policy_kwargs == {'source': f'{trains[3].output}/policy'} and evaluate.num_chains == 3
    assert {p.name for p in installed.iterdir()} == INSTALLED_FILES


def test_efficientnet_script_stages_are_valid_commands(tmp_path: Path) -> None:
    """scripts/train_efficientnet_policy.sh (issue 20's frozen-trunk run): every stage is a command line the real
    `deer-ros` parser accepts, the second training starts from the first's policy on the same data, the knobs reach
    their options, and the install step copies the five files."""
    stages, installed = run_script_with_fake_python(tmp_path, 'train_efficientnet_policy.sh', {
        'DEMOS_A': '12', 'DEMOS_B': '11', 'EXTRA_DEMOS': '6', 'JOINT_STEPS': '2', 'HEAD_STEPS': '1', 'CHAINS': '3'})
    assert sorted(name for name, _ in stages) == ['collect', 'collect', 'collect', 'evaluate', 'train', 'train']
    parsed = {Path(args.output).name: args for _, args in stages}
    assert (parsed['demos_a'].episodes, parsed['demos_b'].episodes, parsed['demos_extra'].episodes) == (12, 11, 6)
    assert parsed['demos_extra'].workers == 2 and parsed['demos_extra'].tasks
    first, second = parsed['train'], parsed['train2']
    assert first.model == 'tiny-efficientnet' and (first.joint_steps, first.head_steps) == (2, 1)
    assert first.data[:2] == [str(parsed['demos_a'].output), str(parsed['demos_b'].output)]
    assert first.data[2].startswith(str(parsed['demos_extra'].output))
    assert second.model == f'{first.output}/policy' and second.data == first.data
    evaluate = parsed['evaluation.json']
    assert evaluate.policy_kwargs == {'source': f'{second.output}/policy'} and evaluate.num_chains == 3
    assert {p.name for p in installed.iterdir()} == INSTALLED_FILES
