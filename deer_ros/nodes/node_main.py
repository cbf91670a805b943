"""The process around a node, shared by both executables: start, spin, stop cleanly, exit code.

Signals: rclpy's own SIGINT handler would shut the context down before a node
could publish its last messages (the policy's final hold), so SIGINT and SIGTERM
both raise ``KeyboardInterrupt`` in the spinning thread instead, and the context
goes down only after the node stopped. Python runs that handler only between
bytecodes, so the spin wakes at least every ``WAKE_S``: a node with nothing to
do (the bridge before a policy is up) would otherwise block Ctrl-C forever.

Executor: rclpy's ``SingleThreadedExecutor`` for every node. In this rclpy
release the ``MultiThreadedExecutor`` spends CPU polling (rclpy issues 1452 and
1223), which a node that computes cannot spare (docs/results.md), and its
shutdown destroys its wake-up guard before joining its pool, so callbacks still
queued there print "exception was never retrieved" on exit. One thread has
neither problem; the nodes' callbacks only hand work over or are the work.
"""
from __future__ import annotations

import signal
from typing import Callable, TypeVar

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future

WAKE_S = 0.2  # longest the spin loop waits before it looks at signals and ``until`` again
# Bad config, checkpoint, budget, simulator backend or parameter type (e.g. 30 for a double): the node cannot start.
STARTUP_ERRORS = (ValueError, OSError, ImportError, RuntimeError, ParameterException)
NodeT = TypeVar('NodeT', bound=Node)


def run_node(make_node: Callable[[], NodeT], name: str, *, on_stop: Callable[[NodeT], None],
             until: Callable[[NodeT], Future] | None = None, args: list[str] | None = None) -> int:
    """Run one node until Ctrl-C, SIGTERM or ``until(node)`` completes; return the process exit code.

    1 when the node cannot start (the reason is logged as fatal under ``name``)
    or when ``until``'s future completed with ``False``; otherwise 0. On the way
    out, ``on_stop(node)`` runs while the context is still up (last messages,
    the node's own threads), then the executor and the node's handles go.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        node = make_node()
    except STARTUP_ERRORS as error:
        rclpy.logging.get_logger(name).fatal(f'cannot start: {error}')
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    done = until(node) if until is not None else None
    try:
        while executor.context.ok() and (done is None or not done.done()):
            executor.spin_once(timeout_sec=WAKE_S)
    except KeyboardInterrupt:
        pass
    finally:
        on_stop(node)
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0 if done is None or done.result() is not False else 1
