"""The real-CALVIN backend without calvin_env installed: a clear, actionable error, not a stray ImportError."""
from __future__ import annotations

import importlib.util
import pickle

import pytest

from deer_ros.benchmark.calvin_adapter import CalvinNotInstalledError, CalvinSim

pytestmark = pytest.mark.skipif(importlib.util.find_spec('calvin_env') is not None,
                                reason='calvin_env is installed here; this tests the missing-package path')


def test_missing_calvin_env_names_the_install_docs(tmp_path) -> None:
    factory = pickle.loads(pickle.dumps(CalvinSim(str(tmp_path))))  # workers receive it pickled
    with pytest.raises(CalvinNotInstalledError, match='docs/simulation_eval.md') as error:
        factory()
    assert isinstance(error.value, ImportError)


def test_evaluate_cli_reports_missing_calvin_env(tmp_path) -> None:
    from deer_ros.cli import main
    with pytest.raises(CalvinNotInstalledError):
        main(['evaluate', '--backend', 'calvin', '--calvin-dataset', str(tmp_path), '--num-chains', '1',
              '--no-progress'])
