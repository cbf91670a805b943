"""deer_policy under millisecond budgets (issue 21 §1) and with budgets in GMACs (issue 19 §3), over real DDS."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from policy_driver import FAST_POLICY
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from ros_helpers import BackgroundSpinner, wait_for
from small_models import random_frame
from std_srvs.srv import Trigger

from deer_ros.budget.caps import exit_costs
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE
from deer_ros.nodes.policy_node import PolicyNode
from deer_ros.policy.types import Observation

POLICY = 'deer_ros.nodes.policy_node'
STARTUP_S = 120.0  # torch imports on 2 shared cores, plus the latency measurement


def _set(client: AsyncParameterClient, name: str, value: float):
    future = client.set_parameters([Parameter(name, value=value)])
    assert wait_for(future.done, 15.0)
    return future.result().results[0]


def test_peak_ms_measures_the_table_once_rejects_the_impossible_and_recalibrates(start_node, driver, ros_env,
                                                                                  tiny_checkpoint, tmp_path):
    env = {**ros_env, 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    params = {**FAST_POLICY, 'checkpoint': str(tiny_checkpoint), 'budget.peak_ms': 1000.0}
    node = start_node(POLICY, params=params, env=env)
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    assert 'latency table measured into' in node.log and "'peak_ms': '1000'" in node.log
    [cached] = (tmp_path / 'cache' / 'deer_ros' / 'latency').glob('latency-*.json')

    client = AsyncParameterClient(driver, 'deer_policy')
    recalibrate = driver.create_client(Trigger, '/deer_policy/recalibrate_latency')
    with BackgroundSpinner(driver, context=driver.context):
        assert client.wait_for_services(15.0)
        rejected = _set(client, 'budget.peak_ms', 0.001)
        assert not rejected.successful, 'a peak_ms below every exit was accepted'
        match = re.search(r'feasible peak_ms limits are >= ([\d.e+-]+); from ([\d.e+-]+) every exit fits',
                          rejected.reason)
        assert match and 0 < float(match[1]) <= float(match[2]), rejected.reason
        assert _set(client, 'budget.peak_ms', float(match[2]) * 1.01).successful

        assert recalibrate.wait_for_service(15.0)
        future = recalibrate.call_async(Trigger.Request())
        assert wait_for(future.done, 30.0)
        assert future.result().success and 'latency table re-measured' in future.result().message
    assert node.running()
    assert node.stop() == 0

    again = start_node(POLICY, params=params, env=env)
    assert again.wait_for_log('ready in', STARTUP_S), again.log
    assert f'latency table reused from {cached}' in again.log


def test_budgets_in_gmacs_are_converted_and_shown_in_that_unit(rclpy_context, tiny_checkpoint):
    """In process: ``node.set_parameters`` runs what ``ros2 param set`` runs (validate, then apply)."""
    node = PolicyNode(context=rclpy_context, parameter_overrides=[
        Parameter('checkpoint', value=str(tiny_checkpoint)), Parameter('budget.cost_unit', value='gmacs')])
    try:
        llm = exit_costs(node.runtime.cost_table)
        [result] = node.set_parameters([Parameter('budget.peak_gflops', value=float(llm[2]) / 2)])  # GMACs
        assert result.successful and node.runtime.num_exits == 3
        assert node.runtime.thresholds.budget.peak_gflops == float(llm[2])  # solved in GFLOPs
        described = node.runtime.describe()
        assert described['cost_unit'] == 'gmacs'
        assert float(described['peak_gflops']) == pytest.approx(llm[2] / 2, rel=1e-5)
        [rejected] = node.set_parameters([Parameter('budget.peak_gflops', value=float(llm[0]) / 4)])
        assert not rejected.successful and 'budget.cost_unit is gmacs: 1 GMACs = 2 GFLOPs' in rejected.reason
        [no_table] = node.set_parameters([Parameter('budget.peak_ms', value=50.0)])
        assert not no_table.successful and '~/recalibrate_latency' in no_table.reason
    finally:
        node.destroy_node()


def test_steps_slower_than_the_table_are_re_measured_off_the_control_loop(rclpy_context, tiny_checkpoint, tmp_path,
                                                                         monkeypatch):
    """In process: a table 10x too fast (as if the machine had slowed down) drifts and is measured again."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    node = PolicyNode(context=rclpy_context, parameter_overrides=[
        Parameter('checkpoint', value=str(tiny_checkpoint)), Parameter('latency.measure_on_start', value=True),
        Parameter('num_threads', value=1)])
    try:
        runtime = node.runtime
        measured = runtime.thresholds.latency
        runtime.latency_watch.reset(dataclasses.replace(measured, p50_ms=tuple(ms / 10 for ms in measured.p50_ms)))
        rng = np.random.default_rng(0)
        observation = Observation(random_frame(rng, STATIC_CAMERA_SHAPE), random_frame(rng, GRIPPER_CAMERA_SHAPE),
                                  rng.uniform(-1.0, 1.0, ROBOT_OBS_DIM))
        for _ in range(runtime.latency_watch.window):
            runtime.step(observation, 'open the drawer')
        node._check_latency_drift()  # what the node's 1 Hz drift timer runs
        assert wait_for(lambda: runtime.thresholds.latency is not measured and not node._remeasuring, 50.0)
        assert runtime.take_drift() is None and runtime.realised_latency() is None  # a fresh watch on the new table
    finally:
        node.destroy_node()
