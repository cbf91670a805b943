"""The deer_policy node as a process over real DDS: live budgets, safety holds, diagnostics, resets."""
from __future__ import annotations

import math
import re
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from policy_driver import FAST_POLICY, PolicyDriver
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import BackgroundSpinner, wait_for
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image
from small_models import random_frame
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from deer_ros.budget.caps import Budget
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, HOME_TCP_POSE, STATIC_CAMERA_SHAPE
from deer_ros.nodes.image_conversion import rgb_to_image_msg
from deer_ros.nodes.messages import stamp_ns
from deer_ros.nodes.policy_node import PolicyNode

POLICY = 'deer_ros.nodes.policy_node'
STARTUP_S = 120.0  # torch + transformers imports on 2 shared cores


def _set(client: AsyncParameterClient, **values: float):
    """Set parameters through the node's parameter service; returns the SetParametersResult of each."""
    future = client.set_parameters([Parameter(name.replace('__', '.'), value=value) for name, value in values.items()])
    assert wait_for(future.done, 15.0)
    return future.result().results


def _mean_exit(driver: PolicyDriver, frames: int = 6) -> tuple[float, set[int]]:
    """Mean 1-based exit over ``frames`` fresh frames, and the num_exits they report."""
    stats = [driver.stats_for(driver.send()) for _ in range(frames)]
    assert all(s is not None for s in stats), 'a frame got no ExitStats'
    return float(np.mean([s.exit_index for s in stats])), {s.num_exits for s in stats}


def test_budget_changes_through_parameter_services(start_node, driver):
    """ros2 param set equivalents: infeasible values rejected with the range, the average exit follows
    the average budget, and a peak cap drops exits live and raising it restores them."""
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': '', 'model_config': 'tiny'})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    assert 'no calibration file for tiny' in node.log  # synthetic calibration path
    client = AsyncParameterClient(driver, 'deer_policy')
    with BackgroundSpinner(driver, context=driver.context):
        assert client.wait_for_services(15.0)
        [rejected] = _set(client, budget__avg_gflops=1e-6)
        assert not rejected.successful
        match = re.search(r'feasible range is \[([-+\d.e]+), ([-+\d.e]+)\]', rejected.reason)
        assert match, rejected.reason
        low, high = float(match[1]) * 1.01, float(match[2]) * 0.99  # inside the range despite printed rounding
        assert 0 < low < high

        assert driver.wait_connected()
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        assert _set(client, budget__avg_gflops=low)[0].successful
        low_exit, _ = _mean_exit(driver)
        assert _set(client, budget__avg_gflops=high)[0].successful
        high_exit, exits = _mean_exit(driver)
        assert low_exit < high_exit and exits == {6}

        # Exit k costs (k + 1) * c for tiny: 1.25 * low fits exits 1 and 2 only (1-based).
        assert all(result.successful for result in _set(client, budget__avg_gflops=0.0,
                                                         budget__peak_gflops=1.25 * low))
        assert _mean_exit(driver, 3) == (2.0, {2})  # no average budget: every step at the capped model's last exit
        [too_low] = _set(client, budget__peak_gflops=1e-6)
        assert not too_low.successful and 'feasible peak llm GFLOPs limits are >=' in too_low.reason
        assert _set(client, budget__peak_gflops=0.0)[0].successful
        assert _mean_exit(driver, 3) == (6.0, {6})  # raising the cap reloaded the dropped layers

        assert _set(client, budget__avg_gflops=low)[0].successful
        assert _set(client, budget__track_average=False)[0].successful
        assert node.wait_for_log("average-budget tracking off: {'avg_gflops'"), node.log
        assert not _set(client, budget__track_average=0.5)[0].successful  # wrong type: rclpy rejects it
    assert node.running()


def _diagnostics_error(driver: PolicyDriver, since: int, text: str, level: bytes = DiagnosticStatus.ERROR) -> bool:
    def found() -> bool:
        with driver.lock:
            return any(s.level == level and text in s.message for s in driver.diagnostics[since:])
    return wait_for(found, 10.0)


def _holds_since(driver: PolicyDriver, since: int) -> bool:
    def found() -> bool:
        with driver.lock:
            return any(a.hold for a in driver.actions[since:])
    return wait_for(found, 10.0)


def _bad_image(shape: tuple[int, int, int], encoding: str, stamp_from: PolicyDriver) -> Image:
    header = Header(stamp=stamp_from.get_clock().now().to_msg())
    height, width, _ = shape
    bytes_per_pixel = {'16UC1': 2, 'rgb8': 3}[encoding]
    return Image(header=header, height=height, width=width, encoding=encoding, step=width * bytes_per_pixel,
                 data=bytes(height * width * bytes_per_pixel))


