"""Measure the per-exit step-time table on the live model, and the key it is cached under.

The step timed is the policy's own :meth:`EarlyExitPolicy.step` with
``max_exit=k``: both cameras, the history replay, the decoder up to exit k and
the head at every exit up to k, on the loaded weights (nothing is truncated or
copied). The time is the step's own ``ExitInfo.latency_ms``, the figure the
node reports per step, so the table, the budget and the drift check all read
one clock. The probe policy shares the model, not a live policy's history.

Inputs are random camera frames (a step's work does not depend on pixel
values) and the longest evaluation instruction (a longer text is more tokens).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.budget.calibration import checkpoint_sha256
from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.budget.latency import (
    DEFAULT_REPETITIONS,
    DEFAULT_WARMUP,
    LatencyCache,
    LatencyKey,
    LatencyTable,
    measure_latency,
)
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE
from deer_ros.model.cost import CostTable
from deer_ros.model.family import AnyConfig, AnyModel, TextEncoder
from deer_ros.model.flops import cost_table_for
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.types import Observation

PROBE_INSTRUCTION = max((language.evaluation for language in TASK_LANGUAGE.values()), key=len)
_PROBE_FRAMES = 4


def _cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str | torch.device) -> str:
    """The device in words for the cache key: the CPU model and the CPUs this process may use, or the GPU's name."""
    device = torch.device(device)
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f'cuda: {torch.cuda.get_device_name(index)}'
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f'{device.type}: {_cpu_name()} ({cpus} cpus)'


def source_identity(source: str | Path, config: AnyConfig) -> str:
    """The checkpoint's SHA-256; for a config built with random weights, the config's (timing ignores values)."""
    if Path(source).is_dir():
        return checkpoint_sha256(source)
    return f'config {config.fingerprint()}'


def latency_key(identity: str, device: str | torch.device, *, threads: int | None = None) -> LatencyKey:
    """The key of a table measured now: ``threads`` defaults to torch's current intra-op thread count."""
    return LatencyKey(device=device_description(device), checkpoint=identity,
                      threads=torch.get_num_threads() if threads is None else threads,
                      torch_version=torch.__version__)


def _probe_observations(config: AnyConfig, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation(rng.integers(0, 256, STATIC_CAMERA_SHAPE, dtype=np.uint8),
                        rng.integers(0, 256, GRIPPER_CAMERA_SHAPE, dtype=np.uint8),
                        rng.uniform(-1.0, 1.0, ROBOT_OBS_DIM) if config.use_proprio else None)
            for _ in range(_PROBE_FRAMES)]


def measure_latency_table(model: AnyModel, key: LatencyKey, *, instruction_encoder: TextEncoder | None = None,
                          cost_table: CostTable | None = None, first_exit_checked: bool = False,
                          repetitions: int = DEFAULT_REPETITIONS, warmup: int = DEFAULT_WARMUP,
                          seed: int = 0) -> LatencyTable:
    """Time steps capped at every exit of ``model`` (all of them: measure the full model, before truncating it).

    ``instruction_encoder`` and ``cost_table`` are the live policy's when it
    has them (else built from the config); ``first_exit_checked`` as the live
    criterion, so the reference read before exit 0 is timed when it runs. The
    caller keeps other steps of the same model away meanwhile (the runtime
    holds its step lock): they would share the CPU with the timed ones.
    """
    never_early = ExitCriterion(ExitCriterion.always_last(model.num_exits).thresholds,
                                first_exit_checked=first_exit_checked)
    probe = EarlyExitPolicy(model, never_early, cost_table or cost_table_for(model.config), instruction_encoder)
    observations = _probe_observations(model.config, seed)
    steps = 0

    def step_at(exit_index: int) -> float:
        nonlocal steps
        _, info = probe.step(observations[steps % len(observations)], PROBE_INSTRUCTION, max_exit=exit_index)
        steps += 1
        if info.exit_index != exit_index:
            raise RuntimeError(f'a step capped at exit {exit_index} stopped at exit {info.exit_index}')
        return info.latency_ms

    samples = measure_latency(step_at, model.num_exits, repetitions=repetitions, warmup=warmup)
    return LatencyTable.from_samples(key, model.exit_layers, samples)


def cached_latency_table(model: AnyModel, key: LatencyKey, cache: LatencyCache | None = None, *,
                         refresh: bool = False, **measure: Any) -> tuple[LatencyTable, bool]:
    """``(table, reused)``: the table cached for ``key``, else :func:`measure_latency_table` (``measure``) cached."""
    return (cache or LatencyCache()).get_or_measure(key, lambda: measure_latency_table(model, key, **measure),
                                                    refresh=refresh)
