"""Fixtures of the training tests: a demo dataset on disk, a small model config, one thread."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from small_models import small_config
from train_fixtures import write_demo_dataset


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp('demos'), train_episodes=4, val_episodes=2, length=10)


@pytest.fixture(scope='session')
def small_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('config') / 'small.json'
    small_config().save(path)
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
