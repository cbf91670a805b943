"""PolicyController with the real tiny policy: which inputs it acts on, and what it does instead."""
from __future__ import annotations

import math

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from small_models import random_frame

from deer_ros.calvin_layout import (
    GRIPPER_CAMERA_SHAPE,
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    HOME_ARM_JOINTS,
    STATIC_CAMERA_SHAPE,
)
from deer_ros.nodes.control import (
    GRIPPER_CAMERA,
    INSTRUCTION,
    JOINT_STATES,
    STATIC_CAMERA,
    TCP_POSE,
    PolicyController,
    check_image,
    safe_action,
)
from deer_ros.nodes.diagnostics import PolicyDiagnostics
from deer_ros.nodes.robot_state import check_joint_positions, check_tcp_pose
from deer_ros.policy.deer_policy import DeerPolicy
from deer_ros.policy.early_exit import NonFiniteActionError
from deer_ros.policy.types import Action


@pytest.fixture(scope='module')
def policy(tiny_checkpoint) -> DeerPolicy:
    return DeerPolicy.from_pretrained(tiny_checkpoint)


def _feed(controller: PolicyController, now: float, stamp: int, rng: np.random.Generator) -> None:
    inputs = controller.inputs
    inputs.put(STATIC_CAMERA, random_frame(rng, STATIC_CAMERA_SHAPE), now, stamp)
    inputs.put(GRIPPER_CAMERA, random_frame(rng, GRIPPER_CAMERA_SHAPE), now, stamp)
    inputs.put(JOINT_STATES, np.zeros(7), now, stamp)


def test_missing_inputs_hold_or_stay_silent(policy):
    controller = PolicyController(policy, max_input_age_s=0.5)
    decision = controller.tick(0.0)
    assert decision.kind == 'hold' and not np.any(decision.action.pose) and decision.info is None
    assert [problem.split(':')[0] for problem in decision.problems] == [
        STATIC_CAMERA, GRIPPER_CAMERA, JOINT_STATES, INSTRUCTION]
    controller.on_stale_input = 'silent'
    assert controller.tick(0.0).kind == 'silent' and controller.tick(0.0).action is None


def test_acts_once_per_frame_and_holds_on_stale_or_rejected_input(policy):
    rng = np.random.default_rng(0)
    controller = PolicyController(policy, max_input_age_s=0.5)
    controller.set_instruction('open the drawer', 0.0)
    _feed(controller, 0.0, stamp=100, rng=rng)
    acted = controller.tick(0.1)
    assert acted.kind == 'action' and acted.stamp_ns == 100 and acted.info.exit_index == 5
    assert controller.tick(0.2).kind == 'wait'  # same frame: nothing new to act on
    _feed(controller, 0.3, stamp=100, rng=rng)  # re-sent with its old stamp: not new, its answer again, no step
    again = controller.tick(0.3)
    assert again.kind == 'reanswer' and again.stamp_ns == 100 and again.action is acted.action
    assert controller.tick(0.3).kind == 'wait'
    controller.require_new_frame = False
    assert controller.tick(0.3).kind == 'action'

    stale = controller.tick(0.9)  # 0.6 s after the last message
    assert stale.kind == 'hold' and f'{STATIC_CAMERA}: stale, last message 0.60 s ago' in stale.problems[0]
    assert stale.action.gripper == controller.gripper  # a hold keeps the last gripper command

    _feed(controller, 1.0, stamp=200, rng=rng)
    controller.inputs.reject(JOINT_STATES, 'non-finite joint positions [nan]')
    assert controller.tick(1.0).problems == [f'{JOINT_STATES}: non-finite joint positions [nan]']
    _feed(controller, 1.1, stamp=300, rng=rng)  # a good message clears the rejection
    assert controller.tick(1.1).kind == 'action'


def test_only_a_changed_instruction_resets_the_policy(policy):
    rng = np.random.default_rng(0)
    controller = PolicyController(policy, max_input_age_s=10.0)
    assert controller.set_instruction('open the drawer', 0.0)
    _feed(controller, 0.0, 1, np.random.default_rng(5))
    first = controller.tick(0.0).action.pose
    assert not controller.set_instruction('open the drawer', 0.1)  # a re-sent latched instruction
    _feed(controller, 0.1, 2, rng)
    controller.tick(0.1)
    assert controller.set_instruction('close the drawer', 0.2) and controller.set_instruction('open the drawer', 0.3)
    _feed(controller, 0.3, 3, np.random.default_rng(5))
    np.testing.assert_allclose(controller.tick(0.3).action.pose, first, atol=1e-6)


