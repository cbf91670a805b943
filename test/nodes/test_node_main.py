"""The executors run_node picks, and shutting them down with callbacks still queued (run_node's exit path)."""
from __future__ import annotations

import gc
import time

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from deer_ros.nodes.node_main import DrainingExecutor, executor_for

NEVER_RETRIEVED = 'The following exception was never retrieved'


def _shut_down_busy(executor_type: type[MultiThreadedExecutor], context: object) -> list[str]:
    """Both worker threads busy for 0.3 s, more timer callbacks queued behind them, then shutdown as run_node does.

    Returns what the queued callbacks did once they ran.
    """
    ran: list[str] = []
    node = Node('busy', context=context)
    group = ReentrantCallbackGroup()
    for name in ('slow 1', 'slow 2'):
        node.create_timer(0.001, lambda name=name: (time.sleep(0.3), ran.append(name)), group)
    node.create_timer(0.001, lambda: ran.append('quick'), group)
    executor = executor_type(num_threads=2, context=context)
    executor.add_node(node)
    for _ in range(6):  # each hands one ready callback to the pool: two run, the rest wait for a free thread
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown(timeout_sec=5.0)
    node.destroy_node()
    del executor
    gc.collect()  # a failed callback's task reports its exception when collected
    return ran


def test_queued_callbacks_run_before_the_executor_goes(rclpy_context, capsys):
    ran = _shut_down_busy(DrainingExecutor, rclpy_context)
    assert NEVER_RETRIEVED not in capsys.readouterr().err
    assert 'quick' in ran and 'slow 1' in ran


def test_rclpy_executor_still_needs_the_drain(rclpy_context, capsys):
    """The case DrainingExecutor exists for: when this fails, rclpy fixed its shutdown order and it can go."""
    _shut_down_busy(MultiThreadedExecutor, rclpy_context)
    assert f'{NEVER_RETRIEVED}: cannot use Destroyable because destruction was requested' in capsys.readouterr().err


def test_one_thread_gets_the_single_threaded_executor_and_leaves_cleanly(rclpy_context, capsys):
    """The policy node's executor: no pool, so nothing is left queued when it shuts down."""
    assert isinstance(executor_for(1, rclpy_context), SingleThreadedExecutor)
    assert isinstance(executor_for(3, rclpy_context), DrainingExecutor)
    ran: list[str] = []
    node = Node('busy', context=rclpy_context)
    node.create_timer(0.001, lambda: (time.sleep(0.05), ran.append('tick')))
    executor = executor_for(1, rclpy_context)
    executor.add_node(node)
    for _ in range(3):
        executor.spin_once(timeout_sec=1.0)
    executor.shutdown(timeout_sec=5.0)
    node.destroy_node()
    del executor
    gc.collect()
    assert ran == ['tick'] * 3 and NEVER_RETRIEVED not in capsys.readouterr().err
