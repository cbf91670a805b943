"""The policy's side of the lock-step protocol (docs/nodes.md), driven with explicit times and stamps: no DDS timing.

A frame is the static image, the gripper image and the robot state stamped alike;
the controller acts on a complete set only, answers a frame sent again with the
same answer, stamps holds with the newest frame, and a reset leaves nothing of
the last episode behind.
"""
from __future__ import annotations

import numpy as np
import pytest
from small_models import random_frame
from std_msgs.msg import Header

from deer_ros.calvin_layout import (
    GRIPPER_CAMERA_SHAPE,
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    HOME_ARM_JOINTS,
    STATIC_CAMERA_SHAPE,
)
from deer_ros.nodes.control import (
    GRIPPER_CAMERA,
    JOINT_STATES,
    STATIC_CAMERA,
    TCP_POSE,
    PolicyController,
)
from deer_ros.nodes.diagnostics import PolicyDiagnostics
from deer_ros.nodes.messages import arm_action_msg, exit_stats_msg, stamp_msg
from deer_ros.policy.deer_policy import DeerPolicy

MS = 1_000_000  # ns
S0 = 1_700_000_000 * 1000 * MS  # a realistic stamp (ns)
FRAME_NS = 33 * MS  # 30 Hz
TCP = np.array([0.03, -0.23, 0.57, 1.0, 0.0, 0.0, 0.0])  # xyz, quaternion xyzw


@pytest.fixture(scope='module')
def policy(tiny_checkpoint) -> DeerPolicy:
    return DeerPolicy.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope='module')
def twin_policy(tiny_checkpoint) -> DeerPolicy:
    """A second copy, for a reference run whose step history must not mix with the one under test."""
    return DeerPolicy.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope='module')
def proprio_policies(proprio_checkpoint) -> tuple[DeerPolicy, DeerPolicy]:
    return DeerPolicy.from_pretrained(proprio_checkpoint), DeerPolicy.from_pretrained(proprio_checkpoint)


class Frames:
    """Consistent frames: frame ``k`` is the same images and joints whenever it is (re-)sent."""

    def __init__(self, controller: PolicyController, seed: int = 0) -> None:
        self.controller = controller
        self.seed = seed

    def message(self, name: str, k: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, k))
        return {STATIC_CAMERA: random_frame(rng, STATIC_CAMERA_SHAPE),
                GRIPPER_CAMERA: random_frame(rng.spawn(1)[0], GRIPPER_CAMERA_SHAPE),
                JOINT_STATES: np.array([*HOME_ARM_JOINTS, 0.04, 0.04]) + 0.01 * k, TCP_POSE: TCP}[name]

    def put(self, k: int, now: float, names: tuple[str, ...] | None = None, stamp: int | None = None) -> int:
        """Send ``names`` (default: every streamed input the controller needs) of frame ``k``; returns its stamp."""
        stamp = S0 + k * FRAME_NS if stamp is None else stamp
        for name in names or [n for n in self.controller.inputs.names if n != 'instruction']:
            self.controller.inputs.put(name, self.message(name, k), now, stamp)
        return stamp


def _controller(policy: DeerPolicy, **kwargs) -> tuple[PolicyController, Frames]:
    controller = PolicyController(policy, max_input_age_s=0.5, **kwargs)
    controller.set_instruction('open the drawer', 0.0)
    return controller, Frames(controller)


