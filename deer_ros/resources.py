"""Where the package's data files live, from a source checkout or an install.

``config/`` sits at the repository root in a checkout and under
``share/deer_ros/`` once installed (colcon or pip data_files).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _candidates(name: str) -> list[Path]:
    return [
        _PACKAGE_DIR.parent / name,                      # source checkout
        Path(sys.prefix) / 'share' / 'deer_ros' / name,  # pip / venv install
        *(Path(p) / 'share' / 'deer_ros' / name          # colcon install spaces
          for p in os.environ.get('AMENT_PREFIX_PATH', '').split(':') if p),
    ]


def _find(name: str) -> Path:
    for path in _candidates(name):
        if path.is_dir():
            return path
    raise FileNotFoundError(f'deer_ros data directory {name!r} not found; looked in {_candidates(name)}')


def config_dir() -> Path:
    return _find('config')


def pretrained_dir() -> Path:
    """Shipped trained default policy (weights + calibration), inside the Python package."""
    return _PACKAGE_DIR / 'pretrained'


def shipped_policies() -> list[str]:
    """Names of the trained policies inside the package (directories holding a ``config.json``)."""
    root = pretrained_dir()
    return sorted(p.name for p in root.iterdir() if (p / 'config.json').is_file()) if root.is_dir() else []


def resolve_checkpoint(value: str | Path) -> Path:
    """A checkpoint setting as a directory: an existing directory as given, else the shipped policy of that name.

    So ``checkpoint: tiny`` in a params file means the trained default policy
    wherever the package is installed.

    Raises:
        FileNotFoundError: neither a directory nor a shipped policy; the message lists the shipped ones.
    """
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if str(value) in shipped_policies():
        return pretrained_dir() / str(value)
    raise FileNotFoundError(f'checkpoint {str(value)!r} is neither a directory nor a policy shipped with '
                            f'deer_ros (shipped: {", ".join(shipped_policies()) or "none"})')
