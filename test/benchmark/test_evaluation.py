"""The chain protocol on the embedded simulator (physics only: the expert needs no images)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from deer_ros.benchmark.chains import Chain, SymbolicState, initial_state_seed, replay
from deer_ros.benchmark.evaluation import (
    ChainResult,
    EmbeddedSim,
    EvaluationReport,
    evaluate,
    recorded_results,
    run_chain,
    run_settings,
)
from deer_ros.benchmark.language import evaluation_instruction
from deer_ros.benchmark.results_file import ResultsFile
from deer_ros.benchmark.tasks import TaskOracle
from deer_ros.expert.scripted_expert import ExpertPolicy, ScriptedExpert
from deer_ros.sim.env import PlayTableEnv
from deer_ros.sim.initial_state import initial_state

SIM = EmbeddedSim('D', cameras=False)
# Hand-picked so that, within the short step budgets below, some subtasks succeed and one fails.
ARTICULATION = Chain(SymbolicState(0, 1, 'right', 'closed', 'table', 'slider_left', 'table'),
                     ('turn_on_led', 'open_drawer', 'move_slider_left', 'turn_off_lightbulb', 'push_red_block_left'))
PICK_AND_PLACE = Chain(SymbolicState(1, 0, 'left', 'open', 'slider_right', 'table', 'slider_left'),
                       ('lift_blue_block_table', 'place_in_drawer', 'close_drawer', 'turn_on_lightbulb', 'turn_off_led'))


class HoldStill:
    """A do-nothing policy that reports per-step stats like the DeeR policy does."""

    def __init__(self, env: object) -> None:
        self.calls = 0

    def reset(self) -> None:
        pass

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        self.calls += 1
        return np.array([0, 0, 0, 0, 0, 0, 1.0])

    def step_stats(self) -> dict[str, float]:
        """``gflops`` only on odd steps, as a model reports cost only on the steps it ran."""
        return {'exit': float(self.calls % 2), **({'gflops': 2.0} if self.calls % 2 else {})}


class CountingExpert(ExpertPolicy):
    """The expert, reporting a stat whose sums are not round in binary: a resumed report must average them alike."""

    def __init__(self, env: object) -> None:
        super().__init__(env)
        self.calls = 0

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        self.calls += 1
        return super().step(obs, instruction)

    def step_stats(self) -> dict[str, float]:
        return {'gflops': 0.1 * (self.calls % 3)}


FAULTY_INSTRUCTION = evaluation_instruction(PICK_AND_PLACE.tasks[0])


class RaisesOnPickAndPlace(ExpertPolicy):
    """The expert with a bug that only PICK_AND_PLACE's first subtask reaches."""

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        if instruction == FAULTY_INSTRUCTION:
            raise RuntimeError('policy bug')
        return super().step(obs, instruction)


class DiesOnPickAndPlace(ExpertPolicy):
    """The expert whose process dies (as on a segfault or the OOM killer) in PICK_AND_PLACE's first subtask."""

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        if instruction == FAULTY_INSTRUCTION:
            os._exit(3)
        return super().step(obs, instruction)


class SecondBuildFails:
    """A policy factory whose second call raises (the rebuild after a failed chain), then builds ``policy`` again."""

    def __init__(self, policy: type) -> None:
        self.policy, self.calls = policy, 0

    def __call__(self, env: object) -> ExpertPolicy:
        self.calls += 1
        if self.calls == 2:
            raise FileNotFoundError('checkpoint gone for a moment')
        return self.policy(env)


def no_policy(env: object) -> ExpertPolicy:
    raise FileNotFoundError('no checkpoint')


def _direct_expert_run(chain: Chain, max_steps: int) -> tuple[int, list[int]]:
    """Reference: the expert told each task by name, CALVIN's loop written out independently."""
    env = PlayTableEnv('D', cameras=False)
    oracle, expert = TaskOracle(), ScriptedExpert(env)
    robot_obs, scene_obs = initial_state(chain.initial.conditions(),
                                         np.random.default_rng(initial_state_seed(chain.initial)), 'D')
    obs = env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    successes, steps = 0, []
    for task in chain.tasks:
        expert.reset(task)
        start, done, used = env.get_info(), False, 0
        while not done and used < max_steps:
            obs, _, _, info = env.step(expert.act(obs))
            used += 1
            done = bool(oracle.get_task_info_for_set(start, info, {task}))
        steps.append(used)
        if not done:
            break
        successes += 1
    env.close()
    return successes, steps


def test_hand_picked_chains_are_valid() -> None:
    replay(ARTICULATION)
    replay(PICK_AND_PLACE)