def test_a_frame_with_inputs_of_another_frame_waits_and_a_complete_set_acts(policy, twin_policy):
    controller, frames = _controller(policy)
    diagnostics = PolicyDiagnostics('deer_policy', policy.cost_table.num_exits, inputs=controller.inputs.names)
    frames.put(0, 0.0)
    assert controller.tick(0.0).kind == 'action'

    frames.put(1, 0.05, (STATIC_CAMERA,))  # the static image of frame 1, the rest still of frame 0
    waiting = controller.tick(0.06)
    diagnostics.record(waiting)
    assert waiting.kind == 'wait' and waiting.action is None
    assert [p.split(':')[0] for p in waiting.problems] == [GRIPPER_CAMERA, JOINT_STATES]
    frames.put(1, 0.07, (GRIPPER_CAMERA,))
    assert controller.tick(0.08).kind == 'wait'  # joint states of frame 1 still missing
    frames.put(1, 0.09, (JOINT_STATES,))
    acted = controller.tick(0.1)
    assert acted.kind == 'action' and acted.stamp_ns == S0 + FRAME_NS
    assert set(controller.inputs.snapshot(0.1, 0.5).stamps.values()) == {S0 + FRAME_NS, 0}  # 0: the instruction
    assert diagnostics.incomplete_waits == 1

    # Acts on exactly what a consistent set gives: a second controller fed frame 0 then frame 1 whole.
    twin, twin_frames = _controller(twin_policy)
    twin_frames.put(0, 0.0)
    twin.tick(0.0)
    twin_frames.put(1, 0.05)
    np.testing.assert_allclose(twin.tick(0.05).action.pose, acted.action.pose, atol=1e-6)


def test_stamps_match_within_the_slop(policy):
    controller, frames = _controller(policy, sync_slop_s=0.01)
    frames.put(0, 0.0, (STATIC_CAMERA,))
    frames.put(0, 0.0, (GRIPPER_CAMERA, JOINT_STATES), stamp=S0 + 4 * MS)  # another clock, 4 ms off
    assert controller.tick(0.0).kind == 'action'
    controller.sync_slop_s = 0.001  # a live parameter
    frames.put(1, 0.05, (STATIC_CAMERA,))
    frames.put(1, 0.05, (GRIPPER_CAMERA, JOINT_STATES), stamp=S0 + FRAME_NS + 4 * MS)
    assert controller.tick(0.05).kind == 'wait'


def test_a_message_of_the_previous_frame_never_completes_the_next(policy):
    """Frames 5 ms apart with a 10 ms slop: frame 1's static image must not pair with frame 0's other inputs."""
    controller, frames = _controller(policy, sync_slop_s=0.01)
    frames.put(0, 0.0)
    assert controller.tick(0.0).kind == 'action'
    stamp = frames.put(1, 0.01, (STATIC_CAMERA,), stamp=S0 + 5 * MS)
    assert controller.tick(0.01).kind == 'wait'
    frames.put(1, 0.02, (GRIPPER_CAMERA, JOINT_STATES), stamp=stamp)
    assert controller.tick(0.02).stamp_ns == stamp


def test_a_frame_incomplete_for_longer_than_max_input_age_s_holds_with_the_reason(policy):
    controller, frames = _controller(policy)
    frames.put(0, 0.0)
    controller.tick(0.0)
    stamp = frames.put(1, 0.1, (STATIC_CAMERA,))
    frames.put(0, 0.3, (GRIPPER_CAMERA, JOINT_STATES))  # frame 0's re-sent: fresh, but not of frame 1
    frames.put(1, 0.5, (STATIC_CAMERA,))  # frame 1 re-sent: fresh, still waiting since 0.1
    assert controller.tick(0.55).kind == 'wait'
    held = controller.tick(0.65)  # frame 1 waited 0.55 s > max_input_age_s
    assert held.kind == 'hold' and held.stamp_ns == stamp
    assert held.problems[0].startswith(f'{GRIPPER_CAMERA}: no message of the static frame ({stamp} ns) within '
                                       f'sync_slop_s 0.01; its newest is -0.033 s from it, waited 0.55 s')


def test_unstamped_inputs_are_matched_by_arrival(policy):
    controller, frames = _controller(policy)
    frames.put(0, 0.0, stamp=0)
    first = controller.tick(0.0)
    assert first.kind == 'action' and first.stamp_ns is None  # stamped now by the node
    assert controller.tick(0.01).kind == 'wait'
    frames.put(0, 0.02, (STATIC_CAMERA,), stamp=0)  # unstamped: every message is a new frame
    assert controller.tick(0.02).kind == 'action'


