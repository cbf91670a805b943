"""calvin_bridge over real DDS: observations out, actions in (lock-step), chain evaluation with deer_policy, and
evaluations that survive a restarted policy, a killed bridge and a silent or vanished policy."""
from __future__ import annotations

import json
import threading

import numpy as np
from geometry_msgs.msg import PoseStamped
from policy_driver import FAST_POLICY, LATCHED
from rclpy.node import Node
from ros_helpers import BackgroundSpinner, wait_for
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String

from deer_ros.benchmark.results_file import recorded
from deer_ros.calvin_layout import POS_SCALE
from deer_ros.msg import ArmAction
from deer_ros.nodes.messages import stamp_msg, stamp_ns

BRIDGE = 'deer_ros.nodes.calvin_bridge_node'
STARTUP_S = 120.0


class Robot(Node):
    """Records what the bridge publishes and (``answers``) answers its frames with actions.

    Only one of the tests answers: the bridge takes any publisher on arm_action for a policy.
    """

    def __init__(self, context: object, answers: bool = True) -> None:
        super().__init__('bridge_client', context=context)
        self.lock = threading.Lock()
        self.messages: dict[str, list] = {topic: [] for topic in (
            'camera/static/image_raw', 'camera/gripper/image_raw', 'joint_states', 'tcp_pose', 'instruction',
            'evaluation/chain_result', 'evaluation/summary')}
        for topic, kind in (('camera/static/image_raw', Image), ('camera/gripper/image_raw', Image),
                            ('joint_states', JointState), ('tcp_pose', PoseStamped)):
            self.create_subscription(kind, topic, self._recorder(topic), 10)
        for topic in ('instruction', 'evaluation/summary'):
            self.create_subscription(String, topic, self._recorder(topic), LATCHED)
        self.create_subscription(String, 'evaluation/chain_result', self._recorder('evaluation/chain_result'), 10)
        self.actions = self.create_publisher(ArmAction, 'arm_action', 10) if answers else None

    def _recorder(self, topic: str):
        def record(msg: object) -> None:
            with self.lock:
                self.messages[topic].append(msg)
        return record

    def latest(self, topic: str) -> object | None:
        with self.lock:
            return self.messages[topic][-1] if self.messages[topic] else None

    def frame_stamp(self) -> int:
        frame = self.latest('camera/static/image_raw')
        return -1 if frame is None else stamp_ns(frame.header.stamp)

    def answer(self, delta: list[float], *, hold: bool = False, stamp: int | None = None) -> int:
        """Send an action for the current frame (or ``stamp``); return the stamp of the next frame (-1: none)."""
        current = self.frame_stamp()
        action = ArmAction(header=Header(stamp=stamp_msg(current if stamp is None else stamp)),
                           delta=np.asarray(delta, np.float32), gripper=ArmAction.GRIPPER_OPEN, hold=hold)
        self.actions.publish(action)
        wait_for(lambda: self.frame_stamp() != current, 10.0)
        return self.frame_stamp() if self.frame_stamp() != current else -1


def test_bridge_publishes_observations_and_steps_once_per_answer(start_node, rclpy_context):
    bridge = start_node(BRIDGE, params={'republish_period_s': 0.1, 'instruction': 'open the drawer'})
    robot = Robot(rclpy_context)
    with BackgroundSpinner(robot, context=rclpy_context):
        assert wait_for(lambda: robot.latest('tcp_pose') is not None and robot.latest('instruction') is not None
                        and robot.actions.get_subscription_count(), STARTUP_S), bridge.log
        static, gripper = robot.latest('camera/static/image_raw'), robot.latest('camera/gripper/image_raw')
        assert (static.encoding, static.height, static.width) == ('rgb8', 200, 200)
        assert (gripper.encoding, gripper.height, gripper.width) == ('rgb8', 84, 84)
        joints = robot.latest('joint_states')
        assert len(joints.name) == 9 and np.all(np.isfinite(joints.position))
        assert robot.latest('instruction').data == 'open the drawer'

        # Lock-step: without an answer the frame is only re-sent, with its original stamp.
        first = robot.frame_stamp()
        count = len(robot.messages['camera/static/image_raw'])
        assert wait_for(lambda: len(robot.messages['camera/static/image_raw']) > count + 2, 5.0)
        assert robot.frame_stamp() == first

        start_x = robot.latest('tcp_pose').pose.position.x
        for _ in range(6):
            assert robot.answer([1.0, 0, 0, 0, 0, 0]) != -1, bridge.log
        moved = robot.latest('tcp_pose').pose.position.x - start_x
        assert 2 * POS_SCALE < moved < 6 * POS_SCALE * 1.2, moved  # +x at 0.02 m per step, IK lag allowed

        assert robot.answer([0.0] * 6, stamp=first) == -1  # answers an old frame: ignored
        for _ in range(5):  # holds step with a zero delta: the arm settles on its target and stays
            assert robot.answer([1.0] * 6, hold=True) != -1
        before = robot.latest('tcp_pose').pose.position.x
        assert robot.answer([1.0] * 6, hold=True) != -1
        assert abs(robot.latest('tcp_pose').pose.position.x - before) < POS_SCALE / 4
        assert robot.answer([np.nan] * 6) != -1  # NaN is treated as a hold, never reaches the simulator
        assert np.all(np.isfinite(robot.latest('joint_states').position))
    assert bridge.running()
    assert bridge.stop() == 0, bridge.log
    assert 'never retrieved' not in bridge.log  # a clean shutdown (run_node spins one thread: no pool left with queued callbacks)


