"""The policy as a node runs it, without ROS: model loading, the live cap, steps.

A plain class so the node stays a thin adapter and everything that decides
what the robot does is tested without DDS. The thresholds -- budgets solved,
explicit ones, closed-loop tracking of the average budget -- belong to
:class:`~deer_ros.budget.controller.ThresholdController` (``runtime.thresholds``);
this class fits the model to the cap of the solution in force: lowering a
cap truncates the live model, raising it reloads the layers from the source.
A config name (no checkpoint) builds a model with seeded random init, so a
reload rebuilds the same weights.

A budget change is one solve and one apply::

    solution = runtime.thresholds.solve(budget)   # pure; raises BudgetError with the feasible range
    runtime.apply(budget, solution)                # the model fits solution.cap, then it is in force

Thread safety: :meth:`step`, :meth:`reset` and the swap inside :meth:`apply`
share one lock, and a step reads the thresholds in force once at its start,
so a budget change lands between two steps, never inside one. A reload is
built outside that lock; the control loop keeps running on the old model
until the new one is ready.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from deer_ros.benchmark.dataset import Window
from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.budget.calibration import CalibrationData, calibration_path, checkpoint_sha256
from deer_ros.budget.caps import Budget, BudgetSolution, CostKind, CostUnit
from deer_ros.budget.collect import collect_calibration
from deer_ros.budget.controller import ThresholdController
from deer_ros.budget.exit_criterion import check_metric
from deer_ros.budget.latency import LatencyCache, LatencyKey, LatencyTable
from deer_ros.budget.latency_drift import Drift, LatencyWatch, RealisedLatency
from deer_ros.budget.refined import load_refined, refined_path
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE
from deer_ros.model import load_model
from deer_ros.model.cost import CostTable
from deer_ros.model.family import AnyConfig, AnyModel, checkpoint_config, instruction_encoder_for, load_config
from deer_ros.model.flops import cost_table_for
from deer_ros.policy.early_exit import EarlyExitPolicy, Precision, autocast_dtype
from deer_ros.policy.latency_probe import latency_key, measure_latency_table, source_identity
from deer_ros.policy.types import Action, ExitInfo, Observation

_LOG = logging.getLogger(__name__)


class _SyntheticWindows:
    """Random-image windows under the evaluation instructions, shaped like ``LanguageWindows``."""

    split_dirs = [Path('<synthetic>')]

    def __init__(self, count: int, window: int, seed: int) -> None:
        self.window = window
        self._count = count
        self._seed = seed
        self._instructions = [language.evaluation for language in TASK_LANGUAGE.values()]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, item: int) -> Window:
        rng = np.random.default_rng((self._seed, item))
        frames = {'rgb_static': rng.integers(0, 256, (self.window, *STATIC_CAMERA_SHAPE), dtype=np.uint8),
                  'rgb_gripper': rng.integers(0, 256, (self.window, *GRIPPER_CAMERA_SHAPE), dtype=np.uint8),
                  'robot_obs': rng.uniform(-1.0, 1.0, (self.window, ROBOT_OBS_DIM))}
        instruction = self._instructions[item % len(self._instructions)]
        return Window(frames, instruction, 'synthetic', 0, None)


def synthetic_calibration(model: AnyModel, metric: str = 'rms', *, windows: int = 16, window: int = 8,
                          seed: int = 0) -> CalibrationData:
    """Consistency values of ``model`` on random images: lets a budget be solved when no calibration file exists.

    Thresholds from these values meet the budget on random inputs only; on
    real camera data the realised average drifts. Use ``deer-ros calibrate``
    for a deployment.
    """
    return collect_calibration(model, instruction_encoder_for(model.config),
                               _SyntheticWindows(windows, window, seed),  # type: ignore[arg-type]
                               metric=metric, batch_size=windows, seed=seed, progress=False,
                               metadata={'source': 'synthetic (random images, no calibration file)'})


class PolicyRuntime:
    """Load a DeeR model, fit it to the cap in force, and step it under the thresholds in force.

    Every threshold decision (solving, explicit thresholds, tracking, refined
    entries) belongs to :attr:`thresholds`, a
    :class:`~deer_ros.budget.controller.ThresholdController`; this class owns
    the model and its cap.

    Args:
        source: a checkpoint directory (``config.json`` + ``model.safetensors``)
            of either model family (an imported DeeR-VLA checkpoint included),
            or a shipped config name / config file (seeded random init).
        device: torch device for the model.
        metric: exit-rule metric; must match the calibration file's.
        cost_kind: what the GFLOPs budgets count: ``llm`` (decoder only, the
            paper's unit) or ``total`` (vision + decoder + heads).
        budget: the budget in force from the start.
        track_average: steer the average budget's solver target from the
            realised costs so the request is met in closed loop
            (:mod:`deer_ros.budget.tracking`).
        seed: random-init seed for config sources and for synthetic calibration.
        warn: where start-up warnings go (the node passes its logger).
        latency_cache: where measured latency tables are kept (default: the user cache).
        cost_unit: the unit the operator gave the GFLOPs budgets in; ``budget`` is already in GFLOPs
            (:func:`~deer_ros.budget.caps.budget_in_gflops`), :meth:`describe` shows them in this unit.
        measure_latency: have the per-exit latency table from the start (cached, else measured) even
            without a millisecond budget; with ``peak_ms`` / ``avg_ms`` in ``budget`` it is had anyway.
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast for the model's forward parts (upstream evaluates
            under fp16/bf16 autocast on CUDA; fp16 needs CUDA). Reloads keep it.
    """

    def __init__(self, source: str | Path, *, device: str = 'cpu', metric: str = 'rms', cost_kind: CostKind = 'llm',
                 budget: Budget = Budget(), track_average: bool = False, seed: int = 0,
                 warn: Callable[[str], None] = _LOG.warning, latency_cache: LatencyCache | None = None,
                 measure_latency: bool = False, cost_unit: CostUnit = 'gflops',
                 precision: Precision = 'fp32') -> None:
        check_metric(metric)
        autocast_dtype(precision, torch.device(device))  # refuse a bad precision before loading anything
        self.precision = precision
        self.source = source
        self.checkpoint = Path(source) if Path(source).is_dir() else None
        self.device = device
        self._seed = seed
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._source_identity: str | None = None
        self.config = self._config()
        self.cost_table: CostTable = cost_table_for(self.config)
        calibration = self._calibration_file(metric)
        self.calibration_source = str(calibration_path(self.checkpoint)) if calibration is not None else 'synthetic'
        model = None
        if calibration is None:
            model = self._load(self.config.num_exits)
            warn(f'no calibration file for {self.source}: collecting consistency values on random images; '
                 'average-GFLOPs budgets will be approximate on real data (run `deer-ros calibrate`)')
            calibration = synthetic_calibration(model, metric, seed=seed)
        self.instruction_encoder = instruction_encoder_for(self.config)
        self._first_exit_checked = calibration.first_exit_checked  # timed steps include the reference head pass
        self.latency_cache = latency_cache or LatencyCache()
        self.latency_reused = False
        self.latency_watch: LatencyWatch | None = None
        self._drift: Drift | None = None
        latency = None
        if measure_latency or budget.peak_ms is not None or budget.avg_ms is not None:
            latency = self.latency_cache.load(self._latency_key())
            self.latency_reused = latency is not None
            if latency is None:  # every exit is timed on the full model, before the cap truncates it
                model = model or self._load(self.config.num_exits)
                latency = self._measure_latency(model)
            self.latency_watch = LatencyWatch(latency)
        refined = load_refined(refined_path(self.checkpoint)) if self.checkpoint is not None else []
        self.thresholds = ThresholdController(self.cost_table, calibration, cost_kind=cost_kind, refined=refined,
                                              budget=budget, track_average=track_average, latency=latency,
                                              cost_unit=cost_unit)
        solution = self.thresholds.solution
        if model is None:
            model = self._load(solution.cap + 1)
        else:
            model.truncate(solution.cap + 1)
        self._policy = EarlyExitPolicy(model, solution.criterion, self.cost_table.truncated(solution.cap + 1),
                                       self.instruction_encoder, precision)

    # ---- loading
    def _config(self) -> AnyConfig:
        """The model's config, of either family (a checkpoint's relative tokenizer path resolved against it)."""
        if self.checkpoint is not None:
            return checkpoint_config(self.checkpoint)
        return load_config(self.source)

    def _load(self, num_exits: int) -> AnyModel:
        """The model capped at ``num_exits``; config sources are built from ``seed`` so reloads match."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            return load_model(self.source, num_exits=num_exits, device=self.device)

    def _calibration_file(self, metric: str) -> CalibrationData | None:
        """The checkpoint's calibration file, checked against its weights and exits; ``None`` when there is none.

        A stale or mismatched file raises: using it would solve thresholds for
        another model, and ignoring it silently would hide that.
        """
        if self.checkpoint is None or not calibration_path(self.checkpoint).is_file():
            return None
        path = calibration_path(self.checkpoint)
        data = CalibrationData.load(path, checkpoint_sha256=checkpoint_sha256(self.checkpoint),
                                    exit_layers=self.config.exit_layers)
        if data.metric != metric:
            raise ValueError(f'{path} was collected with exit metric {data.metric!r}, '
                             f'not {metric!r}: set exit_metric to {data.metric!r} or re-run calibration')
        return data

    # ---- the latency table
    def _latency_key(self) -> LatencyKey:
        """The cache key now: the checkpoint is hashed once, the thread count is read each time (it may change)."""
        if self._source_identity is None:
            self._source_identity = source_identity(self.source, self.config)
        return latency_key(self._source_identity, self.device)

    def _measure_latency(self, model: AnyModel) -> LatencyTable:
        """Time every exit of the full ``model`` and cache the table."""
        table = measure_latency_table(model, self._latency_key(), instruction_encoder=self.instruction_encoder,
                                      cost_table=self.cost_table, first_exit_checked=self._first_exit_checked)
        self.latency_cache.save(table)
        return table

    def remeasure_latency(self) -> BudgetSolution:
        """Time every exit again now (steps wait meanwhile, a few seconds), cache it, and run the budget on it.

        Raises:
            BudgetError: the budget in force does not fit the new table; the old table and cap stay.
        """
        with self._apply_lock:
            capped = self.num_exits < self.config.num_exits
            model = self._load(self.config.num_exits) if capped else self._policy.model
            with self._lock:
                table = self._measure_latency(model)
        if self.latency_watch is None:
            self.latency_watch = LatencyWatch(table)
        else:
            self.latency_watch.reset(table)  # the machine's speed now, even if the budget no longer fits it
        solution = self.thresholds.use_latency(table)
        self.apply(self.thresholds.budget, solution)
        return solution

    def take_drift(self) -> Drift | None:
        """The drift the last steps showed, once; the node then calls :meth:`remeasure_latency` off the control loop."""
        with self._lock:
            drift, self._drift = self._drift, None
            return drift

    # ---- the cap
    @property
    def num_exits(self) -> int:
        """Exits the live model has (cap + 1)."""
        return self._policy.num_exits

    def apply(self, budget: Budget, solution: BudgetSolution) -> None:
        """Put ``solution`` (``thresholds.solve(budget)``) in force: truncate for a lower cap, reload for a higher.

        No second solve: what was validated is what runs. A reload is built
        outside the step lock and restarts the step history (the new model
        has no LSTM state).
        """
        with self._apply_lock:
            num_exits = solution.cap + 1
            replacement = None
            if num_exits > self.num_exits:
                replacement = EarlyExitPolicy(self._load(num_exits), solution.criterion,
                                              self.cost_table.truncated(num_exits), self.instruction_encoder,
                                              self.precision)
            with self._lock:
                if replacement is not None:
                    self._policy = replacement
                elif num_exits < self.num_exits:
                    self._policy.set_num_exits(num_exits, solution.criterion)
                self.thresholds.put_in_force(budget, solution)

    # ---- control
    def reset(self) -> None:
        """Forget the step history (new episode or instruction)."""
        with self._lock:
            self._policy.reset()

    def step(self, observation: Observation, instruction: str) -> tuple[Action, ExitInfo]:
        """One policy step; raises ``ValueError`` (bad input) or ``NonFiniteActionError`` like the policy."""
        with self._lock:
            solution = self.thresholds.solution
            self._policy.set_criterion(solution.criterion)
            action, info = self._policy.step(observation, instruction)
            self.thresholds.record(solution, llm_gflops=info.llm_gflops, total_gflops=info.total_gflops)
            if self.latency_watch is not None:
                self._drift = self.latency_watch.record(info.exit_index, info.latency_ms) or self._drift
            return action, info

    def realised_latency(self) -> RealisedLatency | None:
        """Step times since the latency table was put in force; ``None`` without a table or before a step."""
        return self.latency_watch.realised() if self.latency_watch is not None else None

    def describe(self) -> dict[str, str]:
        """Budget in force, cap, thresholds, tracking, calibration source and realised step ms, for diagnostics."""
        described = {**self.thresholds.describe(), 'calibration': self.calibration_source}
        realised = self.realised_latency()
        if realised is not None:
            budget = self.thresholds.budget
            described['realised step ms'] = (f'mean {realised.mean_ms:.3g}, p99 {realised.p99_ms:.3g}, '
                                             f'max {realised.max_ms:.3g} over {realised.steps} steps')
            if budget.peak_ms is not None or budget.avg_ms is not None:
                described['ms budget holds'] = str(realised.meets(peak_ms=budget.peak_ms, avg_ms=budget.avg_ms))
        return described
