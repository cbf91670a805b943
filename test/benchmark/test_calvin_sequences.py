"""CALVIN's official evaluation list, regenerated bit for bit, and the calvin protocol built on it.

The reference facts are published ones: DeeR-VLA's ``eval_sequences.json`` (CALVIN's ``get_sequences(1000)``
dumped; its first and last entries below, its sha256 once loaded = :data:`SEQUENCES_SHA256`), CALVIN's
``new_playtable_validation.yaml`` and pyhash 0.9.3's own FNV test vectors.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from deer_ros.benchmark import calvin_sequences as cs
from deer_ros.benchmark.chains import Chain, SymbolicState, chains_digest, fnv1_32
from deer_ros.benchmark.evaluation import EmbeddedSim, run_chain, run_settings
from deer_ros.benchmark.language import CALVIN_INSTRUCTIONS, task_for_instruction
from deer_ros.benchmark.protocols import CALVIN, DEER_ROS, PROTOCOLS
from deer_ros.benchmark.tasks import SUPPORTED_TASKS
from deer_ros.calvin_layout import EP_LEN
from deer_ros.expert.scripted_expert import ExpertPolicy

PUBLISHED = {  # index in the list: (start state, tasks), as eval_sequences.json holds them
    0: ({'led': 1, 'lightbulb': 1, 'slider': 'left', 'drawer': 'open', 'red_block': 'slider_left',
         'blue_block': 'table', 'pink_block': 'slider_right', 'grasped': 0},
        ('rotate_blue_block_right', 'move_slider_right', 'lift_red_block_slider', 'place_in_slider',
         'turn_off_lightbulb')),
    1: ({'led': 1, 'lightbulb': 1, 'slider': 'right', 'drawer': 'open', 'red_block': 'slider_right',
         'blue_block': 'table', 'pink_block': 'slider_left', 'grasped': 0},
        ('turn_off_led', 'push_into_drawer', 'lift_blue_block_drawer', 'place_in_slider', 'close_drawer')),
    2: ({'led': 0, 'lightbulb': 1, 'slider': 'right', 'drawer': 'closed', 'red_block': 'table',
         'blue_block': 'slider_right', 'pink_block': 'slider_left', 'grasped': 0},
        ('lift_pink_block_slider', 'place_in_slider', 'open_drawer', 'rotate_red_block_right', 'lift_red_block_table')),
    999: ({'led': 1, 'lightbulb': 0, 'slider': 'left', 'drawer': 'closed', 'red_block': 'slider_right',
           'blue_block': 'slider_left', 'pink_block': 'table', 'grasped': 0},
          ('move_slider_right', 'turn_on_lightbulb', 'push_pink_block_left', 'open_drawer', 'push_into_drawer')),
}


@pytest.fixture(scope='module')
def sequences() -> list:
    return cs.get_sequences()  # ~15 s, once


def test_the_list_is_calvins(sequences: list) -> None:
    assert len(sequences) == cs.NUM_SEQUENCES == 1000
    assert cs.sequences_digest(sequences) == cs.SEQUENCES_SHA256
    for index, entry in PUBLISHED.items():
        assert sequences[index] == entry
    assert all(cs.is_valid_sequence(state, tasks) for state, tasks in sequences)
    per_state = Counter(tuple(state.items()) for state, _ in sequences)
    assert sorted(per_state.values()) == [5] * 152 + [6] * 40  # 1000 = 192 * 5 + 40
    slots = Counter(task for _, tasks in sequences for task in tasks)
    assert len(slots) == 34 and slots['place_in_slider'] == 398 and slots['lift_pink_block_drawer'] == 17
    # as the evaluator's chains (and their sha256 in results files): all 1000, and DeeR's first 224
    chains = cs.official_chains()
    assert [(chain.initial.conditions(), chain.tasks) for chain in chains] == sequences
    assert chains_digest(chains) == '6e88332ee20b08e1c42fd758a73a69a6ceb000394b8ac151dc54b015700d27b2'
    assert chains_digest(chains[:224]) == '4e18a1802c2c1c36360cb495ac6a344ae92190518f3e8d5bbf6d83bf0257a4e2'


def test_draws_are_those_of_calvins_numpy_calls() -> None:
    """CALVIN draws with ``np.random.choice(tasks, 5, replace=False)`` after ``np.random.seed(i)`` and shuffles
    the finished list after ``np.random.seed(0)``: the faster calls used here consume the stream identically."""
    states = cs.initial_states()
    for index in (0, 191):
        rng, expected = np.random.RandomState(index), []
        while len(expected) < 2:
            draw = tuple(rng.choice(list(cs.TASK_NAMES), size=5, replace=False))
            if cs.is_valid_sequence(states[index], draw):
                expected.append(draw)
        assert cs._draw_sequences(states[index], 2, index) == expected
    shuffled = list(range(1000))
    np.random.RandomState(0).shuffle(shuffled)
    assert shuffled == np.random.RandomState(0).permutation(1000).tolist()


def test_calvins_symbolic_model() -> None:
    assert len(cs.TASK_NAMES) == 34 and set(cs.TASK_NAMES) == set(SUPPORTED_TASKS) == set(CALVIN_INSTRUCTIONS)
    assert cs.TASK_NAMES[:3] == ('rotate_red_block_right', 'rotate_red_block_left', 'rotate_blue_block_right')
    assert cs.TASK_NAMES[12:16] == ('move_slider_left', 'move_slider_right', 'open_drawer', 'close_drawer')
    assert cs.TASK_NAMES[-1] == 'push_into_drawer'
    category = {task: cs.TASKS[task].category for task in cs.TASK_NAMES}
    assert category['rotate_red_block_left'] == category['push_pink_block_right']  # CALVIN's category 1
    assert category['turn_on_led'] == category['turn_off_lightbulb']  # category 8
    assert category['place_in_slider'] == category['place_in_drawer']  # category 7
    assert len(set(category.values())) == 11

    states = cs.initial_states()
    assert len(states) == 192
    assert states[0] == {'led': 0, 'lightbulb': 0, 'slider': 'right', 'drawer': 'closed', 'red_block': 'table',
                         'blue_block': 'table', 'pink_block': 'slider_right', 'grasped': 0}
    state = PUBLISHED[0][0]
    held = {**state, 'slider': 'right', 'red_block': 'grasped', 'grasped': 1}
    assert cs.next_states(held, 'place_in_slider') == [{**held, 'red_block': 'slider_right', 'grasped': 0}]
    assert cs.next_states(state, 'lift_red_block_slider') == []  # the door covers the left slot
    assert cs.next_states(state, 'push_into_drawer') == [{**state, 'blue_block': 'drawer'}]
    assert cs.next_states({**held, 'blue_block': 'table'}, 'stack_block') == [
        {**held, 'red_block': 'stacked_top', 'blue_block': 'stacked_bottom', 'grasped': 0}]
    assert not cs.is_valid_sequence(state, ['turn_off_led', 'turn_off_lightbulb'])  # one light task per chain
    assert cs.is_valid_sequence(state, ['turn_off_led', 'move_slider_right', 'lift_red_block_slider'])


def test_start_states_are_calvins() -> None:
    assert fnv1_32(b'test', start=0) == 3698262380  # pyhash 0.9.3 tests: fnv1_32()(b'test')
    assert fnv1_32('test'.encode('utf-16-le'), start=0) == 3910690890  # fnv1_32()(u'test')
    first = SymbolicState.from_conditions(PUBLISHED[0][0])
    assert cs.calvin_seed(first) == 2138410836
    robot_obs, scene_obs = cs.start_state(first)
    np.testing.assert_array_equal(robot_obs, cs.EVAL_ROBOT_OBS)
    np.testing.assert_allclose(scene_obs, [
        0.28, 0.22, 0.0, 0.088, 1.0, 1.0,
        -0.240851662, 0.0924044687, 0.460990009, 0.0, 0.0, 1.88594101,  # red: left cabinet slot
        0.229995412, -0.11999514, 0.45999001, 0.0, 0.0, 1.48814344,  # blue: the table slot the shuffle put second
        0.070341633, 0.0924044687, 0.460990009, 0.0, 0.0, 1.46839869], atol=1e-8)  # pink: right cabinet slot
    two_on_table = SymbolicState.from_conditions({**PUBLISHED[0][0], 'red_block': 'table'})
    _, scene_obs = cs.start_state(two_on_table)
    assert {tuple(scene_obs[6:8]), tuple(scene_obs[12:14])} == {(5.00000896e-02, -1.20000177e-01),
                                                                (2.29995412e-01, -1.19995140e-01)}


def test_calvin_protocol_words_limits_and_setting() -> None:
    assert PROTOCOLS == {'deer_ros': DEER_ROS, 'calvin': CALVIN} and not CALVIN.ready_pose and DEER_ROS.ready_pose
    assert CALVIN.instruction('open_drawer') == 'pull the handle to open the drawer'
    assert CALVIN.instruction('lift_red_block_drawer') == 'Take the red block from the drawer'
    assert all(task_for_instruction(CALVIN.instruction(task)) == task for task in cs.TASK_NAMES)
    chain = Chain(SymbolicState.from_conditions(PUBLISHED[0][0]), PUBLISHED[0][1])
    assert run_settings([chain], EP_LEN, CALVIN)['protocol'] == 'calvin/1'
    assert run_settings([chain], EP_LEN)['protocol'] == 'deer_ros/1'
    CALVIN.check('D', EP_LEN)
    with pytest.raises(ValueError, match='CALVIN evaluates on scene D'):
        CALVIN.check('A', EP_LEN)
    with pytest.raises(ValueError, match='360 steps, not 100'):
        CALVIN.check('D', 100)
    with pytest.raises(ValueError, match='fixed seeds'):
        CALVIN.chains(SUPPORTED_TASKS, seed=1)
    with pytest.raises(ValueError, match=r"does not judge: \['unstack_block'\]"):
        CALVIN.chains([task for task in SUPPORTED_TASKS if task != 'unstack_block'], seed=0)


class RecordingExpert(ExpertPolicy):
    """The scripted expert (it maps CALVIN's wording back to the task), remembering the first scene and each
    instruction it got."""

    def __init__(self, env: object) -> None:
        super().__init__(env)
        self.instructions: list[str] = []
        self.first_scene: np.ndarray | None = None

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        if self.first_scene is None:
            self.first_scene = obs['scene_obs'].copy()
        if not self.instructions or self.instructions[-1] != instruction:
            self.instructions.append(instruction)
        return super().step(obs, instruction)


def test_the_first_official_chain_on_the_embedded_simulator() -> None:
    sim = EmbeddedSim('D', cameras=False)()
    try:
        policy = RecordingExpert(sim.env)
        chain = Chain(SymbolicState.from_conditions(PUBLISHED[0][0]), PUBLISHED[0][1])
        result = run_chain(sim, policy, chain, protocol=CALVIN)
    finally:
        sim.env.close()
    assert result.successes == 5 and all(0 < steps <= EP_LEN for steps in result.steps)
    assert policy.instructions == [CALVIN_INSTRUCTIONS[task] for task in chain.tasks]
    calvin_scene = cs.start_state(chain.initial)[1]  # the blocks started where CALVIN puts them
    np.testing.assert_allclose(policy.first_scene[[6, 7, 11, 12, 13, 17]], calvin_scene[[6, 7, 11, 12, 13, 17]],
                               atol=1e-3)