def test_a_frame_sent_again_after_its_answer_gets_the_same_answer_again(policy, twin_policy):
    controller, frames = _controller(policy)
    stamp = frames.put(0, 0.0)
    acted = controller.tick(0.0)
    assert controller.tick(0.03).kind == 'wait'  # not sent again: nothing to answer
    header = Header(stamp=stamp_msg(stamp), frame_id='world')
    for resent_at in (0.2, 0.4):  # the bridge missed the answer and sends the frame again
        frames.put(0, resent_at)
        again = controller.tick(resent_at + 0.01)
        assert again.kind == 'reanswer' and again.stamp_ns == stamp
        # repr: field by field, NaN (exit 1 has no consistency value) included
        assert repr(arm_action_msg(again.action, header, False)) == repr(arm_action_msg(acted.action, header, False))
        assert repr(exit_stats_msg(again.info, header)) == repr(exit_stats_msg(acted.info, header))
        assert controller.tick(resent_at + 0.02).kind == 'wait'  # once per re-send

    # Nothing was stepped for the re-sends: the next frame gets what it gets without them.
    twin, twin_frames = _controller(twin_policy)
    twin_frames.put(0, 0.0)
    twin.tick(0.0)
    twin_frames.put(1, 0.5)
    frames.put(1, 0.5)
    np.testing.assert_allclose(controller.tick(0.5).action.pose, twin.tick(0.5).action.pose, atol=1e-6)


def test_holds_are_stamped_with_the_newest_frame_seen(policy):
    controller, frames = _controller(policy)
    assert controller.tick(0.0).stamp_ns is None  # nothing seen yet: the node stamps it now
    frames.put(0, 0.0)
    controller.tick(0.0)
    stale = controller.tick(1.0)
    assert stale.kind == 'hold' and stale.stamp_ns == S0
    stamp = frames.put(1, 1.1, (STATIC_CAMERA,))
    controller.inputs.reject(GRIPPER_CAMERA, 'expected 84x84 RGB image, got 96x96')
    rejected = controller.tick(1.1)
    assert rejected.kind == 'hold' and rejected.stamp_ns == stamp and not np.any(rejected.action.pose)
    assert controller.hold(['node stopped']).stamp_ns == stamp


def test_a_reset_leaves_nothing_of_the_last_episode(proprio_policies):
    """Gripper command open (the simulator starts each chain open), no answer to repeat, old frames not acted on."""
    policy, twin_policy = proprio_policies
    controller, frames = _controller(policy)
    frames.put(0, 0.0)
    controller.tick(0.0)
    controller.gripper = GRIPPER_CLOSE  # chain 1 ended holding a block
    assert controller.set_instruction('lift the red block', 0.1)  # chain 2: a new instruction resets
    assert controller.gripper == GRIPPER_OPEN
    assert controller.tick(0.1).kind == 'wait'  # frame 0 belongs to the last episode
    frames.put(0, 0.2)  # unless it is sent again: then it is a frame of this episode, acted on afresh
    fresh = controller.tick(0.2)
    assert fresh.kind == 'action'

    # What the policy saw is an open gripper: the same as a controller that never closed it.
    twin, twin_frames = _controller(twin_policy)
    twin.set_instruction('lift the red block', 0.1)
    twin_frames.put(0, 0.2)
    np.testing.assert_allclose(twin.tick(0.2).action.pose, fresh.action.pose, atol=1e-6)
    twin.reset()
    twin.gripper = GRIPPER_CLOSE
    twin_frames.put(0, 0.3)
    assert not np.allclose(twin.tick(0.3).action.pose, fresh.action.pose, atol=1e-6)  # the gripper does matter

    controller.reset()  # the ~/reset service: the same
    assert controller.tick(0.4).kind == 'wait' and controller.gripper == GRIPPER_OPEN
