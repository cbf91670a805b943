"""``calvin_bridge``: a CALVIN-style simulator behind ROS topics, and CALVIN chain evaluation through them.

One thread owns the simulator (pybullet is not thread-safe) and runs either
free play (apply each incoming action, publish the new observation) or an
evaluation (``deer_ros.benchmark.evaluation.run_chain`` with the ROS round trip as
its policy). ROS callbacks only hand actions and exit stats to that thread, so one
executor thread serves them all (run_node's single-threaded executor, which
unlike rclpy's multi-threaded one does not poll a core away from the simulator;
measured 79-83 % of the in-process steps/s against 72-76 % with three threads).
Lock-step vs fixed rate: see :mod:`deer_ros.nodes.bridge`.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from deer_ros.benchmark.backends import build_sim_factory
from deer_ros.benchmark.chains import DEFAULT_NUM_CHAINS, DEFAULT_SEED, Chain, disjoint_subsets
from deer_ros.benchmark.evaluation import ChainResult, Simulator, recorded_results, run_chain, run_settings
from deer_ros.benchmark.protocols import DEER_ROS, PROTOCOLS, ChainProtocol
from deer_ros.benchmark.results_file import ResultsFile
from deer_ros.calvin_layout import EP_LEN
from deer_ros.msg import ArmAction, ExitStats
from deer_ros.nodes.bridge import (
    STEP_MODES,
    ActionMailbox,
    EvaluationTally,
    Interrupted,
    RosPolicy,
    StepStats,
    received_action,
    run_chain_surviving,
)
from deer_ros.nodes.image_conversion import (
    COMPRESSED_FORMATS,
    TRANSPORTS,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
    transport_topic,
)
from deer_ros.nodes.messages import joint_state_msg, stamp_ns, tcp_pose_msg
from deer_ros.nodes.node_main import run_node
from deer_ros.nodes.parameters import ParamSpec, check_values, declare
from deer_ros.nodes.qos import EXIT_STATS_QOS
from deer_ros.sim.interface import Obs
from deer_ros.sim.layout import SCENES

NODE_NAME = 'calvin_bridge'
RAW_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'yuv422')  # what a camera driver may send; the policy reads all
STATS_DISCOVERY_GRACE_S = 5.0  # after the policy's actions are matched, how long to wait for its ExitStats

PARAMETERS = (
    ParamSpec('backend', 'embedded', 'Simulator: embedded (deer_ros.sim, pybullet on CPU) or calvin (the real '
              'calvin_env, installed separately).', read_only=True, choices=('embedded', 'calvin')),
    ParamSpec('scene', 'D', 'Scene variant (A-D) of the embedded simulator and of chain start states (the calvin '
              'backend runs D only).', read_only=True, choices=tuple(sorted(SCENES))),
    ParamSpec('calvin_dataset', '', 'calvin backend: CALVIN split root holding validation/.hydra/merged_config.yaml; '
              "empty = the same env config composed from calvin_env's conf/.", read_only=True),
    ParamSpec('use_egl', False, 'calvin backend: render with EGL (GPU) instead of on the CPU.', read_only=True),
    ParamSpec('protocol', DEER_ROS.name, "Chain protocol, as deer-ros evaluate --protocol: deer_ros (the project's "
              "seeded chains and phrases) or calvin (CALVIN's official 1000 chains, its annotations and scene-D start "
              'states; scene D, chain_seed 0 and max_steps 360 only).', read_only=True,
              choices=tuple(sorted(PROTOCOLS))),
    ParamSpec('step_mode', 'lockstep', 'lockstep: step the simulator once per policy action (CALVIN protocol, '
              'independent of inference speed); fixed_rate: step at 30 Hz with the newest action or a hold.',
              read_only=True, choices=STEP_MODES),
    ParamSpec('action_timeout_s', 30.0, 'Lock-step evaluation: a chain fails (recorded with the reason; the '
              'evaluation goes on) when the policy answers its current frame for this long, re-sends included.',
              limits=(0.1, 3600.0)),
    ParamSpec('policy_restart_timeout_s', 120.0, 'Evaluation: when the policy is lost mid-chain (nothing publishes '
              'arm_action, or a new node does), wait this long for one; the chain then starts again from its '
              'initial state, else it fails and the evaluation ends.', limits=(0.1, 86400.0)),
    ParamSpec('republish_period_s', 0.2, 'Lock-step: re-send the current frame (same stamp) this often while '
              'waiting, so the policy does not see its inputs go stale.', read_only=True, limits=(0.01, 10.0)),
    ParamSpec('instruction', '', 'Instruction published (latched) during free play; evaluation publishes each '
              "subtask's own."),
    ParamSpec('evaluate_on_start', False, 'Start an evaluation run as soon as the simulator is up.',
              read_only=True),
    ParamSpec('num_chains', 10, 'Chains per evaluation run (CALVIN reports 1000, DeeR 224).',
              limits=(1, DEFAULT_NUM_CHAINS)),
    ParamSpec('chain_offset', 0, 'First chain of the fixed list (keep tuning and reporting slices disjoint).',
              limits=(0, DEFAULT_NUM_CHAINS - 1)),
    ParamSpec('chain_seed', DEFAULT_SEED, 'Seed of the fixed chain list.', limits=(0, 2 ** 31 - 1)),
    ParamSpec('max_steps', EP_LEN, 'Step budget per subtask (CALVIN: 360 = 12 s at 30 Hz).', limits=(1, 100000)),
    ParamSpec('shutdown_after_evaluation', False, 'Exit once an evaluation run finished (for benchmark launches): '
              'exit code 0 only if every chain ran to its end.', read_only=True),
    ParamSpec('results_file', '', 'Evaluation: JSON Lines file each chain is appended to as it ends (a killed run '
              'keeps what it finished); empty = a new file $ROS_HOME/deer_ros/evaluations/calvin_bridge_<time>'
              '.chains.jsonl (ROS_HOME: ~/.ros).'),
    ParamSpec('resume', False, 'Evaluation: continue results_file (which must be given): its finished chains are '
              'kept, the others run (failed ones again); the settings must be those it was started with.'),
    ParamSpec('policy_label', '', 'Names the policy under evaluation in the results file (the bridge cannot see '
              'it), so a resume with another policy is refused.'),
    ParamSpec('frame_id', 'world', 'frame_id of the TCP pose.'),
    ParamSpec('image_transport', 'raw', 'Camera frames as image_transport sends them: raw = sensor_msgs/Image on '
              'camera/<static|gripper>/image_raw; compressed = CompressedImage on <that topic>/compressed (the '
              "policy's camera.<static|gripper>.transport must match).", read_only=True, choices=tuple(TRANSPORTS)),
    ParamSpec('compressed_format', 'jpeg', 'image_transport compressed: codec of the frames (jpeg at quality 95, '
              'or lossless png).', read_only=True, choices=COMPRESSED_FORMATS),
    ParamSpec('image_encoding', 'rgb8', 'image_transport raw: wire encoding of the frames, to exercise what '
              'other camera drivers send.', read_only=True, choices=RAW_ENCODINGS),
)


def evaluation_chains(protocol: ChainProtocol, tasks: list[str], scene: str, seed: int, max_steps: int, num: int,
                      offset: int) -> list[Chain]:
    """The slice of ``protocol``'s fixed list an evaluation runs, as ``deer-ros evaluate`` takes it; ``ValueError``
    for settings the protocol refuses."""
    protocol.check(scene, max_steps)
    [chains] = disjoint_subsets(protocol.chains(tasks, seed), [num], offset)
    return chains


class CalvinBridgeNode(Node):
    """Publishes cameras, joint states, TCP pose and instruction; applies ArmActions; runs evaluations."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.values = declare(self, PARAMETERS)
        self.sim_factory, self.tasks = build_sim_factory(
            self.values['backend'], self.values['scene'], use_egl=self.values['use_egl'],
            calvin_dataset=Path(self.values['calvin_dataset']) if self.values['calvin_dataset'] else None)
        self.mailbox = ActionMailbox()
        self.step_stats = StepStats()
        self._stop = threading.Event()
        self._evaluate = threading.Event()
        self._instruction: str | None = None
        self._last_frame: tuple[Obs, Header] | None = None
        self._chain_policy: set[bytes] = set()  # arm_action endpoints when the current chain (re)started
        self.evaluating = False
        self.done = Future()  # completes when the simulator thread ends

        group = ReentrantCallbackGroup()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        transport = self.values['image_transport']
        self.static_pub, self.gripper_pub = (
            self.create_publisher(TRANSPORTS[transport], transport_topic(f'camera/{camera}/image_raw', transport), 5)
            for camera in ('static', 'gripper'))
        self.joint_pub = self.create_publisher(JointState, 'joint_states', 5)
        self.tcp_pub = self.create_publisher(PoseStamped, 'tcp_pose', 5)
        self.instruction_pub = self.create_publisher(String, 'instruction', latched)
        self.chain_pub = self.create_publisher(String, 'evaluation/chain_result', 100)
        self.summary_pub = self.create_publisher(String, 'evaluation/summary', latched)
        self.action_sub = self.create_subscription(ArmAction, 'arm_action', self._on_action, 10,
                                                   callback_group=group)
        self.stats_sub = self.create_subscription(ExitStats, 'exit_stats', self._on_exit_stats, EXIT_STATS_QOS,
                                                  callback_group=group)
        self.create_service(Trigger, '~/start_evaluation', self._on_start_evaluation, callback_group=group)
        self.reset_client = self.create_client(Trigger, 'deer_policy/reset', callback_group=group)
        self.add_on_set_parameters_callback(self._validate_parameters)

        if self.values['evaluate_on_start']:
            self._evaluate.set()
        self._thread = threading.Thread(target=self._run, name='simulator', daemon=True)
        self._thread.start()

    # ---- ROS callbacks: hand over only
    def _on_action(self, msg: ArmAction) -> None:
        self.mailbox.put(received_action(msg.delta, msg.gripper, msg.hold, stamp_ns(msg.header.stamp)))

    def _on_exit_stats(self, msg: ExitStats) -> None:
        self.step_stats.record(stamp_ns(msg.header.stamp), msg.llm_gflops, msg.total_gflops, msg.exit_index,
                               msg.step_latency_ms)

    def _on_start_evaluation(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.evaluating or self._evaluate.is_set():
            response.success, response.message = False, 'an evaluation is already running'
        else:
            self._evaluate.set()
            response.success = True
            response.message = (f'evaluating {self.get_parameter("num_chains").value} chains from offset '
                                f'{self.get_parameter("chain_offset").value}')
        return response

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        problem = check_values(PARAMETERS, parameters)
        return SetParametersResult(successful=problem is None, reason=problem or '')

    # ---- publishing (simulator thread)
    def _announce(self, instruction: str) -> None:
        if instruction != self._instruction:
            self.instruction_pub.publish(String(data=instruction))
            self._instruction = instruction

    def _publish(self, obs: Obs) -> int:
        header = Header(stamp=self.get_clock().now().to_msg())
        self._last_frame = (obs, header)
        self._send(obs, header)
        return stamp_ns(header.stamp)

    def _republish(self) -> None:
        if self._last_frame is not None:
            self._send(*self._last_frame)

    def _send(self, obs: Obs, header: Header) -> None:
        images = obs['rgb_obs']
        self.static_pub.publish(self._image_msg(images['rgb_static'], Header(stamp=header.stamp,
                                                                             frame_id='static_camera')))
        self.gripper_pub.publish(self._image_msg(images['rgb_gripper'], Header(stamp=header.stamp,
                                                                               frame_id='gripper_camera')))
        robot_obs = np.asarray(obs['robot_obs'], dtype=np.float64)
        self.joint_pub.publish(joint_state_msg(robot_obs, header))
        self.tcp_pub.publish(tcp_pose_msg(robot_obs, Header(stamp=header.stamp,
                                                            frame_id=self.get_parameter('frame_id').value)))

    def _image_msg(self, image: np.ndarray, header: Header) -> Image | CompressedImage:
        """One camera frame in the configured transport (``image_transport``) and its codec or encoding."""
        if self.values['image_transport'] == 'compressed':
            return rgb_to_compressed_msg(image, header, format=self.values['compressed_format'])
        return rgb_to_image_msg(image, header, encoding=self.values['image_encoding'])

    def _reset_policy(self) -> None:
        """Call the policy's reset service; a missing service (another policy) is worth a warning, not a stop."""
        if not self.reset_client.service_is_ready():
            self.get_logger().warning(f'{self.reset_client.srv_name} not available: policy not reset',
                                      throttle_duration_sec=10.0)
            return
        done = threading.Event()
        future = self.reset_client.call_async(Trigger.Request())
        future.add_done_callback(lambda _: done.set())
        if not done.wait(5.0):
            self.get_logger().warning('policy reset service did not answer within 5 s')

    # ---- simulator thread
    def _policy(self, interrupted: Any, *, evaluating: bool) -> RosPolicy:
        """Free play waits forever and executes holds; an evaluation times out, steps on policy actions only and
        notices a lost policy."""
        return RosPolicy(self._announce, self._publish, self._republish, self._reset_policy, interrupted,
                         self.mailbox, mode=self.values['step_mode'],
                         timeout=self.get_parameter('action_timeout_s').value if evaluating else float('inf'),
                         republish_period=self.values['republish_period_s'], holds_step=not evaluating,
                         policy_problem=self._policy_problem if evaluating else lambda: None)

    def _run(self) -> None:
        try:
            sim = self.sim_factory()
        except Exception as error:  # noqa: BLE001 - report why the simulator is missing, then stop the node
            self.get_logger().fatal(f'cannot build the {self.values["backend"]} simulator: {error}')
            self._stop.set()
            self.done.set_result(False)
            return
        ok = True
        try:
            obs = sim.env.reset()
            self.get_logger().info(f'{self.values["backend"]} simulator ready ({self.values["step_mode"]})')
            while not self._stop.is_set():
                if self._evaluate.is_set():
                    evaluated = self._run_evaluation(sim)
                    obs = sim.env.get_obs()
                    if self.values['shutdown_after_evaluation']:
                        ok = evaluated  # the exit code tells a benchmark launch whether every chain ran
                        break
                try:
                    obs = self._free_play(sim, obs)
                except Interrupted:
                    continue
        except Interrupted:
            pass
        except Exception:
            # Publishing fails once the context is shut down (Ctrl-C): only a failure while running is an error.
            ok = not self.context.ok()
            if not ok:
                raise
        finally:
            sim.env.close()
            self._stop.set()
            self.done.set_result(ok)

    def _free_play(self, sim: Simulator, obs: Obs) -> Obs:
        """Apply actions forever (until interrupted), in the configured step mode."""
        policy = self._policy(lambda: self._stop.is_set() or self._evaluate.is_set(), evaluating=False)
        while True:
            action = policy.step(obs, self.get_parameter('instruction').value)
            obs, *_ = sim.env.step(action)

    def _policy_gids(self) -> set[bytes]:
        return {bytes(info.endpoint_gid) for info in self.get_publishers_info_by_topic(self.action_sub.topic_name)}

    def _policy_problem(self) -> str | None:
        """Why the policy a chain started with cannot answer any more, or ``None``: checked while a frame waits.

        A new publisher on arm_action means a policy (re)started: whatever it does, the history of this chain
        is not in it. A publisher that went away is noticed when its endpoint is gone (at once for a stopped
        node; a killed one lingers until DDS gives up on it, or its answers simply stop: ``action_timeout_s``).
        """
        gids = self._policy_gids()
        topic = self.action_sub.topic_name
        if not gids:
            return f'no node publishes {topic}: is deer_policy running?'
        if gids - self._chain_policy:
            return f'a new node publishes {topic} (a policy restarted?): the history of this chain is gone'
        return None

    def _wait_for_policy(self, timeout: float = float('inf')) -> bool:
        """Until some node publishes actions (a policy may take minutes to load its model), then its exit
        statistics; ``False`` if none did within ``timeout``.

        Actions and ExitStats are separate DDS endpoints, matched one after the other. ExitStats are kept
        for late readers (``EXIT_STATS_QOS``), so a late match no longer loses the first steps' figures;
        waiting here for the stats writer tells a policy that publishes none (not a DeeR policy) apart:
        it is evaluated after a short grace, without GFLOPs, and the log says so.
        """
        topic = self.action_sub.topic_name
        deadline = time.monotonic() + timeout
        while self.action_sub.get_publisher_count() == 0:
            if time.monotonic() > deadline:
                return False
            if self._stop.wait(0.5):
                raise Interrupted()
            self.get_logger().info(f'waiting for a policy publishing on {topic}', throttle_duration_sec=10.0)
        stats = self.stats_sub.topic_name
        grace = time.monotonic() + STATS_DISCOVERY_GRACE_S
        while self.stats_sub.get_publisher_count() == 0:
            if time.monotonic() > grace:
                self.get_logger().warning(f'no publisher on {stats}: evaluating without GFLOPs figures')
                break
            if self._stop.wait(0.1):
                raise Interrupted()
        if not self.reset_client.wait_for_service(timeout_sec=5.0):
            self.get_logger().warning(f'{self.reset_client.srv_name} not available: evaluating without policy '
                                      'resets')
        return True

    def _policy_back(self, reason: str) -> bool:
        """After the policy was lost mid-chain: say so, wait for one (``policy_restart_timeout_s``)."""
        timeout = self.get_parameter('policy_restart_timeout_s').value
        self.get_logger().warning(f'policy lost: {reason}; waiting up to {timeout:g} s for a policy, then the chain '
                                  'starts again from its initial state')
        if self._policy_gids() - self._chain_policy:  # a new one is already there
            back = self._wait_for_policy(0.0)
        else:
            # the old endpoint may linger: wait for it to go, or for a new one
            deadline = time.monotonic() + timeout
            while not (self._policy_gids() - self._chain_policy):
                if time.monotonic() > deadline:
                    break
                if self._stop.wait(0.2):
                    raise Interrupted()
            back = bool(self._policy_gids() - self._chain_policy) and self._wait_for_policy(0.0)
        if back:
            self.get_logger().info('a policy publishes arm_action again: the chain starts again')
        else:
            self.get_logger().error(f'no policy came back within {timeout:g} s')
        return back

    def _attempt(self, sim: Simulator, policy: RosPolicy, chain: Chain, index: int, max_steps: int) -> ChainResult:
        """One run of a chain from its initial state, against the policy publishing now."""
        policy.executed.clear()
        self._chain_policy = self._policy_gids()
        try:
            return run_chain(sim, policy, chain, index, max_steps, PROTOCOLS[self.values['protocol']])
        except Exception as error:
            if self._stop.is_set() or not self.context.ok():  # shutting down: not the chain's fault
                raise Interrupted() from error
            raise

    def _results_file(self, chains: list[Chain], settings: dict[str, Any]) -> ResultsFile:
        """The evaluation's results file (``results_file``, else a new one under ROS_HOME), opened or resumed."""
        path, resume = self.get_parameter('results_file').value, self.get_parameter('resume').value
        if not path:
            if resume:
                raise ValueError('resume:=true needs the results_file to continue')
            home = Path(os.environ.get('ROS_HOME') or Path.home() / '.ros')
            path = home / 'deer_ros' / 'evaluations' / f'calvin_bridge_{time.strftime("%Y%m%d_%H%M%S")}.chains.jsonl'
        return ResultsFile.open(path, settings, resume)

    def _run_evaluation(self, sim: Simulator) -> bool:
        """One evaluation run: every chain is recorded as it ends; ``True`` if every chain ran to its end."""
        self.evaluating = True
        self._evaluate.clear()
        num, offset, seed, max_steps = (self.get_parameter(name).value
                                        for name in ('num_chains', 'chain_offset', 'chain_seed', 'max_steps'))
        protocol = PROTOCOLS[self.values['protocol']]
        settings = {'evaluator': NODE_NAME, 'policy': self.get_parameter('policy_label').value,
                    'backend': self.values['backend'], 'scene': self.values['scene'],
                    'step_mode': self.values['step_mode'], 'chain_offset': offset, 'chain_seed': seed}
        tally = EvaluationTally(settings)
        try:
            chains = evaluation_chains(protocol, self.tasks, self.values['scene'], seed, max_steps, num, offset)
            settings.update(run_settings(chains, max_steps, protocol))  # records the protocol
            results = self._results_file(chains, settings)
            done = recorded_results(results, chains, max_steps, first_index=offset)
            for index in sorted(done):
                self.chain_pub.publish(String(data=json.dumps(tally.add_record(results.records[index]))))
            self.get_logger().info(f'results file: {results.path}' + (f' ({len(done)} of {len(chains)} chains '
                                                                       'recorded)' if done else ''))
            policy = self._policy(self._stop.is_set, evaluating=True)
            self._wait_for_policy()
            self.get_logger().info(f'evaluating {len(chains) - len(done)} chains from offset {offset}')
            stats_timeout = self.get_parameter('action_timeout_s').value
            restart_timeout = self.get_parameter('policy_restart_timeout_s').value
            for index, chain in enumerate(chains, start=offset):
                if index in done:
                    continue
                if self.action_sub.get_publisher_count() == 0 and not self._wait_for_policy(restart_timeout):
                    tally.error = f'no node publishes {self.action_sub.topic_name}: is deer_policy running?'
                    break
                started = time.monotonic()
                outcome = run_chain_surviving(lambda: self._attempt(sim, policy, chain, index, max_steps),
                                              index, chain, self._policy_back)
                result = outcome.result
                rows = (self.step_stats.collect(list(policy.executed), timeout=stats_timeout)
                        if result.error is None else np.zeros((0, len(StepStats.COLUMNS))))
                chain_json = tally.add(result, rows, outcome.restarted, round(time.monotonic() - started, 3))
                results.append(tally.record(index))
                self.chain_pub.publish(String(data=json.dumps(chain_json)))
                restarted = f' (started again {outcome.restarted} times: policy lost)' if outcome.restarted else ''
                if result.error is None:
                    self.get_logger().info(f'chain {index}: {result.successes}/5 subtasks{restarted}')
                else:
                    self.get_logger().error(f'chain {index} failed: {result.error}')
                if outcome.policy_gone:
                    tally.error = f'the policy is gone: {result.error}'
                    break
        except (FileExistsError, ValueError, OSError) as failure:  # protocol refuses, or results file unwritable
            tally.error = str(failure)
        finally:
            self.evaluating = False
        if tally.error is not None:
            self.get_logger().error(f'evaluation stopped early: {tally.error}')
        self.summary_pub.publish(String(data=json.dumps(tally.summary())))
        self.get_logger().info('evaluation finished\n' + tally.format_table())
        self._announce(self.get_parameter('instruction').value)
        return tally.ok

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)


# Fast DDS over shared memory stops delivering this node's large frames (a 120 KB image) to every later subscriber
# once a subscriber was killed (SIGKILL) while frames went to it: the dead process's port keeps the writer's buffers
# (eProsima/Fast-DDS#5469; a restarted policy then never sees a static frame). UDP keeps no such state and carries
# ~4 MB/s of frames on one host easily. Set the variable yourself to choose another transport.
FASTDDS_TRANSPORTS = ('FASTDDS_BUILTIN_TRANSPORTS', 'UDPv4')


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault(*FASTDDS_TRANSPORTS)  # read when rclpy creates the participant
    sys.exit(run_node(CalvinBridgeNode, NODE_NAME, on_stop=CalvinBridgeNode.stop,
                      until=lambda node: node.done, args=args))


if __name__ == '__main__':
    main()
