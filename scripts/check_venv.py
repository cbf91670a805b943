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
from pathlib import Path


def _major(version: str) -> int:
    return int(version.split('.')[0])


def is_ros_launch(dist: md.Distribution) -> bool:
    """Whether a distribution named ``launch`` is ROS 2's own (github.com/ros2/launch).

    Both are named ``launch``: ROS's comes from a ROS install space or a colcon
    workspace (system-ROS users have it on their Python path, and ``colcon test``
    must pass there), PyPI's 0.1.x is an unrelated application launcher. ROS's
    installs the ``launch.LaunchDescription`` module beside its metadata, which the
    other does not; its metadata also names the ros2/launch repository.
    """
    home = (dist.metadata['Home-page'] or '').rstrip('/')
    return Path(dist.locate_file('launch/launch_description.py')).is_file() or home == 'https://github.com/ros2/launch'


def problems(path: list[str] | None = None) -> list[str]:
    """Return one message per broken rule (empty when the venv is sound); ``path`` replaces ``sys.path``."""
    dists: dict[str, list[md.Distribution]] = {}
    for dist in md.distributions(**({} if path is None else {'path': path})):
        dists.setdefault((dist.metadata['Name'] or '').lower(), []).append(dist)

    def version(name: str) -> str | None:
        return dists[name][0].version if name in dists else None

    found = []
    torch = version('torch')
    if torch is not None and not torch.endswith('+cpu'):
        found.append(f'torch {torch} is not the CPU build (expected torch==2.13.0+cpu)')
    cuda = sorted(name for name in dists if name.startswith('nvidia-'))
    if cuda:
        found.append(f'CUDA wheels installed: {", ".join(cuda)}')
    setuptools = version('setuptools')
    if setuptools is not None and _major(setuptools) >= 80:
        found.append(f'setuptools {setuptools} >= 80 (colcon test would run 0 tests)')
    for dist in dists.get('launch', []):
        if not is_ros_launch(dist):
            found.append(f"PyPI 'launch' {dist.version} is installed ({dist.locate_file('')}): it is unrelated to ROS "
                         'and shadows ROS launch')
    jazzy = sorted(name for name in dists if name.startswith('ros-jazzy-'))
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
