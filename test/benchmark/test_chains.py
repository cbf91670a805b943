"""Chain generation: determinism, valid symbolic preconditions, distinct categories, disjoint subsets."""
from __future__ import annotations

from collections import Counter

import pytest

from deer_ros.benchmark.chains import (
    BLOCKS,
    CHAIN_LENGTH,
    TASK_RULES,
    Chain,
    SymbolicState,
    applicable_tasks,
    chains_digest,
    disjoint_subsets,
    fnv1_32,
    generate_chains,
    initial_state_seed,
    initial_states,
    replay,
)
from deer_ros.benchmark.language import (
    TASK_LANGUAGE,
    evaluation_instruction,
    task_for_instruction,
    training_instructions,
)

ALL_TASKS = sorted(TASK_RULES)


@pytest.fixture(scope='module')
def chains() -> list[Chain]:
    return generate_chains(ALL_TASKS, num_chains=400)


def test_initial_states_follow_calvin_constraints() -> None:
    states = initial_states()
    assert len(states) == len(set(states)) == 192
    for state in states:
        places = [state.place(block) for block in BLOCKS]
        assert 1 <= places.count('table') <= 2
        assert places.count('slider_left') <= 1 and places.count('slider_right') <= 1
        assert state.conditions()['grasped'] == 0
        assert SymbolicState.from_conditions(state.conditions()) == state


def test_generation_is_deterministic_and_seeded(chains: list[Chain]) -> None:
    assert chains_digest(generate_chains(ALL_TASKS, num_chains=400)) == chains_digest(chains)
    assert chains_digest(generate_chains(ALL_TASKS, num_chains=400, seed=1)) != chains_digest(chains)


def test_chains_are_executable_with_distinct_categories(chains: list[Chain]) -> None:
    assert len(chains) == 400
    for chain in chains:
        assert len(chain.tasks) == CHAIN_LENGTH
        assert len({TASK_RULES[task].category for task in chain.tasks}) == CHAIN_LENGTH
        states = replay(chain)
        for task, before, after in zip(chain.tasks, states, states[1:]):
            assert applicable_tasks(before, [task]) == [(task, after)]
    per_state = Counter(chain.initial for chain in chains)
    assert max(per_state.values()) == 3  # 400 chains over 192 states: 3 per state, then truncated


def test_chains_use_only_the_given_tasks() -> None:
    tasks = ['open_drawer', 'close_drawer', 'move_slider_left', 'move_slider_right', 'turn_on_led', 'turn_off_led',
             'turn_on_lightbulb', 'turn_off_lightbulb', 'push_red_block_left', 'push_blue_block_left',
             'push_pink_block_left']
    chains = generate_chains(tasks, num_chains=192)
    assert {task for chain in chains for task in chain.tasks} <= set(tasks)
    with pytest.raises(ValueError, match='no symbolic rule'):
        generate_chains(['fly_to_the_moon'])
    with pytest.raises(ValueError, match='only 0 distinct chains'):  # 4 categories cannot fill 5 slots
        generate_chains(tasks[:8], num_chains=10)


def test_disjoint_subsets_share_no_chain(chains: list[Chain]) -> None:
    assert len(set(chains)) == len(chains)
    report, tune = disjoint_subsets(chains, [224, 100])
    assert report == chains[:224] and tune == chains[224:324]
    assert not set(report) & set(tune)
    with pytest.raises(ValueError, match='only 400'):
        disjoint_subsets(chains, [300, 101])


def test_rules_follow_the_scene_semantics() -> None:
    state = SymbolicState(led=0, lightbulb=1, slider='right', drawer='closed',
                          red_block='table', blue_block='slider_left', pink_block='slider_right')
    names = {task for task, _ in applicable_tasks(state, ALL_TASKS)}
    assert 'lift_blue_block_slider' in names  # door on the right uncovers the left slot
    assert 'lift_pink_block_slider' not in names and 'push_into_drawer' not in names
    assert {'turn_on_led', 'turn_off_lightbulb', 'move_slider_left', 'open_drawer'} <= names
    assert not names & {'turn_off_led', 'turn_on_lightbulb', 'close_drawer', 'place_in_slider'}

    holding = TASK_RULES['lift_red_block_table'].apply(state)
    assert holding.conditions()['grasped'] == 1
    # Hand busy: only releasing the block is possible; the open slot is occupied and the drawer is closed.
    assert {task for task, _ in applicable_tasks(holding, ALL_TASKS)} == set()
    freed = TASK_RULES['lift_blue_block_slider'].apply(state)
    assert {task for task, _ in applicable_tasks(freed, ALL_TASKS)} == {'place_in_slider', 'stack_block'}

    two_on_table = SymbolicState(0, 0, 'left', 'open', 'table', 'table', 'slider_left')
    assert len(TASK_RULES['push_into_drawer'].successors(two_on_table)) == 2
    assert TASK_RULES['push_into_drawer'].apply(two_on_table) is None  # ambiguous outcome


def test_chain_json_round_trip(chains: list[Chain]) -> None:
    assert [Chain.from_json(chain.to_json()) for chain in chains[:20]] == chains[:20]


def test_fnv1_32_matches_reference_vectors() -> None:
    assert fnv1_32(b'') == 0x811C9DC5
    assert fnv1_32(b'a') == 0x050C5D7E
    assert fnv1_32(b'foobar') == 0x31F0B262
    seeds = {initial_state_seed(state) for state in initial_states()}
    assert len(seeds) == 192


def test_every_task_has_language_that_maps_back() -> None:
    assert set(TASK_LANGUAGE) == set(TASK_RULES)
    for task in TASK_RULES:
        assert task_for_instruction(evaluation_instruction(task)) == task
        assert len(training_instructions(task)) >= 4
        assert all(task_for_instruction(text.upper()) == task for text in training_instructions(task))
    with pytest.raises(KeyError, match='unknown instruction'):
        task_for_instruction('dance')
