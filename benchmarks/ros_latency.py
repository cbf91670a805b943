"""End-to-end latency through ROS (camera frame published -> ArmAction received) vs the in-process policy step.

For each model config: first the in-process ``PolicyRuntime.step`` on random
frames, then the ``deer_policy`` node in its own process, driven one frame at a
time from this process (publish a stamped frame, wait for the ArmAction carrying
that stamp), like the lock-step simulator bridge does. Full depth (no budget),
same torch thread count in both, so the difference is what ROS adds: DDS
transport of two images, decoding, the wait for the next control tick and the
action's way back. Two control rates separate the tick wait from the rest.

    .venv/bin/python benchmarks/ros_latency.py --configs tiny smollm2 --frames 40 --threads 1

Prints a Markdown table (docs/nodes.md) and writes JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, STATIC_CAMERA_SHAPE

LATCHED_DEPTH = 1


def percentiles(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms)
    return {'p50_ms': float(np.percentile(values, 50)), 'p99_ms': float(np.percentile(values, 99)),
            'mean_ms': float(values.mean()), 'n': int(values.size)}


def _frames(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, STATIC_CAMERA_SHAPE, dtype=np.uint8),
             rng.integers(0, 256, GRIPPER_CAMERA_SHAPE, dtype=np.uint8)) for _ in range(count)]


def in_process(config: str, frames: int, warmup: int) -> dict[str, float]:
    from deer_ros.policy.runtime import PolicyRuntime
    from deer_ros.policy.types import Observation
    runtime = PolicyRuntime(config, warn=lambda message: None)
    latencies = []
    for index, (static, gripper) in enumerate(_frames(warmup + frames)):
        started = time.perf_counter()
        runtime.step(Observation(static, gripper), 'open the drawer')
        if index >= warmup:
            latencies.append((time.perf_counter() - started) * 1e3)
    return percentiles(latencies)


def through_ros(config: str, frames: int, warmup: int, rate_hz: float, threads: int, domain_id: int) -> dict:
    """Start the node, drive it frame by frame, return end-to-end and in-node step latencies."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Header, String

    from deer_ros.msg import ArmAction, ExitStats
    from deer_ros.nodes.image_conversion import rgb_to_image_msg
    from deer_ros.nodes.messages import stamp_ns

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    log = tempfile.NamedTemporaryFile('w+b', suffix='.log', delete=False)
    node_process = subprocess.Popen(
        [sys.executable, '-m', 'deer_ros.nodes.policy_node', '--ros-args', '-p', f'model_config:={config}',
         '-p', f'control_rate_hz:={rate_hz}', '-p', f'num_threads:={threads}', '-p', 'max_input_age_s:=30.0'],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    driver = rclpy.create_node('latency_driver', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(driver)
    received: dict[int, float] = {}
    step_ms: dict[int, float] = {}
    arrived = threading.Condition()

    def on_action(msg: ArmAction) -> None:
        now = time.perf_counter()
        with arrived:
            received.setdefault(stamp_ns(msg.header.stamp), now)
            arrived.notify_all()

    def on_stats(msg: ExitStats) -> None:
        step_ms[stamp_ns(msg.header.stamp)] = msg.step_latency_ms

    static_pub = driver.create_publisher(Image, 'camera/static/image_raw', 10)
    gripper_pub = driver.create_publisher(Image, 'camera/gripper/image_raw', 10)
    joint_pub = driver.create_publisher(JointState, 'joint_states', 10)
    instruction_pub = driver.create_publisher(String, 'instruction', QoSProfile(
        depth=LATCHED_DEPTH, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    action_sub = driver.create_subscription(ArmAction, 'arm_action', on_action, 10)
    driver.create_subscription(ExitStats, 'exit_stats', on_stats, 10)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 300
        while not (static_pub.get_subscription_count() and action_sub.get_publisher_count()):
            if time.monotonic() > deadline or node_process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f'policy node did not come up:\n{log.read().decode(errors="replace")}')
            time.sleep(0.1)
        instruction_pub.publish(String(data='open the drawer'))
        time.sleep(1.0)  # latched instruction delivered before the first frame
        end_to_end, in_node = [], []
        for index, (static, gripper) in enumerate(_frames(warmup + frames)):
            header = Header(stamp=driver.get_clock().now().to_msg())
            stamp = stamp_ns(header.stamp)
            sent = time.perf_counter()
            static_pub.publish(rgb_to_image_msg(static, header))
            gripper_pub.publish(rgb_to_image_msg(gripper, header))
            joint_pub.publish(JointState(header=header, position=[0.0] * 7))
            with arrived:
                if not arrived.wait_for(lambda: stamp in received, 60.0):
                    raise RuntimeError(f'no action for frame {index}')
            if index >= warmup:
                end_to_end.append((received[stamp] - sent) * 1e3)
                time.sleep(0.05)  # ExitStats follows the action
                in_node.append(step_ms.get(stamp, float('nan')))
        return {'end_to_end': percentiles(end_to_end), 'node_step': percentiles([v for v in in_node if v == v])}
    finally:
        node_process.send_signal(2)
        node_process.wait(30)
        executor.shutdown()
        driver.destroy_node()
        context.try_shutdown()
        Path(log.name).unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=['tiny', 'smollm2'])
    parser.add_argument('--frames', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--rates', type=float, nargs='+', default=[30.0, 200.0],
                        help='control_rate_hz values of the node (the tick wait is up to one period)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads, in-process and in the node')
    parser.add_argument('--domain-id', type=int, default=91)
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    results = {'load_average': os.getloadavg(), 'cpus': os.cpu_count(), 'threads': args.threads, 'configs': {}}
    for config in args.configs:
        entry = {'in_process': in_process(config, args.frames, args.warmup)}
        for rate in args.rates:
            entry[f'ros_{rate:g}hz'] = through_ros(config, args.frames, args.warmup, rate, args.threads,
                                                   args.domain_id)
        results['configs'][config] = entry
        print(json.dumps({config: entry}), flush=True)
    results['load_average_after'] = os.getloadavg()

    print('\n| model | path | p50 (ms) | p99 (ms) |\n|---|---|---|---|')
    for config, entry in results['configs'].items():
        local = entry['in_process']
        print(f'| {config} | in-process step | {local["p50_ms"]:.1f} | {local["p99_ms"]:.1f} |')
        for rate in args.rates:
            ros = entry[f'ros_{rate:g}hz']
            print(f'| {config} | ROS end-to-end, {rate:g} Hz tick | {ros["end_to_end"]["p50_ms"]:.1f} | '
                  f'{ros["end_to_end"]["p99_ms"]:.1f} |')
            print(f'| {config} | in-node step, {rate:g} Hz tick | {ros["node_step"]["p50_ms"]:.1f} | '
                  f'{ros["node_step"]["p99_ms"]:.1f} |')
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
