"""The bridge's side of the lock-step contract (issue 18 §1), without DDS: deterministic, not timing-dependent.

``ContractPolicy`` plays the policy node as the contract says it behaves (answer
frame S with an action stamped S, re-send the remembered answer when S is re-sent,
holds stamped with the newest frame seen); the network between them is the test's
to control: it drops, duplicates, reorders and delays messages by putting them in
the mailbox (or not) before the simulator thread takes its answer.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from deer_ros.benchmark.chains import Chain, SymbolicState
from deer_ros.benchmark.evaluation import ChainResult, recorded_results, run_settings
from deer_ros.benchmark.results_file import ResultsFile
from deer_ros.calvin_layout import GRIPPER_CLOSE, GRIPPER_OPEN
from deer_ros.nodes.bridge import (
    ActionMailbox,
    EvaluationTally,
    Interrupted,
    PolicyLost,
    PolicyTimeout,
    ReceivedAction,
    RosPolicy,
    decode_rows,
    encode_rows,
    received_action,
    run_chain_surviving,
    step_summary,
)


def answer(stamp: int, value: float = 0.5, gripper: int = GRIPPER_CLOSE) -> ReceivedAction:
    return received_action([value] * 6, gripper, False, stamp)


def hold(stamp: int) -> ReceivedAction:
    return received_action([0.0] * 6, GRIPPER_OPEN, True, stamp)


class ContractPolicy:
    """The policy node per the contract, with a lossy network in front of the bridge's mailbox.

    ``drop``: the next n messages are lost. ``then``: what the policy publishes right after its answer to a new
    frame and before the simulator thread gets to take it (e.g. holds, as stale inputs made it in the issue).
    ``silent``: the policy has stopped answering (alive, but nothing comes).
    """

    def __init__(self) -> None:
        self.mailbox = ActionMailbox()
        self.events: list[str] = []
        self.remembered: tuple[int, ReceivedAction] | None = None
        self.stamp = 0
        self.drop = 0
        self.then: list[ReceivedAction] = []
        self.silent = False
        self.problem: str | None = None

    def deliver(self, action: ReceivedAction) -> None:
        if self.drop:
            self.drop -= 1
            self.events.append(f'lost {action.stamp_ns}')
        else:
            self.mailbox.put(action)

    def publish(self, obs: dict) -> int:
        self.stamp += 10
        self.events.append(f'frame {self.stamp}')
        if not self.silent:
            self.remembered = (self.stamp, answer(self.stamp, value=self.stamp / 100))
            self.deliver(self.remembered[1])
            for message in self.then:
                self.deliver(message)
            self.then = []
        return self.stamp

    def republish(self) -> None:
        self.events.append(f'resend {self.stamp}')
        if not self.silent and self.remembered is not None and self.remembered[0] == self.stamp:
            self.deliver(self.remembered[1])  # a re-sent frame is answered again

    def policy(self, **kwargs: object) -> RosPolicy:
        kwargs = {'republish_period': 0.02, 'timeout': 5.0, 'holds_step': False, **kwargs}
        return RosPolicy(lambda text: None, self.publish, self.republish, lambda: self.events.append('reset'),
                         lambda: False, self.mailbox, policy_problem=lambda: self.problem, **kwargs)


def test_answer_survives_holds_stamped_later_that_arrive_before_it_is_taken():
    """The issue's reproduction: the policy answered frame S, its inputs went stale while the simulator thread was
    paused, and it published holds (stamped later, or with S itself) before the bridge took the answer. The
    single-slot mailbox lost the answer to them and the run aborted after 30 s; now the answer is taken."""
    loop = ContractPolicy()
    loop.then = [hold(10), hold(11), hold(12)]
    policy = loop.policy(timeout=0.5)
    action = policy.step({}, 'open the drawer')
    assert action.tolist() == pytest.approx([0.1] * 6 + [GRIPPER_CLOSE]) and policy.executed == [10]
    assert loop.events == ['frame 10']  # taken at once: no re-send was needed


def test_a_lost_answer_is_healed_by_the_resend():
    loop = ContractPolicy()
    loop.drop = 1
    policy = loop.policy()
    action = policy.step({}, 'x')
    assert loop.events == ['frame 10', 'lost 10', 'resend 10']
    assert action[0] == pytest.approx(0.1) and policy.executed == [10]
    loop.drop = 3  # several in a row: the frame is re-sent until one answer gets through
    policy.step({}, 'x')
    assert loop.events[-7:] == ['frame 20', 'lost 20', 'resend 20', 'lost 20', 'resend 20', 'lost 20', 'resend 20']
    assert policy.executed == [10, 20]


def test_duplicate_answers_step_once_and_never_answer_the_next_frame():
    loop = ContractPolicy()
    policy = loop.policy()
    policy.step({}, 'x')
    loop.mailbox.put(answer(10, value=0.1))  # the re-answer of a re-sent frame, arriving after the first was taken
    loop.then = [answer(10, value=0.1)]  # and once more while the next frame waits
    action = policy.step({}, 'x')
    assert action[0] == pytest.approx(0.2) and policy.executed == [10, 20]
    loop.silent = True  # nothing answers frame 30: an old duplicate must not stand in for it
    loop.mailbox.put(answer(20))
    with pytest.raises(PolicyTimeout):
        loop.policy(timeout=0.2).step({}, 'x')


def test_holds_count_only_for_the_frame_waited_on():
    """Evaluation: a hold for the frame is a reason to keep waiting (and is counted); holds for other frames are
    ignored. Free play: a hold for the frame steps with a zero delta, one for another frame does not."""
    loop = ContractPolicy()
    loop.silent = True
    loop.mailbox.put(hold(5))
    loop.mailbox.put(hold(10))
    with pytest.raises(PolicyTimeout, match='answered with 1 holds'):
        loop.policy(timeout=0.3).step({}, 'x')
    loop.mailbox.put(hold(30))  # the next frame will be 20: not its hold
    with pytest.raises(PolicyTimeout, match='sent nothing'):
        loop.policy(timeout=0.3).step({}, 'x')
    free_play = loop.policy(timeout=5.0, holds_step=True)
    loop.mailbox.put(hold(99))
    loop.mailbox.put(hold(30))
    assert free_play.step({}, 'x').tolist() == [0.0] * 6 + [GRIPPER_OPEN] and free_play.executed == []


def test_mailbox_keeps_a_bounded_number_of_answers_and_prefers_the_answer_to_a_hold():
    mailbox = ActionMailbox(keep=3)
    for stamp in (1, 2, 3, 4):
        mailbox.put(answer(stamp))
    mailbox.put(hold(4))
    assert mailbox.take(1, timeout=0.0) is None  # the oldest went first
    assert not mailbox.take(4, timeout=0.0).hold  # the answer, though a hold for the frame came after it
    assert mailbox.take(2, timeout=0.0) is None  # taking frame 4 dropped the older ones
    mailbox.put(answer(7))
    mailbox.put(hold(9))
    newest = mailbox.take_newest()  # fixed rate: the newest message, whatever it answers; the box is emptied
    assert newest.hold and newest.stamp_ns == 9 and mailbox.take_newest() is None


def test_reset_starts_the_gripper_latch_and_mailbox_afresh():
    """Per episode (each subtask, so each chain): the simulator starts a chain with the gripper open."""
    loop = ContractPolicy()
    policy = loop.policy(holds_step=True)
    assert policy.step({}, 'x')[6] == GRIPPER_CLOSE
    loop.mailbox.put(answer(20))  # meant for the last episode's next frame
    policy.reset()
    loop.silent = True
    loop.mailbox.put(hold(20))
    assert policy.step({}, 'x').tolist() == [0.0] * 6 + [GRIPPER_OPEN]  # the hold, not the stale answer
    assert loop.events[-2:] == ['reset', 'frame 20']


def test_a_lost_policy_interrupts_the_wait():
    loop = ContractPolicy()
    loop.silent = True
    loop.problem = 'no node publishes /arm_action: is deer_policy running?'
    with pytest.raises(PolicyLost, match='is deer_policy running'):
        loop.policy().step({}, 'x')
    assert loop.events == ['frame 10']  # noticed after one re-send period


CHAIN = Chain(SymbolicState(0, 1, 'right', 'closed', 'table', 'slider_left', 'table'),
              ('turn_on_led', 'open_drawer', 'move_slider_left', 'turn_off_lightbulb', 'push_red_block_left'))


class Attempts:
    """Scripted chain attempts: each entry is raised, or returned as the chain's result."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.waits: list[str] = []

    def __call__(self) -> ChainResult:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def back(self, answer: bool):
        def policy_back(reason: str) -> bool:
            self.waits.append(reason)
            return answer
        return policy_back


