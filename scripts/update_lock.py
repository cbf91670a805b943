#!/usr/bin/env python3
"""Rewrite requirements/lock.txt from what the venv resolved to.

Run after changing requirements/*.txt and re-running ./setup.sh:
    .venv/bin/python scripts/update_lock.py

Why filter the freeze: each ros-* wheel also registers its ament package under
the bare ROS name (``rclpy``, ``std_msgs``, ...); those are not installable
distributions, so pinning them would only confuse. Packages installed with
--no-deps (requirements/no-deps.txt) stay out too, since a constraint on them
would be inert.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / 'requirements'
HEADER = """\
# Every package the venv resolves to, used as a constraints file (-c) by setup.sh so that a
# fresh setup reproduces the tested set. Top-level choices live in the other requirements/*.txt.
# Regenerate with: .venv/bin/python scripts/update_lock.py (docs/install.md, "Updating pins").
"""


def normalise(name: str) -> str:
    """PEP 503 name normalisation, so `PyYAML`, `pyyaml` and `py_yaml` compare equal."""
    return re.sub(r'[-_.]+', '-', name).lower()


def lock_lines(freeze: list[str], no_deps: set[str]) -> list[str]:
    pins = {normalise(line.split('==')[0]): line for line in freeze if '==' in line}
    keep = [line for key, line in pins.items()
            if key != 'pip' and key not in no_deps and not (not key.startswith('ros-') and f'ros-{key}' in pins)]
    return sorted(keep, key=lambda line: normalise(line.split('==')[0]))


def main() -> int:
    freeze = subprocess.run([sys.executable, '-m', 'pip', 'freeze', '--all', '--exclude-editable'],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    no_deps = {normalise(line.split('==')[0]) for line in (REQUIREMENTS / 'no-deps.txt').read_text().splitlines()
               if '==' in line and not line.startswith('#')}
    lines = lock_lines(freeze, no_deps)
    (REQUIREMENTS / 'lock.txt').write_text(HEADER + '\n'.join(lines) + '\n')
    print(f'requirements/lock.txt: {len(lines)} pins')
    return 0


if __name__ == '__main__':
    sys.exit(main())
