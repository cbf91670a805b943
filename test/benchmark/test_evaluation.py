"""The chain protocol on the embedded simulator (physics only: the expert needs no images)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deer_ros.benchmark.chains import Chain, SymbolicState, initial_state_seed, replay
from deer_ros.benchmark.evaluation import ChainResult, EmbeddedSim, EvaluationReport, evaluate, run_chain
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
