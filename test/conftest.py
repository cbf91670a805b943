"""Suite-wide ROS 2 isolation, fixtures and test checkpoints (helpers live in ros_helpers.py).

Applies however the suite is started (./test.sh, plain pytest, colcon test):
discovery stays on localhost, logs go to a temporary ROS_HOME, and every test
gets a ROS_DOMAIN_ID of its own from a block no concurrent run on this host holds.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ros_helpers import DomainIds, NodeProcess

from deer_ros.budget.calibration import calibration_path, checkpoint_sha256
from deer_ros.model import DeerVLA, load_config
from deer_ros.policy.runtime import synthetic_calibration

# Set at import, before any test can call rclpy.init(): rcl reads these at init.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

_domain_ids: DomainIds | None = None


def _domains() -> DomainIds:
    """Reserve the run's block lazily, so runs without ROS tests hold no lock."""
    global _domain_ids
    if _domain_ids is None:
        base = os.environ.get('DEER_ROS_TEST_DOMAIN_BASE')
        _domain_ids = DomainIds(int(base) if base else None)
    return _domain_ids


@pytest.fixture(scope='session', autouse=True)
def _ros_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep ROS logs out of ~/.ros (test.sh already points ROS_HOME at a temp dir)."""
    if 'ROS_HOME' not in os.environ and 'ROS_LOG_DIR' not in os.environ:
        os.environ['ROS_HOME'] = str(tmp_path_factory.mktemp('ros_home'))


@pytest.fixture
def ros_domain_id(monkeypatch: pytest.MonkeyPatch) -> int:
    """A ROS_DOMAIN_ID for this test alone, also exported for code calling plain rclpy.init()."""
    domain_id = _domains().next()
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id))
    return domain_id


@pytest.fixture
def ros_env(ros_domain_id: int) -> dict[str, str]:
    """Environment for node subprocesses: this process's env with the test's domain id."""
    return dict(os.environ)


@pytest.fixture
def rclpy_context(ros_domain_id: int) -> Iterator[object]:
    """An initialised rclpy Context on the test's domain, shut down afterwards.

    A private context (not rclpy's global one) so a test that fails half-way cannot
    leave the global context initialised for the next test. No signal handlers:
    Ctrl-C should stop pytest, not just rclpy.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id, signal_handler_options=SignalHandlerOptions.NO)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def start_node(ros_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    """Factory: ``start_node('pkg.module', params={...}, params_file=...)`` -> running NodeProcess.

    Logs land in ``tmp_path/<module>.<n>.log``; every node still running when the
    test ends is stopped (SIGINT, then kill), and its log is printed if the test failed.
    """
    nodes: list[NodeProcess] = []

    def start(module: str, **kwargs: object) -> NodeProcess:
        log_path = tmp_path / f'{module}.{len(nodes)}.log'
        node = NodeProcess(module, log_path=log_path, env=kwargs.pop('env', ros_env), **kwargs)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        if node.running():
            node.stop()
        print(f'--- {node!r}\n{node.log}')


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (seed 0) as a checkpoint directory with ``calibration.npz`` beside the weights."""
    directory = tmp_path_factory.mktemp('tiny_checkpoint')
    torch.manual_seed(0)
    model = DeerVLA(load_config('tiny')).eval()
    model.save_pretrained(directory)
    calibration = synthetic_calibration(model, windows=8)  # 32 samples: enough for the budgets tested
    calibration.metadata['checkpoint_sha256'] = checkpoint_sha256(directory)
    calibration.save(calibration_path(directory))
    return directory


@pytest.fixture(scope='session')
def proprio_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` with ``use_proprio`` (seed 0, synthetic calibration): a policy that also needs the robot state.

    Its cross-attention gates are opened (random init closes them), so the
    visual and robot-state tokens do change the actions.
    """
    directory = tmp_path_factory.mktemp('proprio_checkpoint')
    torch.manual_seed(0)
    model = DeerVLA(dataclasses.replace(load_config('tiny'), use_proprio=True)).eval()
    for block in model.cross_attention:
        block.attention_gate.data.fill_(1.0)
    model.save_pretrained(directory)
    calibration = synthetic_calibration(model, windows=8)
    calibration.metadata['checkpoint_sha256'] = checkpoint_sha256(directory)
    calibration.save(calibration_path(directory))
    return directory
