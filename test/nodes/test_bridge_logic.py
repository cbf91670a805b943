"""The simulator side of the ROS loop without ROS: action hand-over, lock-step waiting, GFLOPs per chain."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.nodes.bridge import (
    ActionMailbox,
    GripperLatch,
    Interrupted,
    PolicyTimeout,
    ReceivedAction,
    RosPolicy,
    StepStats,
    received_action,
    step_summary,
)


def test_received_actions_are_clamped_and_nan_becomes_a_hold():
    action = received_action([2.0, -2.0, 0.5, 0, 0, 0], GRIPPER_CLOSE, False, 7)
    np.testing.assert_array_equal(action.delta, [1.0, -1.0, 0.5, 0, 0, 0])
    assert not action.hold and action.stamp_ns == 7
    assert received_action([math.nan] * 6, GRIPPER_CLOSE, False, 7).hold
    assert received_action([0.0] * 5, GRIPPER_CLOSE, False, 7).hold


def test_gripper_latch_keeps_the_command_through_holds():
    latch = GripperLatch()
    assert latch.env_action(None).tolist() == [0.0] * 6 + [GRIPPER_OPEN]
    latch.env_action(received_action([0.1] * 6, GRIPPER_CLOSE, False, 1))
    assert latch.env_action(received_action([0.5] * 6, GRIPPER_OPEN, True, 2)).tolist() == [0.0] * 6 + [GRIPPER_CLOSE]
    assert latch.env_action(received_action([0.1] * 6, 0, False, 3))[6] == GRIPPER_CLOSE


def test_mailbox_gives_only_answers_to_the_current_frame():
    mailbox = ActionMailbox()
    mailbox.put(received_action([0.0] * 6, GRIPPER_OPEN, False, 5))
    assert mailbox.take(newer_than_ns=6, timeout=0.01) is None
    threading.Timer(0.05, lambda: mailbox.put(received_action([0.0] * 6, GRIPPER_OPEN, False, 6))).start()
    assert mailbox.take(newer_than_ns=6, timeout=5.0).stamp_ns == 6
    assert mailbox.take(timeout=0.0) is None  # taken actions are gone


def test_step_stats_wait_for_late_exit_stats_and_summarise():
    stats = StepStats()
    stats.record(1, 0.1, 0.2, 2, 10.0)
    threading.Timer(0.05, lambda: stats.record(2, 0.3, 0.5, 6, 30.0)).start()
    rows = stats.collect([1, 2, 3], timeout=0.5)  # 3 never arrives: left out after the timeout
    assert rows.tolist() == [[0.1, 0.2, 2, 10.0], [0.3, 0.5, 6, 30.0]]
    summary = step_summary(rows)
    assert summary['policy_steps'] == 2 and summary['peak_llm_gflops'] == 0.3
    assert summary['avg_total_gflops'] == pytest.approx(0.35) and summary['mean_exit'] == 4.0
    assert summary['exit_histogram'] == {'2': 0.5, '6': 0.5}
    assert summary['latency_ms_p50'] == pytest.approx(20.0) and 20.0 < summary['latency_ms_p99'] <= 30.0
    assert step_summary(np.zeros((0, 4))) == {'policy_steps': 0, 'scripted_steps': 0}
    ready_pose_steps = np.array([[0.0, 0.0, 0, 0.0]] * 3)  # exit 0: a scripted step, no model ran
    assert step_summary(np.concatenate([ready_pose_steps, rows])) == {**summary, 'scripted_steps': 3}
    assert step_summary(ready_pose_steps) == {'policy_steps': 0, 'scripted_steps': 3}


class _Loop:
    """Records what a RosPolicy does, in order.

    ``answer`` makes a policy reply to each published frame; ``replies`` are put in the mailbox one per re-send.
    """

    def __init__(self, answer: bool, replies: list[ReceivedAction] | None = None) -> None:
        self.events: list[str] = []
        self.mailbox = ActionMailbox()
        self.answer = answer
        self.replies = list(replies or [])
        self.stamp = 0
        self.stop = False

    def publish(self, obs: dict) -> int:
        self.stamp += 10
        self.events.append(f'frame {self.stamp}')
        if self.answer:
            self.mailbox.put(received_action([0.5] * 6, GRIPPER_CLOSE, False, self.stamp))
        return self.stamp

    def republish(self) -> None:
        self.events.append('republish')
        if self.replies:
            self.mailbox.put(self.replies.pop(0))

    def policy(self, **kwargs) -> RosPolicy:
        return RosPolicy(lambda text: self.events.append(f'instruction {text}'), self.publish,
                         self.republish, lambda: self.events.append('reset'),
                         lambda: self.stop, self.mailbox, **kwargs)


def test_lockstep_resets_before_the_first_frame_and_returns_the_answer():
    loop = _Loop(answer=True)
    policy = loop.policy()
    policy.reset()
    action = policy.step({}, 'open the drawer')
    assert loop.events == ['instruction open the drawer', 'reset', 'frame 10']
    assert action.tolist() == [0.5] * 6 + [GRIPPER_CLOSE] and policy.executed == [10]
    policy.step({}, 'open the drawer')
    assert loop.events[-1] == 'frame 20' and loop.events.count('reset') == 1


def test_lockstep_republishes_while_waiting_then_times_out_or_is_interrupted():
    loop = _Loop(answer=False)
    policy = loop.policy(timeout=0.3, republish_period=0.05)
    with pytest.raises(PolicyTimeout, match='within 0.3 s'):
        policy.step({}, 'open the drawer')
    assert loop.events.count('republish') >= 3
    loop.stop = True
    with pytest.raises(Interrupted):
        policy.step({}, 'open the drawer')


def test_lockstep_waits_through_holds_for_the_policy_action():
    """Evaluation: a hold (inputs not usable yet) is no answer; the simulator stays paused, the frame is re-sent."""
    loop = _Loop(answer=False, replies=[received_action([0.0] * 6, GRIPPER_OPEN, True, 10),
                                        received_action([0.25] * 6, GRIPPER_CLOSE, False, 10)])
    policy = loop.policy(timeout=5.0, republish_period=0.05, holds_step=False)
    action = policy.step({}, 'open the drawer')
    assert action.tolist() == [0.25] * 6 + [GRIPPER_CLOSE] and policy.executed == [10]
    assert loop.events[-3:] == ['frame 10', 'republish', 'republish']


def test_lockstep_timeout_says_the_policy_was_holding():
    loop = _Loop(answer=False)
    policy = loop.policy(timeout=0.3, republish_period=0.05, holds_step=False)
    loop.mailbox.put(received_action([0.0] * 6, GRIPPER_OPEN, True, 99))
    with pytest.raises(PolicyTimeout, match='answered with 1 holds'):
        policy.step({}, 'open the drawer')


def test_fixed_rate_steps_without_an_answer_as_a_hold():
    loop = _Loop(answer=False)
    policy = loop.policy(mode='fixed_rate', period=0.01)
    assert policy.step({}, 'x').tolist() == [0.0] * 6 + [GRIPPER_OPEN] and policy.executed == []
