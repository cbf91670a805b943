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
# What build_sim_factory and check_policy raise for a run that cannot work (options, a missing install or config).
SIM_ERRORS = (ValueError, ImportError, FileNotFoundError)
# ``--policy expert``: named by its import path so this package never imports deer_ros.expert.
EXPERT_POLICY = 'deer_ros.expert.scripted_expert:ExpertPolicy'


def load_policy_factory(spec: str, kwargs: dict[str, Any] | None = None) -> PolicyFactory:
    """``expert`` or ``package.module:callable``; keyword arguments are bound with ``functools.partial``."""
    module_name, sep, attribute = (EXPERT_POLICY if spec == 'expert' else spec).partition(':')
    if not sep:
        raise ValueError(f'a policy must be "expert" or "module:callable", got {spec!r}')
    factory = getattr(importlib.import_module(module_name), attribute)
    return functools.partial(factory, **kwargs) if kwargs else factory


def check_policy(spec: str, backend: Backend) -> None:
    """Raise ``ValueError`` when the policy cannot run on the backend, so a run is refused before it starts."""
    if spec == 'expert' and backend == 'calvin':
        raise ValueError('the scripted expert (--policy expert) plans from the embedded simulator\'s scene layout, '
                         'which calvin_env does not expose: evaluate it on the embedded backend, or evaluate a '
                         'learned policy on calvin')


def build_sim_factory(backend: Backend = 'embedded', scene: str = 'D', *, cameras: bool = True,
                      calvin_dataset: Path | None = None, use_egl: bool = False) -> tuple[SimFactory, list[str]]:
    """The backend's factory and the tasks its oracle can judge (which chains may contain).

    Options the backend cannot honour raise ``ValueError``; for calvin, a missing calvin_env
    (:class:`~deer_ros.benchmark.calvin_adapter.CalvinNotInstalledError`) or dataset config
    (``FileNotFoundError``) raise here too, before anything starts.
    """
    if backend == 'calvin':
        from deer_ros.benchmark.calvin_adapter import SCENE, CalvinSim  # calvin_env only when asked for
        if scene != SCENE:
            raise ValueError(f'the calvin backend runs CALVIN\'s scene {SCENE} (the scene its env config loads and '
                             f'CALVIN evaluates on), not scene {scene}; scenes A-C exist in the embedded simulator')
        if not cameras:
            raise ValueError('the calvin backend always renders its cameras: --no-cameras is for the embedded '
                             'simulator only')
        factory = CalvinSim(None if calvin_dataset is None else str(calvin_dataset), use_egl=use_egl)
        factory.check()
        return factory, sorted(TASK_RULES)
    if backend != 'embedded':
        raise ValueError(f'unknown simulator backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    return EmbeddedSim(scene, cameras=cameras), list(SUPPORTED_TASKS)
