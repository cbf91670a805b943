"""The ``deer_policy`` node alone through ROS: latency, steps per second and node CPU, against the in-process step.

For each model config (seeded random init, full depth) the in-process
``PolicyRuntime.step`` runs on random frames first; then the node runs in its
own process, started once per control rate and driven from this process in two
ways:

- ``lockstep``: one frame at a time (publish a stamped frame, wait for the
  ArmAction carrying that stamp, then ``--sim-ms`` standing in for the
  simulator's step), as the simulator bridge does. Gives frame → action
  latency, the in-node step (ExitStats' ``step_latency_ms``) and steps/s =
  frames / wall time.
- ``stream``: frames published at a fixed rate (``--stream-hz``) whatever the
  node answers, as a camera driver does. Gives policy steps/s (frames answered
  with an action), frame → action latency of the answered frames, and holds.

Both report the node's CPU use over the measured window (``/proc/<pid>/stat``,
100 % = one core) and per answered frame (what the executor adds to the step
shows there even when other processes share the cores). Same torch thread count in the node and in-process, so the
difference is what ROS adds: DDS transport of two images, decoding, the wait
for the next control tick, the executor and the action's way back.

    .venv/bin/python benchmarks/ros_latency.py --configs tiny --rates 30 --sim-ms 15 --seconds 20 --threads 1

Prints a Markdown table (docs/results.md) and writes JSON with --output.
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
from typing import Any

import numpy as np

from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, STATIC_CAMERA_SHAPE

LATCHED_DEPTH = 1
STARTUP_S = 300.0
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {'p50_ms': float('nan'), 'p99_ms': float('nan'), 'mean_ms': float('nan'), 'n': 0}
    values = np.asarray(values_ms)
    return {'p50_ms': float(np.percentile(values, 50)), 'p99_ms': float(np.percentile(values, 99)),
            'mean_ms': float(values.mean()), 'n': int(values.size)}


def _frames(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, STATIC_CAMERA_SHAPE, dtype=np.uint8),
             rng.integers(0, 256, GRIPPER_CAMERA_SHAPE, dtype=np.uint8)) for _ in range(count)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


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


class Driver:
    """This process's side: publishes stamped frames, records when each stamp's answer arrived."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        from deer_ros.msg import ArmAction, ExitStats

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('latency_driver', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.answered: dict[int, float] = {}  # frame stamp -> arrival of its first non-hold answer
        self.holds = 0
        self.step_ms: dict[int, float] = {}
        self.arrived = threading.Condition()
        self.static_pub = self.node.create_publisher(Image, 'camera/static/image_raw', 10)
        self.gripper_pub = self.node.create_publisher(Image, 'camera/gripper/image_raw', 10)
        self.joint_pub = self.node.create_publisher(JointState, 'joint_states', 10)
        self.instruction_pub = self.node.create_publisher(String, 'instruction', QoSProfile(
            depth=LATCHED_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.action_sub = self.node.create_subscription(ArmAction, 'arm_action', self._on_action, 100)
        self.node.create_subscription(ExitStats, 'exit_stats', self._on_stats, 100)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_action(self, msg: Any) -> None:
        from deer_ros.nodes.messages import stamp_ns
        now = time.perf_counter()
        with self.arrived:
            if msg.hold:
                self.holds += 1
            else:
                self.answered.setdefault(stamp_ns(msg.header.stamp), now)
            self.arrived.notify_all()

    def _on_stats(self, msg: Any) -> None:
        from deer_ros.nodes.messages import stamp_ns
        self.step_ms[stamp_ns(msg.header.stamp)] = msg.step_latency_ms

    def wait_for_node(self, process: subprocess.Popen, log: Any) -> None:
        deadline = time.monotonic() + STARTUP_S
        while not (self.static_pub.get_subscription_count() and self.action_sub.get_publisher_count()):
            if time.monotonic() > deadline or process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f'policy node did not come up:\n{log.read().decode(errors="replace")}')
            time.sleep(0.1)
        from std_msgs.msg import String
        self.instruction_pub.publish(String(data='open the drawer'))
        time.sleep(1.0)  # latched instruction delivered before the first frame

    def send(self, static: np.ndarray, gripper: np.ndarray) -> tuple[int, float]:
        """Publish one frame (both cameras and the joint states, one stamp); returns (stamp ns, send time)."""
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Header

        from deer_ros.nodes.image_conversion import rgb_to_image_msg
        from deer_ros.nodes.messages import stamp_ns
        header = Header(stamp=self.node.get_clock().now().to_msg())
        sent = time.perf_counter()
        self.static_pub.publish(rgb_to_image_msg(static, header))
        self.gripper_pub.publish(rgb_to_image_msg(gripper, header))
        self.joint_pub.publish(JointState(header=header, position=[0.0] * 7))
        return stamp_ns(header.stamp), sent

    def close(self) -> None:
        self.executor.shutdown()
        self.spinner.join(10.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def lockstep(driver: Driver, pid: int, frames: int, warmup: int, sim_s: float) -> dict[str, Any]:
    """One frame at a time: each waits for its action (and a simulator step of ``sim_s``) before the next."""
    end_to_end, stamps = [], []
    started = cpu = 0.0
    for index, (static, gripper) in enumerate(_frames(warmup + frames)):
        if index == warmup:
            started, cpu = time.perf_counter(), cpu_seconds(pid)
        stamp, sent = driver.send(static, gripper)
        with driver.arrived:
            if not driver.arrived.wait_for(lambda: stamp in driver.answered, 60.0):
                raise RuntimeError(f'no action for frame {index}')
        if index >= warmup:
            end_to_end.append((driver.answered[stamp] - sent) * 1e3)
            stamps.append(stamp)
        time.sleep(sim_s)
    wall = time.perf_counter() - started
    node_cpu = cpu_seconds(pid) - cpu
    time.sleep(0.2)  # the last ExitStats follows its action
    in_node = [driver.step_ms[s] for s in stamps if s in driver.step_ms]
    return {'end_to_end': percentiles(end_to_end), 'node_step': percentiles(in_node),
            'steps_per_s': frames / wall, 'node_cpu_percent': 100.0 * node_cpu / wall,
            'node_cpu_ms_per_step': 1e3 * node_cpu / frames}


def stream(driver: Driver, pid: int, hz: float, seconds: float) -> dict[str, Any]:
    """Frames at a fixed rate for ``seconds``, whatever the node answers."""
    frames = _frames(16)
    sent: dict[int, float] = {}
    with driver.arrived:
        holds_before = driver.holds
    started, cpu = time.perf_counter(), cpu_seconds(pid)
    index = 0
    while time.perf_counter() < started + seconds:
        stamp, at = driver.send(*frames[index % len(frames)])
        sent[stamp] = at
        index += 1
        time.sleep(max(0.0, started + index / hz - time.perf_counter()))
    wall = time.perf_counter() - started
    node_cpu = cpu_seconds(pid) - cpu
    time.sleep(1.0)  # answers to the last frames
    with driver.arrived:
        latencies = [(driver.answered[s] - at) * 1e3 for s, at in sent.items() if s in driver.answered]
        holds = driver.holds - holds_before
    return {'frames_sent': index, 'frames_per_s': index / wall, 'steps_per_s': len(latencies) / wall,
            'latency': percentiles(latencies), 'holds': holds, 'node_cpu_percent': 100.0 * node_cpu / wall,
            'node_cpu_ms_per_step': 1e3 * node_cpu / max(len(latencies), 1)}


def through_ros(config: str, rate_hz: float, threads: int, domain_id: int, args: argparse.Namespace) -> dict:
    """Start the node at ``rate_hz``, run the lock-step then the stream drive against it."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    log = tempfile.NamedTemporaryFile('w+b', suffix='.log', delete=False)
    process = subprocess.Popen(
        [sys.executable, '-m', 'deer_ros.nodes.policy_node', '--ros-args', '-p', "checkpoint:=''",
         '-p', f'model_config:={config}', '-p', f'control_rate_hz:={rate_hz}', '-p', f'num_threads:={threads}',
         '-p', 'max_input_age_s:=30.0'],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = Driver(domain_id)
    try:
        driver.wait_for_node(process, log)
        result = {}
        if 'lockstep' in args.modes:
            result['lockstep'] = lockstep(driver, process.pid, args.frames, args.warmup, args.sim_ms / 1e3)
        if 'stream' in args.modes:
            result['stream'] = stream(driver, process.pid, args.stream_hz, args.seconds)
        return result
    finally:
        process.send_signal(2)
        process.wait(30)
        driver.close()
        Path(log.name).unlink()


def _table(results: dict, rates: list[float]) -> None:
    print('\n| model | path | steps/s | p50 (ms) | p99 (ms) | node CPU % | node CPU ms/step |\n'
          '|---|---|---|---|---|---|---|')
    for config, entry in results['configs'].items():
        local = entry['in_process']
        print(f'| {config} | in-process step | {1e3 / local["mean_ms"]:.1f} | {local["p50_ms"]:.1f} | '
              f'{local["p99_ms"]:.1f} | | |')
        for rate in rates:
            ros = entry[f'ros_{rate:g}hz']
            if 'lockstep' in ros:
                run = ros['lockstep']
                print(f'| {config} | lock-step, {rate:g} Hz tick: frame → action | {run["steps_per_s"]:.1f} | '
                      f'{run["end_to_end"]["p50_ms"]:.1f} | {run["end_to_end"]["p99_ms"]:.1f} | '
                      f'{run["node_cpu_percent"]:.0f} | {run["node_cpu_ms_per_step"]:.1f} |')
                print(f'| {config} | lock-step, {rate:g} Hz tick: in-node step | | {run["node_step"]["p50_ms"]:.1f} | '
                      f'{run["node_step"]["p99_ms"]:.1f} | | |')
            if 'stream' in ros:
                run = ros['stream']
                print(f'| {config} | stream {run["frames_per_s"]:.0f} frames/s, {rate:g} Hz tick '
                      f'({run["holds"]} holds) | {run["steps_per_s"]:.1f} | {run["latency"]["p50_ms"]:.1f} | '
                      f'{run["latency"]["p99_ms"]:.1f} | {run["node_cpu_percent"]:.0f} | '
                      f'{run["node_cpu_ms_per_step"]:.1f} |')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=['tiny', 'smollm2'])
    parser.add_argument('--modes', nargs='+', choices=('lockstep', 'stream'), default=['lockstep', 'stream'])
    parser.add_argument('--frames', type=int, default=40, help='lock-step: measured frames')
    parser.add_argument('--warmup', type=int, default=5, help='lock-step: frames before measuring')
    parser.add_argument('--sim-ms', type=float, default=0.0,
                        help='lock-step: pause after each action, standing in for the simulator step')
    parser.add_argument('--stream-hz', type=float, default=30.0, help='stream: frames published per second')
    parser.add_argument('--seconds', type=float, default=20.0, help='stream: how long')
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
            entry[f'ros_{rate:g}hz'] = through_ros(config, rate, args.threads, args.domain_id, args)
        results['configs'][config] = entry
        print(json.dumps({config: entry}), flush=True)
    results['load_average_after'] = os.getloadavg()
    _table(results, args.rates)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