def test_a_proprioceptive_policy_needs_the_tcp_pose_and_acts_on_it(proprio_checkpoint):
    controller = PolicyController(DeerPolicy.from_pretrained(proprio_checkpoint), max_input_age_s=0.5)
    controller.require_new_frame = False
    controller.set_instruction('open the drawer', 0.0)
    _feed(controller, 0.0, stamp=100, rng=np.random.default_rng(0))
    assert controller.tick(0.1).problems == [f'{TCP_POSE}: none received yet']
    poses = []
    for x in (0.0, 0.3):
        controller.policy.reset()
        controller.inputs.put(TCP_POSE, np.array([x, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]), 0.1)
        decision = controller.tick(0.1)
        assert decision.kind == 'action'
        poses.append(decision.action.pose)
    assert not np.allclose(*poses)  # same images, different arm pose: the robot state reaches the model
    controller.inputs.put(JOINT_STATES, np.zeros(3), 0.2)  # too few joints for robot_obs
    held = controller.tick(0.2)
    assert held.kind == 'hold' and 'needs the 7 arm joints' in held.problems[0]


def test_input_checks_name_the_problem():
    assert check_image(np.zeros(STATIC_CAMERA_SHAPE, np.uint8), STATIC_CAMERA_SHAPE) is None
    assert check_image(np.zeros((480, 640, 3), np.uint8), STATIC_CAMERA_SHAPE) == (
        'expected 200x200 RGB image, got 640x480')
    assert check_joint_positions(np.zeros(7)) is None
    assert check_joint_positions(np.array([])) == 'no joint positions in the message'
    assert 'non-finite' in check_joint_positions(np.array([0.0, math.inf]))


def test_robot_state_outside_plausible_bounds_is_named():
    """Finite but absurd values (1e30) used to reach the model and come out as NaN actions."""
    assert check_joint_positions(np.array([*HOME_ARM_JOINTS, 0.04, 0.04]), needs_arm=True) is None
    assert check_joint_positions(np.zeros(3)) is None  # any count will do when no robot state is rebuilt
    assert check_joint_positions(np.zeros(3), needs_arm=True) == (
        '3 joint positions: the robot state needs the 7 arm joints')
    assert check_joint_positions(np.array([0.1, 1e30, 0, 0, 0, 0, 0])) == (
        'joint positions beyond +-6.283 (not a physical arm): [0.1, 1e+30, 0, 0, 0, 0, 0]')
    assert check_tcp_pose(np.array([1e30, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0])) == (
        'TCP position [1e+30, 0, 0.5] is more than 10 m from the frame origin')
    assert 'non-finite' in check_joint_positions(np.full(1000, np.nan))
    assert len(check_joint_positions(np.full(1000, np.nan))) < 120  # a fuzzed message does not flood the log


def test_a_stream_re_sent_with_one_stamp_is_frozen_in_the_diagnostics(policy):
    """A camera re-sending one stamp (new messages, never a new frame) used to leave diagnostics at OK 'acting'."""
    rng = np.random.default_rng(0)
    controller = PolicyController(policy, max_input_age_s=0.5)
    diagnostics = PolicyDiagnostics('deer_policy', policy.cost_table.num_exits, inputs=controller.inputs.names)
    controller.set_instruction('open the drawer', 0.0)
    _feed(controller, 0.0, stamp=100, rng=rng)
    diagnostics.record(controller.tick(0.0))
    inputs, status = diagnostics.statuses(0.0, controller.inputs.snapshot(0.0, 0.5), {})
    assert (inputs.level, inputs.message, status.level, status.message) == (
        DiagnosticStatus.OK, 'all inputs fresh', DiagnosticStatus.OK, 'acting')
    for now in (0.2, 0.4, 0.6):
        _feed(controller, now, stamp=100, rng=rng)
        diagnostics.record(controller.tick(now))
    snapshot = controller.inputs.snapshot(0.6, 0.5)
    assert not snapshot.problems
    assert [w.split(':')[0] for w in snapshot.warnings] == [STATIC_CAMERA, GRIPPER_CAMERA, JOINT_STATES]
    inputs, status = diagnostics.statuses(0.6, snapshot, {})
    assert inputs.level == DiagnosticStatus.WARN and 'static camera: frozen, the same stamp for 0.60' in inputs.message
    assert status.level == DiagnosticStatus.WARN and status.message.startswith('frozen input, answering the same frame')
    assert {kv.key: kv.value for kv in status.values}['reanswer'] == '3'


def test_safe_action_clamps_and_refuses_garbage():
    clamped = safe_action(Action(np.array([2.0, -3.0, 0.5, 0, 0, 0]), GRIPPER_CLOSE))
    np.testing.assert_array_equal(clamped.pose, [1.0, -1.0, 0.5, 0, 0, 0])
    with pytest.raises(NonFiniteActionError):
        safe_action(Action(np.array([math.nan, 0, 0, 0, 0, 0]), GRIPPER_OPEN))
    with pytest.raises(NonFiniteActionError):
        safe_action(Action(np.zeros(6), 0))
