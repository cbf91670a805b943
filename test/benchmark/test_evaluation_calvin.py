"""The real-CALVIN backend refuses what cannot work before anything starts (options it cannot honour, calvin_env
missing: a clear, actionable error, not a stray ImportError or a dead node), and closes its env once."""
from __future__ import annotations

import gc
import importlib.util
import pickle
import re
import sys
from typing import Any

import pytest

from deer_ros.benchmark.calvin_adapter import CalvinEnv, CalvinNotInstalledError, CalvinSim
from deer_ros.cli import main

missing_calvin_env = pytest.mark.skipif(importlib.util.find_spec('calvin_env') is not None,
                                        reason='calvin_env is installed here; this tests the missing-package path')


@missing_calvin_env
@pytest.mark.parametrize('dataset', [True, False], ids=['dataset', 'composed-config'])
def test_missing_calvin_env_names_the_install_docs(tmp_path, dataset) -> None:
    factory = pickle.loads(pickle.dumps(CalvinSim(str(tmp_path) if dataset else None)))  # workers get it pickled
    with pytest.raises(CalvinNotInstalledError, match='docs/install.md') as error:
        factory()
    assert isinstance(error.value, ImportError)


@missing_calvin_env
def test_evaluate_cli_reports_missing_calvin_env(tmp_path) -> None:
    """Refused before the run starts (each chain would otherwise fail on the import and be recorded as failed)."""
    with pytest.raises(SystemExit, match=r'^deer-ros evaluate --backend calvin: calvin_env is not installed.*'
                                         r'docs/install\.md'):
        main(['evaluate', '--backend', 'calvin', '--policy', 'some.module:factory', '--num-chains', '1',
              '--no-progress', '--output', str(tmp_path / 'report.json')])
    assert list(tmp_path.iterdir()) == []


@missing_calvin_env
def test_demo_checks_calvin_env_before_starting_any_node(capsys) -> None:
    with pytest.raises(SystemExit, match=r'^deer-ros demo --sim calvin: calvin_env is not installed'):
        main(['demo', '--sim', 'calvin'])
    assert 'node logs' not in capsys.readouterr().out  # printed once the nodes are being started


@pytest.mark.parametrize('options, reason', [
    (['--policy', 'expert'], 'the scripted expert (--policy expert) plans from the embedded simulator'),
    (['--policy', 'some.module:factory', '--scene', 'A'], "the calvin backend runs CALVIN's scene D"),
    (['--policy', 'some.module:factory', '--no-cameras'], 'the calvin backend always renders its cameras'),
])
def test_evaluate_refuses_options_the_calvin_backend_cannot_honour(tmp_path, options, reason) -> None:
    with pytest.raises(SystemExit, match=f'^deer-ros evaluate --backend calvin: {re.escape(reason)}'):
        main(['evaluate', '--backend', 'calvin', *options, '--num-chains', '1', '--no-progress',
              '--output', str(tmp_path / 'report.json')])
    assert list(tmp_path.iterdir()) == []


class _ClosesLikePlayTableSimEnv:
    """Stands in for calvin_env's PlayTableSimEnv where closing is concerned: ``close()`` disconnects from the
    physics server and raises once disconnected, and ``__del__`` calls ``close()``."""

    def __init__(self) -> None:
        self.connected = True

    def close(self) -> None:
        if not self.connected:
            raise RuntimeError('Not connected to physics server')
        self.connected = False

    def __del__(self) -> None:
        self.close()


def test_a_closed_env_leaves_its_finaliser_nothing_to_do(monkeypatch) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
    inner = _ClosesLikePlayTableSimEnv()
    env = CalvinEnv(inner)
    env.close()
    env.close()  # the evaluation closes after a failed chain and again at the end
    assert not inner.connected
    del env, inner
    gc.collect()
    assert unraisable == []