def test_bridge_evaluates_chains_against_the_policy_node(start_node, rclpy_context, tiny_checkpoint):
    """Two processes, lock-step: the chain runs its subtask step budget, GFLOPs come from ExitStats."""
    policy = start_node('deer_ros.nodes.policy_node', params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint)})
    bridge = start_node(BRIDGE, params={'evaluate_on_start': True, 'shutdown_after_evaluation': True,
                                        'num_chains': 1, 'max_steps': 4})
    robot = Robot(rclpy_context, answers=False)
    with BackgroundSpinner(robot, context=rclpy_context):
        assert wait_for(lambda: robot.latest('evaluation/summary') is not None, STARTUP_S), bridge.log + policy.log
        summary = json.loads(robot.latest('evaluation/summary').data)
        assert wait_for(lambda: robot.latest('evaluation/chain_result') is not None, 5.0)
        chain = json.loads(robot.latest('evaluation/chain_result').data)
    assert 'error' not in summary, summary
    assert summary['num_chains'] == 1 and set(summary['success_rates']) == {'1', '2', '3', '4', '5'}
    assert 0.0 <= summary['average_length'] <= 5.0
    # An untrained policy cannot finish a subtask in 4 steps (8 cm of motion at most): the chain ends there.
    assert chain['steps'] == [4] and chain['successes'] == 0
    gflops = summary['gflops']
    # In an evaluation only policy actions step the simulator (holds are waited through): 4 steps at full depth,
    # the tiny model's cost, 6 of 6 exits.
    # ExitStats travel on their own topic; the bridge waits for the stats of every executed step.
    assert gflops['policy_steps'] == 4 and gflops['mean_exit'] == 6.0 and gflops['exit_histogram'] == {'6': 1.0}
    assert 0 < gflops['latency_ms_p50'] <= gflops['latency_ms_p99']
    assert gflops['avg_llm_gflops'] == gflops['peak_llm_gflops'] > 0
    assert wait_for(lambda: not bridge.running(), 20.0), 'shutdown_after_evaluation should end the bridge'
    assert bridge.stop() == 0, bridge.log
    assert 'policy state reset (service)' in policy.log


def _static_stamps(robot: Robot) -> int:
    """Distinct frames the bridge has published: one per simulator step in an evaluation."""
    with robot.lock:
        return len({stamp_ns(msg.header.stamp) for msg in robot.messages['camera/static/image_raw']})


def _summary(robot: Robot) -> dict | None:
    latest = robot.latest('evaluation/summary')
    return None if latest is None else json.loads(latest.data)