def test_a_chain_starts_again_when_its_policy_comes_back():
    done = ChainResult(3, CHAIN, 2, [10, 20, 360])
    attempts = Attempts(PolicyLost('a new node publishes /arm_action'), done)
    outcome = run_chain_surviving(attempts, 3, CHAIN, attempts.back(True))
    assert outcome.result is done and outcome.restarted == 1 and not outcome.policy_gone
    assert attempts.waits == ['a new node publishes /arm_action']


def test_a_chain_that_cannot_finish_is_recorded_as_failed_with_the_reason():
    silent = run_chain_surviving(Attempts(PolicyTimeout('no action for the frame stamped 7 ns within 30 s')), 3,
                                 CHAIN, Attempts().back(True))
    assert silent.result.error == 'PolicyTimeout: no action for the frame stamped 7 ns within 30 s'
    assert silent.result.successes == 0 and silent.result.steps == [] and not silent.policy_gone
    gone = run_chain_surviving(Attempts(PolicyLost('no node publishes /arm_action: is deer_policy running?')), 3,
                               CHAIN, Attempts().back(False))
    assert gone.policy_gone and 'is deer_policy running?; none came back' in gone.result.error
    broken = run_chain_surviving(Attempts(RuntimeError('pybullet: not connected')), 3, CHAIN, Attempts().back(True))
    assert broken.result.error == 'RuntimeError: pybullet: not connected'
    flapping = Attempts(*[PolicyLost('restarted')] * 3)
    outcome = run_chain_surviving(flapping, 3, CHAIN, flapping.back(True), max_restarts=2)
    assert outcome.restarted == 2 and 'started again 2 times' in outcome.result.error and not outcome.policy_gone
    with pytest.raises(Interrupted):
        run_chain_surviving(Attempts(Interrupted()), 3, CHAIN, Attempts().back(True))


