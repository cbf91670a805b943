"""Declared parameters over real rclpy: whole numbers for floats, type errors named, limits and choices enforced."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from policy_driver import FAST_POLICY
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from ros_helpers import BackgroundSpinner, wait_for

from deer_ros.nodes.parameters import ParamSpec, check_values, declare

SPECS = (
    ParamSpec('gain', 1.5, 'A float with limits.', limits=(0.0, 10.0)),
    ParamSpec('rate', 30.0, 'A read-only float.', read_only=True, limits=(0.1, 100.0)),
    ParamSpec('count', 3, 'An integer with limits.', limits=(1, 5)),
    ParamSpec('mode', 'a', 'A string enum.', choices=('a', 'b')),
    ParamSpec('enabled', True, 'A boolean.'),
    ParamSpec('pose', [0.0, 0.0, 0.5], 'A list of floats.'),
)


class Declared(Node):
    """A node wired like deer_policy and calvin_bridge: ``declare`` then ``check_values`` on every set."""

    def __init__(self, context: Any, overrides: list[Parameter] | None = None) -> None:
        super().__init__('declared', context=context, parameter_overrides=overrides or [])
        self.values = declare(self, SPECS)
        self.add_on_set_parameters_callback(self._validate)

    def _validate(self, parameters: list[Parameter]) -> SetParametersResult:
        problem = check_values(SPECS, parameters)
        return SetParametersResult(successful=problem is None, reason=problem or '')


@pytest.fixture
def declared(rclpy_context: Any) -> Iterator[Declared]:
    node = Declared(rclpy_context)
    yield node
    node.destroy_node()


def _set(node: Node, name: str, value: Any) -> SetParametersResult:
    [result] = node.set_parameters([Parameter(name, value=value)])
    return result


def test_a_whole_number_is_a_valid_float_and_is_stored_as_one(declared):
    assert _set(declared, 'gain', 2).successful
    value = declared.get_parameter('gain').value
    assert value == 2.0 and isinstance(value, float)
    assert _set(declared, 'gain', 0).successful and declared.get_parameter('gain').value == 0.0
    assert _set(declared, 'pose', [1, 2, 3]).successful
    assert list(declared.get_parameter('pose').value) == [1.0, 2.0, 3.0]
    assert all(isinstance(v, float) for v in declared.get_parameter('pose').value)
    assert declared.describe_parameter('gain').type == Parameter.Type.DOUBLE.value


def test_limits_still_hold_for_whole_numbers(declared):
    result = _set(declared, 'gain', 11)
    assert not result.successful and 'out of range' in result.reason and 'gain' in result.reason
    assert declared.get_parameter('gain').value == 1.5
    assert not _set(declared, 'count', 6).successful


@pytest.mark.parametrize('name, value, reason', [
    ('gain', 'abc', "gain must be a number (double), got string 'abc'"),
    ('gain', True, 'gain must be a number (double), got boolean True'),
    ('count', 2.5, 'count must be a whole number (integer), got double 2.5'),
    ('enabled', 1, 'enabled must be true or false (boolean), got integer 1'),
    ('mode', 3, 'mode must be a string, got integer 3'),
    ('mode', 'c', "mode must be one of a, b; got 'c'"),
    ('pose', 'x', "pose must be a list of numbers (double array), got string 'x'"),
    ('gain', 'x' * 1_000_000, "gain must be a number (double), got string 'xxxxxxx"),
])
def test_a_wrong_value_is_rejected_with_type_names_and_nothing_changes(declared, name, value, reason):
    before = declared.get_parameter(name).value
    result = _set(declared, name, value)
    assert not result.successful
    assert result.reason.startswith(reason) and len(result.reason) < 200, result.reason
    assert declared.get_parameter(name).value == before


def test_a_parameter_cannot_be_unset(declared):
    result = _set(declared, 'gain', None)
    assert not result.successful and 'gain cannot be unset' in result.reason
    assert declared.has_parameter('gain')


def test_read_only_parameters_stay_read_only(declared):
    result = _set(declared, 'rate', 5)
    assert not result.successful and 'read-only' in result.reason


def test_through_the_parameter_service_as_ros2_param_set(rclpy_context):
    node = Declared(rclpy_context)
    caller = Node('caller', context=rclpy_context)
    client = AsyncParameterClient(caller, 'declared')
    try:
        with BackgroundSpinner(node, caller, context=rclpy_context):
            assert client.wait_for_services(15.0)

            def call(**values: Any) -> list[SetParametersResult]:
                future = client.set_parameters([Parameter(n, value=v) for n, v in values.items()])
                assert wait_for(future.done, 15.0)
                return future.result().results

            assert call(gain=0)[0].successful  # `ros2 param set /declared gain 0`
            assert node.get_parameter('gain').value == 0.0
            assert isinstance(node.get_parameter('gain').value, float)
            [rejected] = call(gain='abc')
            assert not rejected.successful
            assert rejected.reason == "gain must be a number (double), got string 'abc'"
            [out_of_range] = call(gain=20)
            assert not out_of_range.successful and 'out of range' in out_of_range.reason
    finally:
        caller.destroy_node()
        node.destroy_node()


def test_start_up_values_are_converted_and_checked(rclpy_context):
    node = Declared(rclpy_context, [Parameter('gain', value=4), Parameter('rate', value=20),
                                    Parameter('pose', value=[0, 1, 2])])
    try:
        assert node.values['gain'] == 4.0 and isinstance(node.values['gain'], float)
        assert isinstance(node.get_parameter('rate').value, float) and node.values['rate'] == 20.0
        assert node.values['pose'] == [0.0, 1.0, 2.0]
        assert node.describe_parameter('rate').read_only  # still read-only after the conversion
        assert not _set(node, 'rate', 25.0).successful
    finally:
        node.destroy_node()


@pytest.mark.parametrize('override, reason', [
    (Parameter('gain', value='abc'), "gain must be a number (double), got string 'abc'"),
    (Parameter('gain', value=20), 'gain must be in [0.0, 10.0]; got 20.0'),
    (Parameter('count', value=1.0), 'count must be a whole number (integer), got double 1.0'),
    (Parameter('mode', value='z'), "mode must be one of a, b; got 'z'"),
])
def test_a_wrong_start_up_value_stops_the_node_with_the_reason(rclpy_context, override, reason):
    with pytest.raises(ValueError, match=f'^{re.escape(reason)}$'):
        Declared(rclpy_context, [override])


def test_deer_policy_takes_whole_numbers_for_its_budgets(start_node, driver):
    """`-p budget.avg_gflops:=0` at start-up and `ros2 param set /deer_policy budget.avg_gflops 0` at run time."""
    node = start_node('deer_ros.nodes.policy_node', params={
        **FAST_POLICY, 'checkpoint': '', 'model_config': 'tiny', 'budget.avg_gflops': 0, 'budget.peak_gflops': 0,
        'control_rate_hz': 20})
    assert node.wait_for_log('ready in', 120.0), node.log
    client = AsyncParameterClient(driver, 'deer_policy')
    with BackgroundSpinner(driver, context=driver.context):
        assert client.wait_for_services(15.0)
        future = client.set_parameters([Parameter('budget.avg_gflops', value=0),
                                        Parameter('budget.max_memory_mb', value=100000),
                                        Parameter('budget.avg_gflops', value='none')])
        assert wait_for(future.done, 15.0)
        zero, memory, text = future.result().results
        assert zero.successful and memory.successful, (zero.reason, memory.reason)
        assert not text.successful
        assert text.reason == "budget.avg_gflops must be a number (double), got string 'none'"
        future = client.get_parameters(['budget.avg_gflops', 'budget.max_memory_mb', 'control_rate_hz'])
        assert wait_for(future.done, 15.0)
        assert [v.double_value for v in future.result().values] == [0.0, 100000.0, 20.0]
        assert all(v.type == Parameter.Type.DOUBLE.value for v in future.result().values)
    assert node.running()