def test_evaluation_survives_the_policy_node_restarted_mid_chain(start_node, rclpy_context, tiny_checkpoint,
                                                                  tmp_path):
    """Kill the policy (SIGKILL: no goodbye) mid-chain and start a new one: the bridge notices the new node,
    starts the chain again from its initial state (the history was lost with the old node) and marks it."""
    policy_params = {**FAST_POLICY, 'checkpoint': str(tiny_checkpoint)}
    policy = start_node('deer_ros.nodes.policy_node', params=policy_params)
    results = tmp_path / 'chains.jsonl'
    bridge = start_node(BRIDGE, params={'evaluate_on_start': True, 'shutdown_after_evaluation': True,
                                        'num_chains': 1, 'max_steps': 40, 'results_file': str(results)})
    robot = Robot(rclpy_context, answers=False)
    with BackgroundSpinner(robot, context=rclpy_context):
        assert wait_for(lambda: _static_stamps(robot) >= 5, STARTUP_S), bridge.log + policy.log
        policy.process.kill()
        policy.process.wait()
        assert _summary(robot) is None, 'the chain ended before the policy was killed'
        restarted = start_node('deer_ros.nodes.policy_node', params=policy_params)
        assert wait_for(lambda: _summary(robot) is not None, STARTUP_S), bridge.log + restarted.log
        summary = _summary(robot)
        assert wait_for(lambda: robot.latest('evaluation/chain_result') is not None, 5.0)
        chain = json.loads(robot.latest('evaluation/chain_result').data)
    assert 'error' not in summary and summary['num_failed'] == 0, summary
    assert summary['restarted_chains'] == {'0': 1} and chain['restarted'] == 1
    assert chain['steps'] == [40] and summary['gflops']['policy_steps'] == 40  # the whole chain, once, afresh
    assert 'policy lost: a new node publishes /arm_action' in bridge.log
    assert recorded(results)[0]['restarted'] == 1
    assert wait_for(lambda: not bridge.running(), 20.0) and bridge.stop() == 0, bridge.log


def test_a_killed_bridge_keeps_its_finished_chains_and_a_resumed_run_completes(start_node, rclpy_context,
                                                                               tiny_checkpoint, tmp_path):
    policy = start_node('deer_ros.nodes.policy_node', params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint)})
    results = tmp_path / 'chains.jsonl'
    evaluation = {'evaluate_on_start': True, 'num_chains': 2, 'max_steps': 4, 'results_file': str(results)}
    first = start_node(BRIDGE, params=evaluation)
    assert wait_for(lambda: results.exists() and 0 in recorded(results), STARTUP_S), first.log + policy.log
    first.process.kill()
    first.process.wait()
    kept = recorded(results)
    second = start_node(BRIDGE, params={**evaluation, 'resume': True, 'shutdown_after_evaluation': True})
    assert wait_for(lambda: not second.running(), STARTUP_S), second.log + policy.log
    assert second.stop() == 0, second.log
    assert f'({len(kept)} of 2 chains recorded)' in second.log
    lines = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert sorted(line['index'] for line in lines) == [0, 1]  # chain 0 was kept, not run again
    assert all(line['error'] is None and line['steps'] == [4] for line in lines)
    assert lines[0] == kept[0]


def test_a_silent_then_vanished_policy_fails_chains_and_the_bridge_exits_nonzero(start_node, rclpy_context,
                                                                                  tmp_path):
    """A publisher that never answers: the chain fails after action_timeout_s (re-sends included) and the next
    one runs; then nothing publishes arm_action any more and none comes back: the run stops, exit code 1."""
    bridge = start_node(BRIDGE, params={'evaluate_on_start': True, 'shutdown_after_evaluation': True,
                                        'num_chains': 3, 'max_steps': 4, 'action_timeout_s': 1.0,
                                        'policy_restart_timeout_s': 1.0, 'results_file': str(tmp_path / 'c.jsonl')})
    robot = Robot(rclpy_context, answers=True)  # publishes on arm_action, never answers
    with BackgroundSpinner(robot, context=rclpy_context):
        assert wait_for(lambda: robot.latest('evaluation/chain_result') is not None, STARTUP_S), bridge.log
    # Destroyed between spins: an entity destroyed while another thread waits on it breaks that wait (rclpy).
    robot.destroy_publisher(robot.actions)
    with BackgroundSpinner(robot, context=rclpy_context):
        assert wait_for(lambda: _summary(robot) is not None, STARTUP_S), bridge.log
        summary = _summary(robot)
    first = summary['failed_chains'][0]
    assert first['index'] == 0 and first['error'].startswith('PolicyTimeout: no action for the frame stamped')
    assert 're-sent every 0.2 s (the policy sent nothing)' in first['error']
    assert 'no node publishes /arm_action: is deer_policy running?' in summary['error']
    assert summary['num_chains'] < 3 and summary['num_failed'] >= 1
    assert wait_for(lambda: not bridge.running(), 20.0)
    assert bridge.stop() == 1, bridge.log