def test_step_rows_survive_a_results_file_exactly():
    rows = np.array([[np.float32(0.028), np.float32(0.0531), 3, np.float32(31.27)],
                     [0.0, 0.0, 0, 0.0]], dtype=np.float64)
    assert np.array_equal(decode_rows(json.loads(json.dumps(encode_rows(rows)))), rows)
    assert decode_rows([]).shape == (0, 4)


def _tally_of(chains: list[tuple[ChainResult, np.ndarray, int]]) -> tuple[EvaluationTally, list[dict]]:
    """A tally of ``(result, rows, restarted)`` chains and the ``evaluation/chain_result`` of each."""
    tally = EvaluationTally({'scene': 'D'})
    return tally, [tally.add(result, rows, restarted, 1.5) for result, rows, restarted in chains]


def test_a_resumed_evaluation_gives_the_summary_of_an_uninterrupted_one(tmp_path):
    """Kill after two chains, resume from the results file: the finished chains are kept (not run again, the
    failed one is), and the summary equals the one of the run that was never interrupted."""
    f32 = np.float32
    chains = [(ChainResult(4, CHAIN, 2, [12, 40, 360]), np.array([[f32(0.03), f32(0.05), 2, f32(12.5)]] * 52), 0),
              (ChainResult.failed(5, CHAIN, 'PolicyTimeout: no action'), np.zeros((0, 4)), 0),
              (ChainResult(6, CHAIN, 0, [360]), np.array([[f32(0.06), f32(0.09), 6, f32(40.25)]] * 360), 1)]
    whole, messages = _tally_of(chains)
    settings = {'scene': 'D', **run_settings([CHAIN] * 3, 360)}
    results = ResultsFile.open(tmp_path / 'chains.jsonl', settings)
    killed, _ = _tally_of(chains[:2])
    for result, *_ in chains[:2]:
        results.append(killed.record(result.index))

    resumed_file = ResultsFile.open(tmp_path / 'chains.jsonl', settings, resume=True)
    done = recorded_results(resumed_file, [CHAIN] * 3, 360, first_index=4)
    assert sorted(done) == [4]  # the failed chain runs again
    resumed = EvaluationTally({'scene': 'D'})
    assert resumed.add_record(resumed_file.records[4]) == messages[0]  # published again as it was
    for result, rows, restarted in chains[1:]:
        resumed.add(result, rows, restarted, 1.5)
    assert resumed.summary() == whole.summary()
    assert whole.summary()['gflops'] == step_summary(np.concatenate([chains[0][1], chains[2][1]]))


def test_summary_counts_failed_and_restarted_chains_apart():
    tally, _ = _tally_of([(ChainResult(0, CHAIN, 1, [5, 360]), np.zeros((0, 4)), 2),
                          (ChainResult.failed(1, CHAIN, 'PolicyLost: gone; none came back'), np.zeros((0, 4)), 0)])
    summary = json.loads(json.dumps(tally.summary()))
    assert summary['num_failed'] == 1 and summary['num_chains'] == 2 and summary['average_length'] == 0.5
    assert summary['failed_chains'] == [{'index': 1, 'error': 'PolicyLost: gone; none came back'}]
    assert summary['restarted_chains'] == {'0': 2} and not tally.ok
    assert 'chain 0 started again 2 times' in tally.format_table()
    assert _tally_of([(ChainResult(0, CHAIN, 1, [5, 360]), np.zeros((0, 4)), 0)])[0].ok
