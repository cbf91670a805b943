"""Test helpers for ROS 2: isolated domain ids, nodes as subprocesses, background spinning.

Kept free of pytest so fixtures (conftest.py) and plain scripts can both use it.
No launch/launch_testing: they are not on PyPI (docs/install.md), so a node under
test runs as ``python -m module --ros-args ...``, exactly as its console script would.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

TEST_DIR = Path(__file__).resolve().parent

# DDS maps domain d to UDP ports 7400 + 250 * d; ids above 101 collide with Linux's
# ephemeral port range. 0 and 1 are left to whatever else runs on the machine.
FIRST_DOMAIN_ID = 2
LAST_DOMAIN_ID = 101
DOMAIN_BLOCK_SIZE = 24


class DomainIds:
    """Hands out ROS_DOMAIN_IDs from a block that no concurrent test run on this host uses.

    Several engineers (and CI) run the suite on one machine at once; with shared ids
    their nodes would discover each other and a test could receive another run's
    messages. Each run takes an exclusive ``flock`` on one block's lock file and holds
    it until the process exits; inside the block, ids cycle so consecutive tests never
    share a domain with a node the previous test may still be tearing down.
    """

    def __init__(self, base: int | None = None, size: int = DOMAIN_BLOCK_SIZE,
                 lock_dir: Path | None = None) -> None:
        self._lock_file: IO[str] | None = None
        self._lock_dir = Path(tempfile.gettempdir()) if lock_dir is None else Path(lock_dir)
        self.base = self._reserve_block(size) if base is None else base
        if not FIRST_DOMAIN_ID <= self.base <= LAST_DOMAIN_ID:
            raise ValueError(f'domain id base {self.base} outside {FIRST_DOMAIN_ID}..{LAST_DOMAIN_ID}')
        self.size = min(size, LAST_DOMAIN_ID + 1 - self.base)
        self._next = 0
        self._lock = threading.Lock()

    def _reserve_block(self, size: int) -> int:
        for base in range(FIRST_DOMAIN_ID, LAST_DOMAIN_ID + 2 - size, size):
            lock_path = self._lock_dir / f'deer_ros_test_domains_{base}.lock'
            lock_file = open(lock_path, 'w')  # noqa: SIM115 - held for the process lifetime
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                continue
            self._lock_file = lock_file
            return base
        raise RuntimeError('every ROS_DOMAIN_ID block is held by another test run; '
                           'set DEER_ROS_TEST_DOMAIN_BASE to share one deliberately')

    def close(self) -> None:
        """Release the block early (it is released anyway when the process exits)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def next(self) -> int:
        with self._lock:
            domain_id = self.base + self._next % self.size
            self._next += 1
        return domain_id


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


def write_params_file(path: Path, parameters: Mapping[str, Any], node_name: str = '/**') -> Path:
    """Write a ROS 2 params file giving ``parameters`` to ``node_name`` (default: every node)."""
    path.write_text(yaml.safe_dump({node_name: {'ros__parameters': dict(parameters)}}))
    return path


def ros_param_arg(name: str, value: Any) -> str:
    """Format ``name:=value`` for ``-p``; rcl parses the value as YAML, and JSON is valid YAML.

    JSON keeps types exact: a str stays a string even when it looks like a number.
    """
    return f'{name}:={json.dumps(value)}'


class NodeProcess:
    """One node run as ``python -m module [args] --ros-args ...`` in its own process.

    Output (stdout and stderr, which carries ROS logging) goes to ``log_path`` rather
    than a pipe, so a chatty node can never block on a full pipe buffer. ``stop()``
    sends SIGINT, as Ctrl-C would, and kills only if the node ignores it.
    """

    def __init__(
        self,
        module: str,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        params_file: Path | None = None,
        params: Mapping[str, Any] | None = None,
        ros_args: Iterable[str] = (),
        args: Iterable[str] = (),
        pythonpath: Iterable[Path | str] = (),
    ) -> None:
        self.module = module
        self.log_path = Path(log_path)
        ros = []
        if params_file is not None:
            ros += ['--params-file', str(params_file)]
        for name, value in (params or {}).items():
            ros += ['-p', ros_param_arg(name, value)]
        ros += list(ros_args)
        self.command = [sys.executable, '-m', module, *args] + (['--ros-args', *ros] if ros else [])
        self.env = dict(os.environ if env is None else env)
        extra = [str(p) for p in pythonpath] + [str(TEST_DIR)]
        self.env['PYTHONPATH'] = os.pathsep.join(extra + [p for p in [self.env.get('PYTHONPATH')] if p])
        self.env['PYTHONUNBUFFERED'] = '1'
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def log(self) -> str:
        """Everything the node printed so far."""
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_log(self, text: str, timeout: float = 15.0) -> bool:
        """Wait until ``text`` appears in the log; False early if the node exits first."""
        return wait_for(lambda: text in self.log or not self.running(), timeout) and text in self.log

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGKILL after ``timeout`` s; return the exit code (-9 when killed)."""
        if self.process is None:
            raise RuntimeError(f'{self.module} was never started')
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = 'never started' if self.process is None else (
            'running' if self.running() else f'exited {self.process.returncode}')
        return f'<NodeProcess {self.module} {state}; log {self.log_path}>'


class BackgroundSpinner:
    """Spin nodes on an executor in a daemon thread while the test body runs.

    The test thread stays free to publish, wait and assert; callbacks run on the
    executor's threads. Leaving the ``with`` block stops spinning before the
    executor is shut down, so no callback can touch a node being destroyed.
    """

    def __init__(self, *nodes: Any, context: Any = None, num_threads: int = 2) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(num_threads=num_threads, context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name='ros-spinner', daemon=True)
        self.error: BaseException | None = None

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException, ShutdownException

        try:
            while not self._stop.is_set() and self.executor.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, ShutdownException):
            pass
        except BaseException as error:  # surfaced in __exit__, not lost in the thread
            self.error = error

    def __enter__(self) -> BackgroundSpinner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.executor.shutdown(timeout_sec=5)
        if self.error is not None:
            raise RuntimeError('a callback failed while spinning') from self.error
