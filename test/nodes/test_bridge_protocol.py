"""calvin_bridge's ``protocol``: the chains it evaluates are the ones ``deer-ros evaluate --protocol`` takes."""
from __future__ import annotations

import pytest

from deer_ros.benchmark import calvin_sequences
from deer_ros.benchmark.backends import build_sim_factory
from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, disjoint_subsets, generate_chains
from deer_ros.benchmark.protocols import CALVIN, DEER_ROS, PROTOCOLS
from deer_ros.calvin_layout import EP_LEN
from deer_ros.nodes.calvin_bridge_node import PARAMETERS, evaluation_chains


def _tasks() -> list[str]:
    return list(build_sim_factory('embedded', 'D')[1])


def test_the_protocol_parameter_offers_the_cli_protocols():
    [spec] = [spec for spec in PARAMETERS if spec.name == 'protocol']
    assert set(spec.choices) == set(PROTOCOLS) and spec.default == DEER_ROS.name and spec.read_only


def test_calvin_chains_are_calvins_official_slice():
    tasks = _tasks()
    chains = evaluation_chains(CALVIN, tasks, 'D', 0, EP_LEN, 5, 10)
    assert chains == calvin_sequences.official_chains()[10:15]
    [cli] = disjoint_subsets(CALVIN.chains(tasks, 0), [5], 10)  # what deer-ros evaluate --protocol calvin runs
    assert chains == cli


def test_deer_ros_chains_are_unchanged():
    tasks = _tasks()
    assert evaluation_chains(DEER_ROS, tasks, 'B', 3, 40, 4, 2) == generate_chains(tasks, DEFAULT_NUM_CHAINS, 3)[2:6]


@pytest.mark.parametrize('scene, seed, max_steps', [('A', 0, EP_LEN), ('D', 1, EP_LEN), ('D', 0, 40)])
def test_calvin_refuses_settings_it_does_not_allow(scene, seed, max_steps):
    with pytest.raises(ValueError, match='CALVIN'):
        evaluation_chains(CALVIN, _tasks(), scene, seed, max_steps, 1, 0)