def test_bad_input_holds_or_goes_silent_with_reason_and_keeps_running(start_node, driver, tiny_checkpoint):
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint), 'max_input_age_s': 0.5})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    assert 'no calibration file for' not in node.log
    cases = [  # (inputs to send, text expected in the log and the diagnostics)
        (lambda: driver.send(static=_bad_image(STATIC_CAMERA_SHAPE, '16UC1', driver)),
         "static camera: unsupported image encoding '16UC1'"),
        (lambda: driver.send(gripper=_bad_image((96, 96, 3), 'rgb8', driver)),
         'gripper camera: expected 84x84 RGB image, got 96x96'),
        (lambda: driver.send(joints=[0.0, math.nan, 0.0, 0.0, 0.0, 0.0, 0.0]),
         'joint states: non-finite joint positions'),
        (lambda: None, 'static camera: stale'),  # nothing sent for longer than max_input_age_s
    ]
    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected()
        actions, diagnostics = driver.count()
        driver.send()
        assert _holds_since(driver, actions), node.log
        assert _diagnostics_error(driver, diagnostics, 'instruction: none received yet')
        assert node.wait_for_log('instruction: none received yet')
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        for send_bad, reason in cases:
            assert driver.send_until_answered() is not None, f'no action before case {reason!r}\n{node.log}'
            actions, diagnostics = driver.count()
            send_bad()
            assert _holds_since(driver, actions), reason
            assert _diagnostics_error(driver, diagnostics, reason), reason
            assert node.wait_for_log(reason), node.log
        recovered = driver.send_until_answered()
        assert recovered is not None and node.running()
        assert not driver.action_for(recovered).hold

        client = AsyncParameterClient(driver, 'deer_policy')
        assert client.wait_for_services(15.0)
        [bogus] = _set(client, on_stale_input='bogus')
        assert not bogus.successful and 'on_stale_input must be one of hold, silent' in bogus.reason
        assert _set(client, on_stale_input='silent')[0].successful
        actions, diagnostics = driver.count()
        assert _diagnostics_error(driver, diagnostics, 'silent: static camera: stale')  # inputs stopped
        assert driver.count()[0] <= actions + 1  # at most a hold already on its way; then nothing
        assert node.stop() == 0, node.log
        assert 'never retrieved' not in node.log  # a clean shutdown (run_node spins one thread: no pool left with queued callbacks)
        assert wait_for(lambda: driver.actions[-1].hold, 5.0), 'the node must leave the arm with a hold'
    with driver.lock:
        sent = list(driver.actions)
    assert all(np.all(np.isfinite(a.delta)) and np.all(np.abs(a.delta) <= 1.0) for a in sent)
    assert all(not np.any(a.delta) for a in sent if a.hold)


def _identical_frame(driver: PolicyDriver) -> int:
    rng = np.random.default_rng(7)
    header = Header(stamp=driver.get_clock().now().to_msg())
    return driver.send(static=rgb_to_image_msg(random_frame(rng, STATIC_CAMERA_SHAPE), header),
                       gripper=rgb_to_image_msg(random_frame(rng, GRIPPER_CAMERA_SHAPE), header))


def test_reset_service_and_new_instruction_restart_the_policy_state(start_node, driver, tiny_checkpoint):
    """The same frame gives the same first action after a reset, and a different one mid-episode."""
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint)})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    reset = driver.create_client(Trigger, 'deer_policy/reset')

    def act() -> np.ndarray:
        action = driver.action_for(_identical_frame(driver))
        assert action is not None and not action.hold, node.log
        return np.array(action.delta)

    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected()
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        first, second = act(), act()
        assert not np.allclose(first, second)  # the LSTM state carries over between steps
        assert reset.wait_for_service(15.0)
        future = reset.call_async(Trigger.Request())
        assert wait_for(future.done, 15.0) and future.result().success
        np.testing.assert_allclose(act(), first, atol=1e-6)

        driver.instruct('close the drawer')  # a new instruction resets too
        assert node.wait_for_log("new instruction 'close the drawer'")
        after_instruction, _ = act(), act()
        future = reset.call_async(Trigger.Request())
        assert wait_for(future.done, 15.0) and future.result().success
        np.testing.assert_allclose(act(), after_instruction, atol=1e-6)


def test_a_proprioceptive_policy_holds_without_the_tcp_pose_and_acts_with_it(start_node, driver,
                                                                             proprio_checkpoint):
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(proprio_checkpoint)})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected() and wait_for(lambda: driver.tcp_pub.get_subscription_count() > 0, 20.0)
        driver.instruct('open the drawer')
        actions, diagnostics = driver.count()
        driver.send()
        assert _holds_since(driver, actions), node.log
        assert _diagnostics_error(driver, diagnostics, 'tcp pose: none received yet')
        action = driver.action_for(driver.send(tcp=[0.1, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]))
        assert action is not None and not action.hold, node.log