def test_expert_as_policy_scores_like_the_expert_itself() -> None:
    max_steps = 100
    report = evaluate([ARTICULATION], SIM, ExpertPolicy, max_steps=max_steps, progress=False)
    [result] = report.results
    successes, steps = _direct_expert_run(ARTICULATION, max_steps)
    assert (result.successes, result.steps) == (successes, steps)
    assert 1 <= successes < 5  # the budget makes this chain exercise both success and the stop at failure


def test_results_do_not_depend_on_worker_count() -> None:
    chains = [PICK_AND_PLACE, ARTICULATION]
    single = evaluate(chains, SIM, ExpertPolicy, workers=1, max_steps=60, progress=False)
    double = evaluate(chains, SIM, ExpertPolicy, workers=2, max_steps=60, progress=False)
    assert json.dumps(single.to_json()) == json.dumps(double.to_json())
    assert [result.index for result in double.results] == [0, 1]
    assert single.average_length > 0


def test_failure_ends_the_chain_and_each_stat_is_averaged_over_the_steps_that_reported_it() -> None:
    sim = SIM()
    policy = HoldStill(sim.env)
    result = run_chain(sim, policy, ARTICULATION, index=3, max_steps=5)
    sim.env.close()
    assert (result.index, result.successes, result.steps) == (3, 0, [5])
    report = EvaluationReport([result])
    # exit over all 5 steps; gflops over the 3 steps that reported it, not diluted to 6/5
    assert report.step_stats() == {'exit': pytest.approx(3 / 5), 'gflops': pytest.approx(2.0)}
    assert result.to_json()['step_stats'] == report.step_stats()
    assert report.task_counts() == {'turn_on_led': {'attempted': 1, 'succeeded': 0}}


def test_report_metrics_follow_calvin_definitions() -> None:
    chain = ARTICULATION
    results = [ChainResult(i, chain, successes, [10] * min(successes + 1, 5))
               for i, successes in enumerate([0, 5, 2, 3])]
    report = EvaluationReport(results)
    assert report.average_length == pytest.approx(2.5)
    assert report.success_rates == pytest.approx([0.75, 0.75, 0.5, 0.25, 0.25])
    counts = report.task_counts()
    assert counts['turn_on_led'] == {'attempted': 4, 'succeeded': 3}
    assert counts['push_red_block_left'] == {'attempted': 1, 'succeeded': 1}
    table = report.format_table()
    assert 'average successful length: 2.500' in table and '5/5:  25.0%' in table
    assert json.loads(json.dumps(report.to_json()))['success_rates']['3'] == 0.5


def test_evaluate_cli_writes_a_report(tmp_path) -> None:
    from deer_ros.cli import main
    output = tmp_path / 'report.json'
    assert main(['evaluate', '--no-cameras', '--num-chains', '1', '--offset', '5', '--max-steps', '3',
                 '--no-progress', '--output', str(output)]) == 0
    report = json.loads(output.read_text())
    assert report['num_chains'] == 1 and report['settings']['offset'] == 5
    assert report['settings']['policy'] == 'expert' and report['settings']['policy_kwargs'] == {}
    assert report['chains'][0]['steps'] == [3] and len(report['settings']['chains_sha256']) == 64


def _settings(chains: list[Chain], max_steps: int) -> dict:
    return {'policy': 'test', **run_settings(chains, max_steps)}


