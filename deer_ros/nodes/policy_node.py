"""``deer_policy``: the DeeR early-exit policy as a ROS 2 node, under budgets set live with ``ros2 param set``.

Thin by design: :class:`~deer_ros.policy.runtime.PolicyRuntime` owns the model
and budgets, :class:`~deer_ros.nodes.control.PolicyController` decides each
tick. This module wires topics, services, parameters and timers.

One thread: the node runs under rclpy's ``SingleThreadedExecutor`` (see
:func:`deer_ros.nodes.node_main.run_node`). Subscriptions only decode, check
and store; the control tick runs inference, on the control timer or at once
when a message completes a new frame; services and parameters are answered
between callbacks. Messages that arrive during a step wait in their DDS
queues; the ``~/reset`` service queue is deep enough for a storm of
concurrent calls. Both timers use the steady clock.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from deer_ros.budget.caps import COST_UNIT_LABELS, COST_UNITS, Budget, BudgetSolution, budget_in_gflops, to_gflops
from deer_ros.budget.exit_criterion import METRICS
from deer_ros.budget.solver import BudgetError
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, HOME_TCP_POSE, STATIC_CAMERA_SHAPE
from deer_ros.msg import ArmAction, ExitStats
from deer_ros.nodes.control import (
    GRIPPER_CAMERA,
    INSTRUCTION,
    JOINT_STATES,
    STALE_POLICIES,
    STATIC_CAMERA,
    TCP_POSE,
    Decision,
    PolicyController,
    check_image,
)
from deer_ros.nodes.diagnostics import PolicyDiagnostics
from deer_ros.nodes.image_conversion import TRANSPORTS, msg_to_rgb, transport_topic
from deer_ros.nodes.messages import arm_action_msg, exit_stats_msg, stamp_msg, stamp_ns, tcp_pose_array, twist_msg
from deer_ros.nodes.node_main import run_node
from deer_ros.nodes.parameters import ParamSpec, check_values, declare
from deer_ros.nodes.qos import EXIT_STATS_QOS
from deer_ros.nodes.robot_state import check_joint_positions, check_tcp_pose
from deer_ros.policy.deer_policy import DeerPolicy
from deer_ros.policy.early_exit import PRECISIONS
from deer_ros.policy.ready_pose import ReadyPose
from deer_ros.resources import resolve_checkpoint

NODE_NAME = 'deer_policy'
FINAL_HOLD_ACK_S = 2.0  # how long stop() waits for subscribers to acknowledge the final hold
# What a budget is built from (budget.cost_unit is read-only: it is here so each solve reads it)
BUDGET_PARAMETERS = ('budget.avg_gflops', 'budget.peak_gflops', 'budget.max_memory_mb', 'budget.peak_ms',
                     'budget.avg_ms', 'budget.cost_unit')
_MS_LIMITS = (0.0, 1.0e6)
_GFLOPS_LIMITS = (0.0, 1.0e6)
ANSWERS = ('action', 'ready_pose', 'reanswer')  # decisions that answer a frame
# A frame complete on arrival is acted on at once when the last answer is this many control periods old: a camera
# at the control rate arrives up to a few ms early, and a frame left to the next tick is mostly superseded by then.
ARRIVAL_PERIODS = 0.9
_SHOWN_INSTRUCTION_CHARS = 200  # of an instruction in the log: a fuzzed 1 MB one must not flood it
# The ~/reset service keeps this many requests (and responses) queued: rclpy's default of 10 dropped the rest of a
# burst of concurrent calls while a step ran, and their callers hung.
# (parameter prefix camera.<name>, input name, expected shape) of each camera.
CAMERAS = (('static', STATIC_CAMERA, STATIC_CAMERA_SHAPE), ('gripper', GRIPPER_CAMERA, GRIPPER_CAMERA_SHAPE))
RESET_SERVICE_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)

PARAMETERS = (
    ParamSpec('budget.avg_gflops', 0.0, 'Average GFLOPs per step the exit thresholds are solved for; '
              '0 = no average budget (every step runs to the deepest exit the caps allow). '
              'Infeasible values are rejected with the feasible range.', limits=_GFLOPS_LIMITS),
    ParamSpec('budget.peak_gflops', 0.0, 'Hard per-step GFLOPs limit: layers past the deepest exit that fits '
              'are dropped (raising it reloads them); 0 = no limit.', limits=_GFLOPS_LIMITS),
    ParamSpec('budget.max_memory_mb', 0.0, 'Parameter memory limit in MiB, met by dropping layers like the '
              'peak limit; 0 = no limit.', limits=(0.0, 1.0e7)),
    ParamSpec('budget.peak_ms', 0.0, 'Hard per-step time limit in ms: the model is capped at the deepest exit whose '
              'measured p99 step time (both cameras + decoder + heads, on this device, with this checkpoint) fits; '
              'combines with the other budgets (the smallest cap wins). 0 = no limit. Infeasible values are '
              'rejected with the feasible range.', limits=_MS_LIMITS),
    ParamSpec('budget.avg_ms', 0.0, 'Average step time in ms the exit thresholds are solved for, like '
              'budget.avg_gflops but on the measured mean step time per exit; with both, the thresholds meet '
              'both. 0 = no average time budget.', limits=_MS_LIMITS),
    ParamSpec('budget.cost_unit', 'gflops', 'Unit of budget.avg_gflops and budget.peak_gflops: gflops (deer_ros '
              'counts two FLOPs per multiply-add) or gmacs (multiply-accumulates, the DeeR paper\'s unit: '
              '1 GMAC = 2 GFLOPs).', read_only=True, choices=COST_UNITS),
    ParamSpec('latency.measure_on_start', False, 'Have the per-exit latency table at start (from the cache for '
              'this device + checkpoint + thread count + torch, else measured: a short warm-up through every '
              'exit) even without a millisecond budget, so /diagnostics reports step ms against it and '
              'budget.peak_ms / avg_ms can be set later without first calling ~/recalibrate_latency. '
              'A peak_ms / avg_ms budget at start loads or measures it anyway.', read_only=True),
    ParamSpec('budget.track_average', True, 'Meet budget.avg_gflops on the robot\'s own observations: every 25 steps '
              'the target the thresholds are solved for is corrected by the realised average (the offline solve '
              'meets it only on the calibration demos); false = the offline thresholds as solved.'),
    ParamSpec('budget.cost_kind', 'llm', 'What the GFLOPs budgets count: llm (decoder only, the DeeR paper unit) '
              'or total (vision + decoder + action heads).', read_only=True, choices=('llm', 'total')),
    ParamSpec('checkpoint', 'tiny', 'Checkpoint directory (config.json + model.safetensors, calibration.npz beside '
              'them; deer-ros import-upstream writes one from a published DeeR-VLA checkpoint) or the name of a '
              'policy shipped with the package (tiny = the trained default policy); '
              'empty = build model_config with seeded random init.', read_only=True),
    ParamSpec('model_config', 'tiny', 'Shipped config name (tiny, smollm2, deer-vla-3b, deer-vla-9b) or config '
              'file, used when checkpoint is empty.', read_only=True),
    ParamSpec('device', 'cpu', 'Torch device for the model (cpu, cuda, cuda:1, ...).', read_only=True),
    ParamSpec('precision', 'fp32', 'Inference precision: fp32, or bf16 / fp16 autocast of the model (vision, '
              'decoder exits, action head); upstream DeeR-VLA evaluates under fp16/bf16 autocast on CUDA. fp16 '
              'needs a CUDA device; bf16 also runs on CPU. The exit rule and the safety checks stay in fp32/fp64.',
              read_only=True, choices=PRECISIONS),
    ParamSpec('seed', 0, 'Seed of the random init (model_config) and of synthetic calibration.', read_only=True,
              limits=(0, 2 ** 31 - 1)),
    ParamSpec('num_threads', 0, 'Torch intra-op CPU threads; 0 = torch default. Leave cores for DDS on small '
              'machines.', read_only=True, limits=(0, 256)),
    ParamSpec('control_rate_hz', 30.0, 'Control timer rate (CALVIN acts at 30 Hz); also scales the TwistStamped '
              'output (delta per step -> velocity).', read_only=True, limits=(0.1, 1000.0)),
    ParamSpec('max_input_age_s', 0.5, 'Cameras and joint states older than this (steady clock) are stale: the '
              'node holds or goes silent instead of acting on them. Also the longest a frame waits for its other '
              'inputs, and how long one stamp may be re-sent before the input counts as frozen (diagnostics).',
              limits=(0.001, 3600.0)),
    ParamSpec('sync_slop_s', 0.01, 'Inputs are matched by header stamp: the policy acts on the newest static frame '
              'once the gripper camera, joint states (and tcp pose) each have a message stamped within this many '
              'seconds of it, and waits for them until then (up to max_input_age_s). Bridge-stamped frames match '
              'exactly; unstamped messages (stamp 0) match anything (newest value).', limits=(0.0, 1.0)),
    ParamSpec('on_stale_input', 'hold', 'On stale, missing or bad input: hold = publish explicit holds (zero '
              'delta, gripper unchanged, hold=true), silent = publish nothing.', choices=STALE_POLICIES),
    ParamSpec('require_new_frame', True, 'Step only on a static-camera frame not acted on before (one action '
              'per frame, as a lock-step simulator needs; a frame sent again gets the same answer again); '
              'false = act on every tick.'),
    ParamSpec('exit_metric', 'rms', 'Action-consistency metric of the exit rule; must match the calibration '
              'file.', read_only=True, choices=tuple(METRICS)),
    ParamSpec('qos_depth', 5, 'History depth of the sensor subscriptions and the command publishers.',
              read_only=True, limits=(1, 1000)),
    ParamSpec('frame_id', 'world', 'frame_id of ArmAction and TwistStamped (CALVIN deltas are in the world '
              'frame).'),
    ParamSpec('ready_pose.enabled', False, 'After every reset (a new instruction or the ~/reset service), drive the '
              'hand to ready_pose.tcp with the gripper open (a held object stays held) before the policy acts: the '
              'pose the training demos start from. Scripted, no model step (ExitStats with exit_index 0). '
              'Needs tcp_pose.',
              read_only=True),
    ParamSpec('camera.static.transport', 'raw', 'image_transport of the static camera: raw = sensor_msgs/Image on '
              'camera/static/image_raw, compressed = sensor_msgs/CompressedImage (JPEG or PNG) on '
              'camera/static/image_raw/compressed.', read_only=True, choices=tuple(TRANSPORTS)),
    ParamSpec('camera.gripper.transport', 'raw', 'image_transport of the gripper camera (raw or compressed), as '
              'camera.static.transport.', read_only=True, choices=tuple(TRANSPORTS)),
    ParamSpec('ready_pose.tcp', list(HOME_TCP_POSE), 'Ready pose: TCP x y z (m) and Euler xyz (rad) in frame_id; '
              'the default is the embedded simulator\'s home pose, where the shipped policy\'s demos start.',
              read_only=True),
)


def budget_from(values: dict[str, Any]) -> Budget:
    """Parameter values -> :class:`Budget` in GFLOPs (given in ``budget.cost_unit``); 0 means "no limit"."""
    def limit(name: str) -> float | None:
        return float(values[name]) if values[name] > 0 else None
    budget = Budget(limit('budget.avg_gflops'), limit('budget.peak_gflops'), limit('budget.max_memory_mb'),
                    peak_ms=limit('budget.peak_ms'), avg_ms=limit('budget.avg_ms'))
    return budget_in_gflops(budget, values['budget.cost_unit'])


class PolicyWiring:
    """The policy's model, topics, services, timers and parameter callbacks on an rclpy node, in phases.

    Shared by the plain :class:`PolicyNode` (every phase at construction) and
    the lifecycle :class:`~deer_ros.nodes.managed_policy_node.ManagedPolicyNode`
    (``load`` on configure, ``start_io`` on activate, ``stop_io`` on deactivate,
    ``unload`` on cleanup), so both run the same code. Mixed in before the
    rclpy node class.
    """

    _stopped = True  # nothing is published outside start_io .. stop_io
    _io: list[Any]  # subscriptions, services, publishers and timers made by start_io
    _remeasuring = False  # a drift's latency re-measure is running on its thread

    def parameter_values(self) -> dict[str, Any]:
        """Every PARAMETERS value in force (declared, converted and checked by :func:`declare`)."""
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    def load(self, values: dict[str, Any]) -> None:
        """Load the model and solve the budget; register the parameter callbacks that need them."""
        if values['num_threads'] > 0:
            torch.set_num_threads(values['num_threads'])
        self.rate_hz = float(values['control_rate_hz'])
        self.frame_id = values['frame_id']
        started = time.monotonic()
        source = resolve_checkpoint(values['checkpoint']) if values['checkpoint'] else values['model_config']
        ready_pose = ReadyPose(tuple(values['ready_pose.tcp'])) if values['ready_pose.enabled'] else None
        policy = DeerPolicy.from_pretrained(source, device=values['device'], metric=values['exit_metric'],
                                            cost_kind=values['budget.cost_kind'], budget=budget_from(values),
                                            track_average=values['budget.track_average'], seed=values['seed'],
                                            cost_unit=values['budget.cost_unit'], ready_pose=ready_pose,
                                            measure_latency=values['latency.measure_on_start'],
                                            precision=values['precision'],
                                            warn=self.get_logger().warning)
        self.runtime = policy.runtime
        if self.runtime.thresholds.latency is not None:
            self.get_logger().info(f"latency table {'reused from' if self.runtime.latency_reused else 'measured into'} "
                                   f'{self.runtime.latency_cache.path(self.runtime.thresholds.latency.key)}')
        self._solved: dict[Budget, BudgetSolution] = {}  # validated budgets: applied as solved, never re-solved
        self.controller = PolicyController(policy,
                                           max_input_age_s=values['max_input_age_s'],
                                           on_stale_input=values['on_stale_input'],
                                           require_new_frame=values['require_new_frame'],
                                           sync_slop_s=values['sync_slop_s'])
        self.diagnostics = PolicyDiagnostics(self.get_name(), self.runtime.cost_table.num_exits,
                                             inputs=self.controller.inputs.names)
        self._publish_lock = threading.Lock()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.get_logger().info(
            f'ready in {time.monotonic() - started:.1f} s: {self.runtime.config.name} on {values["device"]}, '
            f'{self.rate_hz:g} Hz, budget {self.runtime.describe()}')

    def unload(self) -> None:
        """Free the model (and its budgets): the inverse of :meth:`load`."""
        self.remove_on_set_parameters_callback(self._validate_parameters)
        self.remove_post_set_parameters_callback(self._apply_parameters)
        del self.runtime, self.controller, self.diagnostics, self._solved
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _create_output(self, msg_type: type, topic: str, qos: QoSProfile | int) -> Any:
        """A publisher; the managed node makes lifecycle publishers instead."""
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_output(self, publisher: Any) -> None:
        self.destroy_publisher(publisher)

    def start_io(self, values: dict[str, Any]) -> None:
        """Subscribe the inputs, offer ~/reset, create the publishers and start the control and diagnostics timers."""
        self._holding = False
        self._last_answer = -math.inf  # steady time the last answer was decided at
        depth = values['qos_depth']
        sensor_qos = QoSProfile(depth=depth, reliability=qos_profile_sensor_data.reliability,
                                durability=qos_profile_sensor_data.durability)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._io = []
        for camera, name, shape in CAMERAS:
            transport = values[f'camera.{camera}.transport']
            self._io.append(self.create_subscription(
                TRANSPORTS[transport], transport_topic(f'camera/{camera}/image_raw', transport),
                lambda msg, name=name, shape=shape: self._on_image(msg, name, shape), sensor_qos))
        self._io.append(self.create_subscription(JointState, 'joint_states', self._on_joint_states, sensor_qos))
        if self.controller.needs_robot_state:
            self._io.append(self.create_subscription(PoseStamped, 'tcp_pose', self._on_tcp_pose, sensor_qos))
        self._io.append(self.create_subscription(String, 'instruction', self._on_instruction, latched))
        self._io.append(self.create_service(Trigger, '~/reset', self._on_reset, qos_profile=RESET_SERVICE_QOS))
        self._io.append(self.create_service(Trigger, '~/recalibrate_latency', self._on_recalibrate_latency))

        self.action_pub = self._create_output(ArmAction, 'arm_action', depth)
        self.twist_pub = self._create_output(TwistStamped, 'delta_twist_cmds', depth)
        self.stats_pub = self._create_output(ExitStats, 'exit_stats', EXIT_STATS_QOS)
        self.diagnostics_pub = self._create_output(DiagnosticArray, '/diagnostics', 10)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._io.append(self.create_timer(1.0 / self.rate_hz, self._on_tick, clock=steady))
        self._io.append(self.create_timer(1.0, self._publish_diagnostics, clock=steady))
        self._io.append(self.create_timer(1.0, self._check_latency_drift, clock=steady))
        self._stopped = False

    def stop_io(self) -> None:
        """Publish nothing more and drop every subscription, service, publisher and timer :meth:`start_io` made."""
        with self._publish_lock:
            self._stopped = True
        for entity in self._io:
            for destroy in (self.destroy_subscription, self.destroy_service, self.destroy_timer):
                if destroy(entity):
                    break
        for publisher in (self.action_pub, self.twist_pub, self.stats_pub, self.diagnostics_pub):
            self._destroy_output(publisher)
        self._io = []

    # ---- inputs (decode, check, store; a frame complete on arrival is acted on at once)
    def _on_image(self, msg: Image | CompressedImage, name: str, shape: tuple[int, int, int]) -> None:
        now = time.monotonic()
        self.diagnostics.record_input(name, now)
        try:
            image = msg_to_rgb(msg)
        except ValueError as error:  # corrupt or truncated JPEG/PNG, unknown encoding, size mismatch: a hold
            self.controller.inputs.reject(name, str(error))
            return
        self._store(name, image, check_image(image, shape), now, msg.header)

    def _on_joint_states(self, msg: JointState) -> None:
        now = time.monotonic()
        self.diagnostics.record_input(JOINT_STATES, now)
        positions = np.asarray(msg.position, dtype=np.float64)
        problem = check_joint_positions(positions, needs_arm=self.controller.needs_robot_state)
        self._store(JOINT_STATES, positions, problem, now, msg.header)

    def _on_tcp_pose(self, msg: PoseStamped) -> None:
        now = time.monotonic()
        self.diagnostics.record_input(TCP_POSE, now)
        pose = tcp_pose_array(msg)
        self._store(TCP_POSE, pose, check_tcp_pose(pose), now, msg.header)

    def _store(self, name: str, value: Any, problem: str | None, now: float, header: Header) -> None:
        """Keep a checked message (or why it was rejected); act right away when it completes a frame.

        Acting on arrival, not at the next control tick, saves a lock-step
        simulator up to a period per step; only when the last answer is
        :data:`ARRIVAL_PERIODS` old, the rest wait for the tick (which keeps
        the rate).
        """
        if problem is not None:
            self.controller.inputs.reject(name, problem)
            return
        self.controller.inputs.put(name, value, now, stamp_ns(header.stamp))
        if now - self._last_answer >= ARRIVAL_PERIODS / self.rate_hz:
            self._control(now, on_arrival=True)

    def _on_instruction(self, msg: String) -> None:
        now = time.monotonic()
        self.diagnostics.record_input(INSTRUCTION, now)
        if self.controller.set_instruction(msg.data, now):
            self.get_logger().info(f'new instruction {shown_instruction(msg.data)}: policy state reset')

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.controller.reset()
        self.get_logger().info('policy state reset (service)')
        response.success, response.message = True, 'policy state reset'
        return response

    # ---- control
    def _on_tick(self) -> None:
        self._control(time.monotonic(), on_arrival=False)

    def _control(self, now: float, *, on_arrival: bool) -> None:
        """Decide and publish; on a message's arrival only answers count (holds and waits are the tick's job)."""
        decision = self.controller.tick(now)
        if on_arrival and decision.kind not in ANSWERS:
            return
        if decision.kind in ANSWERS:
            self._last_answer = now
        self.diagnostics.record(decision)
        if decision.kind == 'wait':
            return
        if decision.problems:
            self.get_logger().error(f'{decision.kind}: ' + '; '.join(decision.problems), throttle_duration_sec=2.0)
        elif self._holding:
            self.get_logger().info('inputs usable again: acting')
        self._holding = bool(decision.problems)
        if decision.kind == 'reanswer':
            self.get_logger().info(f'frame {decision.stamp_ns} sent again: answered again',
                                   throttle_duration_sec=2.0)
        if decision.action is not None:
            self._publish(decision)

    def _publish(self, decision: Decision, *, last: bool = False) -> None:
        """ArmAction (and ExitStats for what the policy did) stamped with the frame answered; the twist stamped now.

        A re-answer publishes the same ArmAction and ExitStats again but no
        twist: a velocity command repeated would move the arm a second time.
        """
        now = self.get_clock().now().to_msg()
        stamp = now if decision.stamp_ns is None else stamp_msg(decision.stamp_ns)
        header = Header(stamp=stamp, frame_id=self.frame_id)
        with self._publish_lock:
            if self._stopped:
                return
            self.action_pub.publish(arm_action_msg(decision.action, header, hold=decision.kind == 'hold'))
            if decision.kind != 'reanswer':
                self.twist_pub.publish(twist_msg(decision.action, Header(stamp=now, frame_id=self.frame_id),
                                                 self.rate_hz))
            if decision.kind != 'hold':
                self.stats_pub.publish(exit_stats_msg(decision.info, header))
            self._stopped = last

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        snapshot = self.controller.inputs.snapshot(now, self.controller.max_input_age_s)
        statuses = self.diagnostics.statuses(now, snapshot, self.runtime.describe())
        self.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                     status=statuses))

    def stop(self, reason: str = 'node stopped') -> None:
        """Publish a final hold and stop publishing: the arm must not keep the last velocity.

        The process usually exits right after this, so wait (bounded) until reliable subscribers acknowledged the
        hold: on a loaded machine it could otherwise go down with the process before it was delivered.
        """
        if not self._stopped:
            self._publish(self.controller.hold([reason]), last=True)
            for publisher in (self.action_pub, self.twist_pub):
                publisher.wait_for_all_acked(Duration(seconds=FINAL_HOLD_ACK_S))

    # ---- parameters: validate (a budget is solved here, once), then apply what was validated
    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        problem = check_values(PARAMETERS, parameters)
        if problem is None and any(p.name in BUDGET_PARAMETERS for p in parameters):
            values = {name: self.get_parameter(name).value for name in BUDGET_PARAMETERS}
            values.update({p.name: p.value for p in parameters if p.name in BUDGET_PARAMETERS})
            budget = budget_from(values)
            try:
                self._solved[budget] = self.runtime.thresholds.solve(budget)
            except BudgetError as error:
                problem = f'budget rejected: {error}'
                unit = values['budget.cost_unit']
                if unit != 'gflops':  # the solver's figures are GFLOPs
                    problem += (f' (figures in GFLOPs; budget.cost_unit is {unit}: '
                                f'1 {COST_UNIT_LABELS[unit]} = {to_gflops(1.0, unit):g} GFLOPs)')
        return SetParametersResult(successful=problem is None, reason=problem or '')

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        changed = {p.name: p.value for p in parameters}
        if 'max_input_age_s' in changed:
            self.controller.max_input_age_s = float(changed['max_input_age_s'])
        if 'on_stale_input' in changed:
            self.controller.on_stale_input = changed['on_stale_input']
        if 'require_new_frame' in changed:
            self.controller.require_new_frame = bool(changed['require_new_frame'])
        if 'sync_slop_s' in changed:
            self.controller.sync_slop_s = float(changed['sync_slop_s'])
        if 'frame_id' in changed:
            self.frame_id = changed['frame_id']
        if 'budget.track_average' in changed:
            self.runtime.thresholds.set_tracking(bool(changed['budget.track_average']))
            self.get_logger().info(f"average-budget tracking {'on' if changed['budget.track_average'] else 'off'}: "
                                   f'{self.runtime.describe()}')
        if any(name in BUDGET_PARAMETERS for name in changed):
            budget = budget_from({name: self.get_parameter(name).value for name in BUDGET_PARAMETERS})
            solution = self._solved.pop(budget)  # solved by _validate_parameters for exactly these values
            self._solved.clear()  # what a later set validates is solved again for it
            try:
                self.runtime.apply(budget, solution)
            except Exception as error:  # noqa: BLE001 - validated, but a reload can still fail (checkpoint gone)
                self.get_logger().error(f'budget {budget} validated but not applied ({error}); '
                                        f'still in force: {self.runtime.describe()}')
                return
            self.get_logger().info(f'budget in force: {self.runtime.describe()}')

    # ---- the latency table: re-measured on request, or when steps drift from it
    def _recalibrate_latency(self, why: str) -> tuple[bool, str]:
        """Measure the latency table again (steps wait meanwhile) and solve the budget in force on it."""
        self.get_logger().info(f'measuring the latency table ({why})')
        try:
            solution = self.runtime.remeasure_latency()
        except BudgetError as error:
            message = f'latency table re-measured, but the budget in force no longer fits it: {error}'
            self.get_logger().error(message)
            return False, message
        message = (f'latency table re-measured ({why}): p99 ms per exit '
                   f"{', '.join(f'{ms:.3g}' for ms in self.runtime.thresholds.latency.peak_costs())}, "
                   f'{solution.cap + 1} exits allowed')
        self.get_logger().info(message)
        return True, message

    def _on_recalibrate_latency(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self._recalibrate_latency('~/recalibrate_latency')
        return response

    def _check_latency_drift(self) -> None:
        """A drift seen by the steps is re-measured on a thread of its own, not in a control callback."""
        drift = self.runtime.take_drift()
        if drift is not None and not self._remeasuring:
            self.get_logger().warning(f'{drift}: re-measuring the latency table')
            self._remeasuring = True

            def remeasure() -> None:
                try:
                    self._recalibrate_latency(str(drift))
                finally:
                    self._remeasuring = False
            threading.Thread(target=remeasure, name='latency-remeasure', daemon=True).start()


class PolicyNode(PolicyWiring, Node):
    """Subscribes cameras, joint states and the instruction; publishes actions, exit stats and diagnostics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = declare(self, PARAMETERS)
        self.load(values)
        self.start_io(values)


def shown_instruction(text: str) -> str:
    """An instruction as logged: quoted, and cut with its length when longer than a sentence or two."""
    if len(text) <= _SHOWN_INSTRUCTION_CHARS:
        return repr(text)
    return f'{text[:_SHOWN_INSTRUCTION_CHARS]!r}... ({len(text)} characters)'


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(PolicyNode, NODE_NAME, on_stop=PolicyNode.stop, args=args))


if __name__ == '__main__':
    main()