def test_with_a_ready_pose_every_reset_first_returns_the_hand_there(start_node, driver, tiny_checkpoint):
    """Scripted steps (ExitStats exit 0) until the TCP pose is the ready pose, then the policy; ~/reset restarts it."""
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint), 'ready_pose.enabled': True})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    home = [*HOME_TCP_POSE[:3], *Rotation.from_euler('xyz', HOME_TCP_POSE[3:]).as_quat()]
    low = [home[0], home[1], home[2] - 0.2, *home[3:]]
    reset = driver.create_client(Trigger, 'deer_policy/reset')

    def scripted_step_up() -> None:
        stamp = driver.send(tcp=low)
        action = driver.action_for(stamp)
        assert action is not None and not action.hold, node.log
        np.testing.assert_allclose(action.delta, [0, 0, 1, 0, 0, 0], atol=1e-6)  # straight up, at full speed
        stats = driver.stats_for(stamp)
        assert action.gripper == 1 and stats is not None, node.log
        assert (stats.exit_index, stats.llm_gflops, stats.total_gflops) == (0, 0.0, 0.0)  # no model ran

    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected() and wait_for(lambda: driver.tcp_pub.get_subscription_count() > 0, 20.0)
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        scripted_step_up()
        assert driver.stats_for(driver.send(tcp=home)).exit_index >= 1, node.log  # arrived: the policy acts
        assert driver.stats_for(driver.send(tcp=low)).exit_index >= 1  # and keeps acting until the next reset
        assert reset.wait_for_service(15.0)
        future = reset.call_async(Trigger.Request())
        assert wait_for(future.done, 15.0) and future.result().success
        scripted_step_up()


def test_an_infeasible_start_up_budget_stops_the_node_with_the_reason(start_node, tiny_checkpoint):
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint),
                                      'budget.avg_gflops': 1e-6})
    assert wait_for(lambda: not node.running(), STARTUP_S), node.log
    assert node.stop() == 1
    assert 'cannot start: average budget 1e-06 is infeasible: the feasible range is [' in node.log


def test_a_budget_change_is_solved_once_and_that_solution_is_put_in_force(rclpy_context, tiny_checkpoint):
    """In process: ``node.set_parameters`` runs the callbacks a ``ros2 param set`` runs (validate, then apply)."""
    node = PolicyNode(context=rclpy_context, parameter_overrides=[Parameter('checkpoint', value=str(tiny_checkpoint))])
    try:
        thresholds = node.runtime.thresholds
        solve, solved, solutions = thresholds.solve, [], []

        def counted_solve(budget: Budget, **kwargs) -> object:
            solved.append(budget)
            solutions.append(solve(budget, **kwargs))
            return solutions[-1]

        thresholds.solve = counted_solve  # the real solve, counted
        low, high = thresholds.feasible_average()
        budget = Budget(avg_gflops=(low + high) / 2)
        [result] = node.set_parameters([Parameter('budget.avg_gflops', value=budget.avg_gflops)])
        assert result.successful and solved == [budget]
        assert thresholds.solution is solutions[0] and thresholds.budget == budget  # the validated object runs

        capped = Budget(peak_gflops=node.runtime.cost_table.llm_gflops[2])
        result = node.set_parameters_atomically([Parameter('budget.avg_gflops', value=0.0),
                                                 Parameter('budget.peak_gflops', value=capped.peak_gflops)])
        assert result.successful and solved == [budget, capped]
        assert thresholds.solution is solutions[1] and thresholds.budget == capped and node.runtime.num_exits == 3

        [rejected] = node.set_parameters([Parameter('budget.avg_gflops', value=high * 2)])
        assert not rejected.successful and 'feasible range' in rejected.reason and len(solved) == 3
        assert thresholds.solution is solutions[1] and node.runtime.num_exits == 3  # nothing applied
    finally:
        node.destroy_node()


def _answers(driver: PolicyDriver, stamp: int) -> tuple[list, list]:
    """Every ArmAction and ExitStats received for the frame stamped ``stamp``, as reprs (NaN-safe equality)."""
    with driver.lock:
        return ([repr(a) for a in driver.actions if stamp_ns(a.header.stamp) == stamp],
                [repr(s) for s in driver.stats if stamp_ns(s.header.stamp) == stamp])


