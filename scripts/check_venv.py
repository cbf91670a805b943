#!/usr/bin/env python3
"""Check the rules a working deer_ros venv must keep; exit 1 and say which one broke.

Each rule guards a failure that is silent or far from its cause (docs/install.md):
a CUDA torch (GBs of nvidia-* wheels, wrong build on a CPU box), setuptools>=80
(`colcon test` quietly runs 0 tests), PyPI's unrelated `launch` (shadows ROS
launch), and Jazzy wheels mixed into the Kilted set (same module names, ABI clash).
setup.sh runs it after every pip install; test_package_layout.py runs it too.
"""
from __future__ import annotations

import importlib.metadata as md
import sys


def _major(version: str) -> int:
    return int(version.split('.')[0])


def problems() -> list[str]:
    """Return one message per broken rule (empty when the venv is sound)."""
    names = {(dist.metadata['Name'] or '').lower() for dist in md.distributions()}
    found = []
    try:
        torch = md.version('torch')
    except md.PackageNotFoundError:
        torch = None
    if torch is not None and not torch.endswith('+cpu'):
        found.append(f'torch {torch} is not the CPU build (expected torch==2.13.0+cpu)')
    cuda = sorted(name for name in names if name.startswith('nvidia-'))
    if cuda:
        found.append(f'CUDA wheels installed: {", ".join(cuda)}')
    if _major(md.version('setuptools')) >= 80:
        found.append(f'setuptools {md.version("setuptools")} >= 80 (colcon test would run 0 tests)')
    if 'launch' in names:
        found.append("PyPI 'launch' is installed: it is unrelated to ROS and shadows ROS launch")
    jazzy = sorted(name for name in names if name.startswith('ros-jazzy-'))
    if jazzy:
        found.append(f'Jazzy wheels mixed with Kilted: {", ".join(jazzy)}')
    return found


def main() -> int:
    found = problems()
    for message in found:
        print(f'check_venv: {message}', file=sys.stderr)
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main())
