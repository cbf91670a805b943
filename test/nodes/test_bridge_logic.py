"""The simulator side of the ROS loop without ROS: action hand-over, lock-step waiting, GFLOPs per chain."""
from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from deer_ros.benchmark.chains import Chain, SymbolicState
from deer_ros.benchmark.evaluation import ChainResult
from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.nodes.bridge import (
    ActionMailbox,
    EvaluationTally,
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
    """The answer for exactly the frame waited on (issue 18 §1: stamps name frames; the old ``newer_than_ns``
    took any later stamp, and a later hold replaced an answer)."""
    mailbox = ActionMailbox()
    mailbox.put(received_action([0.0] * 6, GRIPPER_OPEN, False, 5))
    assert mailbox.take(6, timeout=0.01) is None
    threading.Timer(0.05, lambda: mailbox.put(received_action([0.0] * 6, GRIPPER_OPEN, False, 6))).start()
    assert mailbox.take(6, timeout=5.0).stamp_ns == 6
    assert mailbox.take(6, timeout=0.0) is None  # taken actions are gone
    assert mailbox.take(5, timeout=0.0) is None  # and answers to older frames with them
    assert mailbox.take_newest() is None


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


CHAIN = Chain(SymbolicState(0, 1, 'right', 'closed', 'table', 'slider_left', 'table'),
              ('turn_on_led', 'open_drawer', 'move_slider_left', 'turn_off_lightbulb', 'push_red_block_left'))


def test_evaluation_tally_assembles_what_the_bridge_publishes():
    """Each chain with its own steps' GFLOPs; then CALVIN's metrics over all chains, GFLOPs over every executed
    step, the settings, and why the run stopped early."""
    tally = EvaluationTally({'scene': 'D', 'max_steps': 4})
    first = np.array([[0.1, 0.2, 2, 10.0], [0.3, 0.5, 6, 30.0]])
    second = np.array([[0.0, 0.0, 0, 0.0], [0.3, 0.5, 6, 20.0]])  # a scripted step, then the model
    chain = tally.add(ChainResult(0, CHAIN, 1, [2, 4]), first)
    assert chain['index'] == 0 and chain['successes'] == 1 and chain['steps'] == [2, 4]
    assert chain['gflops'] == step_summary(first) and chain['tasks'] == list(CHAIN.tasks)
    tally.add(ChainResult(1, CHAIN, 3, [1, 1, 1, 4]), second)
    tally.error = 'no action for the frame stamped 7 ns within 30 s'
    summary = json.loads(json.dumps(tally.summary()))  # as published
    assert summary['num_chains'] == 2 and summary['average_length'] == 2.0 and 'chains' not in summary
    assert summary['success_rates'] == {'1': 1.0, '2': 0.5, '3': 0.5, '4': 0.0, '5': 0.0}
    assert summary['gflops'] == step_summary(np.concatenate([first, second]))
    assert summary['gflops']['policy_steps'] == 3 and summary['gflops']['scripted_steps'] == 1
    assert summary['settings'] == {'scene': 'D', 'max_steps': 4} and summary['error'] == tally.error
    table = tally.format_table()
    assert 'average successful length: 2.000' in table and f"gflops: {summary['gflops']}" in table


def test_an_evaluation_that_ran_no_chain_still_has_a_summary():
    summary = EvaluationTally({'scene': 'D'}).summary()
    assert summary['num_chains'] == 0 and summary['average_length'] == 0.0 and 'error' not in summary
    assert summary['gflops'] == {'policy_steps': 0, 'scripted_steps': 0}


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
    loop.mailbox.put(received_action([0.0] * 6, GRIPPER_OPEN, True, 10))  # for the frame it will wait on
    with pytest.raises(PolicyTimeout, match='answered with 1 holds'):
        policy.step({}, 'open the drawer')


def test_fixed_rate_steps_without_an_answer_as_a_hold():
    loop = _Loop(answer=False)
    policy = loop.policy(mode='fixed_rate', period=0.01)
    assert policy.step({}, 'x').tolist() == [0.0] * 6 + [GRIPPER_OPEN] and policy.executed == []