def test_a_frame_sent_again_is_answered_again_and_a_frozen_camera_is_reported(start_node, driver, tiny_checkpoint):
    """The lock-step bridge re-sends a frame whose answer it has not got: the same answer comes again (the old
    node stayed silent); a camera re-sending one stamp for longer than max_input_age_s is WARN 'frozen'."""
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint), 'max_input_age_s': 2.0})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    rng = np.random.default_rng(3)
    header = Header(stamp=driver.get_clock().now().to_msg())
    static = rgb_to_image_msg(random_frame(rng, STATIC_CAMERA_SHAPE), header)
    gripper = rgb_to_image_msg(random_frame(rng, GRIPPER_CAMERA_SHAPE), header)
    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected()
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        stamp = driver.send(static=static, gripper=gripper)
        assert driver.stats_for(stamp) is not None, node.log
        driver.send(static=static, gripper=gripper)  # the same frame again
        assert wait_for(lambda: [len(answers) for answers in _answers(driver, stamp)] == [2, 2], 20.0), node.log
        (action, action_again), (stats, stats_again) = _answers(driver, stamp)
        assert action_again == action and stats_again == stats and 'hold=False' in action
        assert node.wait_for_log('sent again: answered again'), node.log

        stop = threading.Event()

        def resend() -> None:  # one stamp, new messages, for longer than max_input_age_s
            while not stop.wait(0.2):
                driver.send(static=static, gripper=gripper)

        sender = threading.Thread(target=resend, daemon=True)
        _, diagnostics = driver.count()
        sender.start()
        try:
            assert _diagnostics_error(driver, diagnostics, 'frozen', level=DiagnosticStatus.WARN), node.log
            _, since = driver.count()
            time.sleep(2.5)  # two more diagnostics periods, still frozen
        finally:
            stop.set()
            sender.join(5.0)
        with driver.lock:
            policy = [s for s in driver.diagnostics[since:] if s.name.endswith('policy')]
        assert policy and all(s.level == DiagnosticStatus.WARN and 'frozen' in s.message for s in policy), policy


def test_a_storm_of_concurrent_reset_calls_is_answered(start_node, driver, tiny_checkpoint):
    """100 ~/reset calls at once, while the node steps: every one answered (rclpy's default queue kept 10)."""
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(tiny_checkpoint)})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    # The client's own queues must hold 100 requests and responses too (rclpy's default depth is 10).
    reset = driver.create_client(Trigger, 'deer_policy/reset',
                                 qos_profile=QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected() and reset.wait_for_service(15.0)
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        driver.send()
        futures = [reset.call_async(Trigger.Request()) for _ in range(100)]
        driver.send()
        assert wait_for(lambda: all(f.done() for f in futures), 40.0), \
            f'{sum(f.done() for f in futures)} of 100 answered\n{node.log}'
        assert all(f.result().success for f in futures)
        assert driver.send_until_answered() is not None, node.log  # and it still acts


def test_absurd_robot_state_is_rejected_before_the_model_and_long_instructions_are_not_logged(
        start_node, driver, proprio_checkpoint):
    """Fuzz findings: finite but absurd robot state reached the model (NaN actions), a 3-joint JointState held
    the policy while the inputs status said 'all inputs fresh', a 1 MB instruction was logged verbatim."""
    node = start_node(POLICY, params={**FAST_POLICY, 'checkpoint': str(proprio_checkpoint)})
    assert node.wait_for_log('ready in', STARTUP_S), node.log
    tcp = [0.1, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]
    cases = [  # (inputs, reason in the log and in both diagnostics statuses)
        (dict(tcp=[1e30, *tcp[1:]]), 'tcp pose: TCP position [1e+30, 0, 0.5] is more than 10 m from the frame origin'),
        (dict(tcp=tcp, joints=[0.1, 1e30, 0.0, 0.0, 0.0, 0.0, 0.0]), 'joint states: joint positions beyond +-6.283'),
        (dict(tcp=tcp, joints=[0.1, 0.2, 0.3]), 'joint states: 3 joint positions: the robot state needs the 7 arm'),
    ]
    with BackgroundSpinner(driver, context=driver.context):
        assert driver.wait_connected() and wait_for(lambda: driver.tcp_pub.get_subscription_count() > 0, 20.0)
        driver.instruct('open the drawer')
        assert node.wait_for_log("new instruction 'open the drawer'")
        for inputs, reason in cases:
            assert driver.stats_for(driver.send(tcp=tcp)) is not None, f'no action before {reason!r}\n{node.log}'
            actions, diagnostics = driver.count()
            driver.send(**inputs)
            assert _holds_since(driver, actions), reason
            with driver.lock:
                assert all(a.hold or not np.any(np.isnan(a.delta)) for a in driver.actions)
            assert node.wait_for_log(reason), node.log
            for status in ('inputs', 'policy'):
                def reported(status: str = status, reason: str = reason) -> bool:
                    with driver.lock:
                        return any(s.name.endswith(status) and s.level == DiagnosticStatus.ERROR
                                   and reason in s.message for s in driver.diagnostics[diagnostics:])
                assert wait_for(reported, 10.0), (status, reason)

        instruction = 'open the drawer and ' * 50_000  # 1 MB
        driver.instruct(instruction)
        assert node.wait_for_log('(1000000 characters): policy state reset', 30.0), node.log[-2000:]
        assert instruction[:1000] not in node.log and len(node.log) < 100_000
