"""Typed factories for what an evaluation runs: the simulator backend and the policy under test.

``deer-ros evaluate``, ``deer-ros collect`` and the bridge node all build their
simulator and policy here, from plain values (no command-line namespaces).
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, Literal

from deer_ros.benchmark.chains import TASK_RULES
from deer_ros.benchmark.evaluation import EmbeddedSim, PolicyFactory, SimFactory
from deer_ros.benchmark.tasks import SUPPORTED_TASKS

Backend = Literal['embedded', 'calvin']
BACKENDS: tuple[str, ...] = ('embedded', 'calvin')
# ``--policy expert``: named by its import path so this package never imports deer_ros.expert.
EXPERT_POLICY = 'deer_ros.expert.scripted_expert:ExpertPolicy'


def load_policy_factory(spec: str, kwargs: dict[str, Any] | None = None) -> PolicyFactory:
    """``expert`` or ``package.module:callable``; keyword arguments are bound with ``functools.partial``."""
    module_name, sep, attribute = (EXPERT_POLICY if spec == 'expert' else spec).partition(':')
    if not sep:
        raise ValueError(f'a policy must be "expert" or "module:callable", got {spec!r}')
    factory = getattr(importlib.import_module(module_name), attribute)
    return functools.partial(factory, **kwargs) if kwargs else factory


def build_sim_factory(backend: Backend = 'embedded', scene: str = 'D', *, cameras: bool = True,
                      calvin_dataset: Path | None = None, use_egl: bool = False) -> tuple[SimFactory, list[str]]:
    """The backend's factory and the tasks its oracle can judge (which chains may contain)."""
    if backend == 'calvin':
        if calvin_dataset is None:
            raise ValueError('the calvin backend needs a CALVIN split root (--calvin-dataset / calvin_dataset)')
        from deer_ros.benchmark.calvin_adapter import CalvinSim  # calvin_env only when asked for
        return CalvinSim(str(calvin_dataset), use_egl=use_egl, scene=scene), sorted(TASK_RULES)
    if backend != 'embedded':
        raise ValueError(f'unknown simulator backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    return EmbeddedSim(scene, cameras=cameras), list(SUPPORTED_TASKS)
