"""The configuration of CALVIN's evaluation env, composed from calvin_env's own ``conf/`` when no dataset is given.

CALVIN's ``get_env`` builds the env from ``<split>/validation/.hydra/merged_config.yaml``:
calvin_env's data-collection config (env, scene D, robot, cameras) merged with its
rendering config. A dataset split is needed for nothing else here, so without one the
same configuration is composed from the ``conf/`` folder of the calvin_env checkout:
``config_data_collection`` with the static and gripper cameras (the datasets also
record a tactile sensor, which would pull in tacto), merged with ``config_rendering``.

Plain YAML rather than hydra's compose: calvin_env's configs use only a small part of
hydra's defaults lists (``group: option``, ``group@package: option``, a base config of
the same group, ``override hydra/...``), and the composition can then be checked
without calvin_env or hydra installed. It equals hydra 1.3's compose and merge except
for ``vr_input`` (its ``# @package _group_`` header is hydra 1.0 style, which hydra 1.1,
used for the datasets, read as placed here and later versions take literally).
Interpolations (``${scene.robot_base_position}``) stay as text, for OmegaConf to
resolve when calvin_env instantiates the env.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

DATA_COLLECTION = 'config_data_collection'
RENDERING = 'config_rendering'
# Group options of the evaluation env: the dataset's scene and robot, its cameras less the tactile sensor.
EVALUATION_CHOICES = {'cameras': 'static_and_gripper', 'scene': 'calvin_scene_D', 'robot': 'panda_longer_finger'}
_MISSING = '???'  # hydra's "must be given on the command line" (the renderer's load_dir)


def evaluation_config(conf_dir: Path) -> dict[str, Any]:
    """What a dataset's ``merged_config.yaml`` holds, composed from calvin_env's ``conf_dir``."""
    merged = _merge(compose(conf_dir, DATA_COLLECTION, EVALUATION_CHOICES),
                    compose(conf_dir, RENDERING, EVALUATION_CHOICES))
    return {key: value for key, value in merged.items() if key != 'hydra' and value != _MISSING}


def compose(conf_dir: Path, name: str, choices: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The primary config ``conf_dir/<name>.yaml`` with its defaults list applied.

    ``choices`` replace the options its defaults list picks for top-level groups (``cameras=static_and_gripper``).
    """
    return _compose(conf_dir, '', name, choices or {})


def _compose(conf_dir: Path, group: str, name: str, choices: Mapping[str, str]) -> dict[str, Any]:
    """One config of ``group``: its defaults in order, then its own keys (hydra's implicit ``_self_`` last).

    A default's group is relative to ``group`` and lands under its package (the group name unless
    ``group@package`` says otherwise), relative to this config's place.
    """
    path = conf_dir / group / f'{name}.yaml'
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: not a calvin_env conf/ folder')
    own = yaml.safe_load(path.read_text()) or {}
    composed: dict[str, Any] = {}
    for entry in own.pop('defaults', []):
        if isinstance(entry, str):  # a base config of the same group
            if entry != '_self_':
                composed = _merge(composed, _compose(conf_dir, group, entry, {}))
            continue
        [(key, option)] = entry.items()
        if key.startswith('override '):  # hydra's own settings (logging)
            continue
        sub_group, _, package = key.partition('@')
        option = choices.get(sub_group, option)
        composed = _merge(composed, {package or sub_group: _compose(conf_dir, f'{group}/{sub_group}'.lstrip('/'),
                                                                    option, {})})
    return _merge(composed, own)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on ``base`` as OmegaConf merges: mappings key by key, anything else (lists too) replaced,
    except by a missing value (``???``)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        elif value != _MISSING or key not in merged:
            merged[key] = value
    return merged
