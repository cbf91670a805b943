"""Fixtures for the node tests: an in-process driver node (the checkpoints are in test/conftest.py)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from policy_driver import PolicyDriver


@pytest.fixture
def driver(rclpy_context: Any) -> Iterator[PolicyDriver]:
    node = PolicyDriver(rclpy_context)
    yield node
    node.destroy_node()