def test_a_resumed_evaluation_reports_like_an_uninterrupted_one(tmp_path: Path, caplog) -> None:
    chains, max_steps = [PICK_AND_PLACE, ARTICULATION, ARTICULATION, PICK_AND_PLACE], 40
    whole = ResultsFile.open(tmp_path / 'whole.jsonl', _settings(chains, max_steps))
    uninterrupted = evaluate(chains, SIM, CountingExpert, workers=2, max_steps=max_steps, progress=False,
                             results=whole)
    header, *lines = whole.path.read_text().splitlines(keepends=True)
    assert sorted(json.loads(line)['index'] for line in lines) == [0, 1, 2, 3]  # in the order chains ended
    # Killed after two chains, while writing the third.
    partial = tmp_path / 'partial.jsonl'
    partial.write_text(header + lines[0] + lines[1] + lines[2][:len(lines[2]) // 2])
    with caplog.at_level(logging.WARNING):
        resumed_file = ResultsFile.open(partial, _settings(chains, max_steps), resume=True)
    assert 'cut short' in caplog.text and len(resumed_file.records) == 2
    resumed = evaluate(chains, SIM, CountingExpert, max_steps=max_steps, progress=False, results=resumed_file)
    assert json.dumps(resumed.to_json()) == json.dumps(uninterrupted.to_json())
    assert [result.index for result in resumed.results] == [0, 1, 2, 3]
    assert resumed.step_stats()['gflops'] > 0 and resumed.average_length > 0
    records = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert sorted(record['index'] for record in records) == [0, 1, 2, 3]  # only the missing two ran
    with pytest.raises(ValueError, match='max_steps=40 there, 30 now'):
        evaluate(chains, SIM, CountingExpert, max_steps=30, progress=False, results=resumed_file)


def test_records_round_trip_and_may_be_numbered_from_an_offset_as_the_bridge_numbers_chains(tmp_path: Path) -> None:
    chains = [ARTICULATION, PICK_AND_PLACE]
    finished = ChainResult(224, ARTICULATION, 2, [3, 4, 5], {'gflops': 0.30000000000000004}, {'gflops': 3})
    results = ResultsFile.open(tmp_path / 'bridge.jsonl', _settings(chains, 10))
    results.append(finished.to_record())
    results.append(ChainResult.failed(225, PICK_AND_PLACE, 'PolicyTimeout: silent').to_record())
    reopened = ResultsFile.open(results.path, results.settings, resume=True)
    assert recorded_results(reopened, chains, 10, first_index=224) == {224: finished}  # failed ones run again
    with pytest.raises(ValueError, match='the record of chain 224 is not a chain of this evaluation'):
        recorded_results(reopened, chains, 10)


def test_a_failing_chain_is_recorded_with_its_reason_and_the_others_run(tmp_path: Path) -> None:
    chains, max_steps = [ARTICULATION, PICK_AND_PLACE, ARTICULATION, ARTICULATION], 40
    results = ResultsFile.open(tmp_path / 'run.jsonl', _settings(chains, max_steps))
    report = evaluate(chains, SIM, SecondBuildFails(RaisesOnPickAndPlace), max_steps=max_steps, progress=False,
                      results=results)
    ok, bug, rebuild, after = report.results
    assert bug.error == 'RuntimeError: policy bug' and (bug.successes, bug.steps) == (0, [])
    assert rebuild.error == 'FileNotFoundError: checkpoint gone for a moment'
    assert ok.error is None and after.error is None and (after.successes, after.steps) == (ok.successes, ok.steps)
    # The rule: failed chains count as 0 subtasks in every average and are listed apart.
    assert report.average_length == pytest.approx(2 * ok.successes / 4)
    assert [result.index for result in report.failed] == [1, 2]
    summary = report.to_json()
    assert summary['num_chains'] == 4 and summary['num_failed'] == 2
    assert summary['chains'][1]['error'] == 'RuntimeError: policy bug'
    assert sum(counts['attempted'] for counts in report.task_counts().values()) == 2 * len(ok.steps)
    table = report.format_table()
    assert 'failed chains: 2 (counted as 0 subtasks)' in table and 'chain 1: RuntimeError: policy bug' in table
    # Resuming re-runs only the failed chains.
    resumed = evaluate(chains, SIM, ExpertPolicy, max_steps=max_steps, progress=False,
                       results=ResultsFile.open(results.path, results.settings, resume=True))
    assert not resumed.failed and resumed.results[2].steps == ok.steps
    assert [json.loads(line)['index'] for line in results.path.read_text().splitlines()[1:]] == [0, 1, 2, 3, 1, 2]


@pytest.mark.parametrize('workers', [1, 2])
def test_a_policy_that_cannot_be_built_at_all_stops_the_evaluation_with_its_error(workers: int) -> None:
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        evaluate([ARTICULATION, PICK_AND_PLACE], SIM, no_policy, workers=workers, max_steps=5, progress=False)


def test_a_worker_that_dies_fails_only_its_chain() -> None:
    report = evaluate([ARTICULATION, PICK_AND_PLACE, ARTICULATION], SIM, DiesOnPickAndPlace, workers=2,
                      max_steps=40, progress=False)
    first, died, last = report.results
    assert died.error == 'WorkerDied: the worker process running this chain died (exit code 3)'
    assert first.error is None and (first.successes, first.steps) == (last.successes, last.steps)


def test_an_interrupt_stops_the_evaluation_and_the_file_keeps_the_finished_chains(tmp_path: Path) -> None:
    class Interrupts(ExpertPolicy):
        def step(self, obs: dict, instruction: str) -> np.ndarray:
            if instruction == FAULTY_INSTRUCTION:
                raise KeyboardInterrupt
            return super().step(obs, instruction)

    chains = [ARTICULATION, PICK_AND_PLACE, ARTICULATION]
    results = ResultsFile.open(tmp_path / 'run.jsonl', _settings(chains, 20))
    with pytest.raises(KeyboardInterrupt):
        evaluate(chains, SIM, Interrupts, max_steps=20, progress=False, results=results)
    assert list(ResultsFile.open(results.path, results.settings, resume=True).records) == [0]
