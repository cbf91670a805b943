"""The policy as a node runs it, without ROS: model, cost table, calibration, live budgets, steps.

A plain class so the node stays a thin adapter and everything that decides
what the robot does is tested without DDS. Budgets are solved against the
*full* model (its cost table and calibration as loaded), so lowering and then
raising a cap round-trips: lowering truncates the live model, raising reloads
the layers from the source. A config name (no checkpoint) builds a model with
seeded random init, so a reload rebuilds the same weights.

Thread safety: :meth:`step`, :meth:`reset` and the swap inside :meth:`apply`
share one lock, so a budget change lands between two steps, never inside
one. A reload is built outside that lock; the control loop keeps running on
the old model until the new one is ready.

With ``track_average`` the average budget is met in closed loop, not only on
the calibration data: :class:`~deer_ros.budget.tracking.AverageBudgetTracker`
corrects the target the thresholds are solved for from the realised step
costs (re-solving takes milliseconds and happens every 25 steps).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from deer_ros.benchmark.dataset import Window
from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.budget.calibration import CalibrationData, calibration_path, checkpoint_sha256
from deer_ros.budget.caps import Budget, BudgetSolution, CostKind, exit_costs, solve_budget
from deer_ros.budget.collect import collect_calibration
from deer_ros.budget.exit_criterion import ExitCriterion, check_metric
from deer_ros.budget.refined import find_refined, load_refined, refined_path
from deer_ros.budget.solver import BudgetError, feasible_range
from deer_ros.budget.tracking import AverageBudgetTracker
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE
from deer_ros.model import DeerConfig, DeerVLA, load_config, load_model
from deer_ros.model.cost import CostTable
from deer_ros.model.flops import cost_table_for
from deer_ros.model.modeling_deer import CONFIG_NAME
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.policy.early_exit import EarlyExitPolicy
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


def synthetic_calibration(model: DeerVLA, metric: str = 'rms', *, windows: int = 16, window: int = 8,
                          seed: int = 0) -> CalibrationData:
    """Consistency values of ``model`` on random images: lets a budget be solved when no calibration file exists.

    Thresholds from these values meet the budget on random inputs only; on
    real camera data the realised average drifts. Use ``deer-ros calibrate``
    for a deployment.
    """
    return collect_calibration(model, InstructionEncoder(model.config.decoder),
                               _SyntheticWindows(windows, window, seed),  # type: ignore[arg-type]
                               metric=metric, batch_size=windows, seed=seed, progress=False,
                               metadata={'source': 'synthetic (random images, no calibration file)'})


class PolicyRuntime:
    """Load a DeeR model, keep a budget in force, and step it.

    Args:
        source: a checkpoint directory (``config.json`` + ``model.safetensors``)
            or a shipped config name / config file (seeded random init).
        device: torch device for the model.
        metric: exit-rule metric; must match the calibration file's.
        cost_kind: what the GFLOPs budgets count: ``llm`` (decoder only, the
            paper's unit) or ``total`` (vision + decoder + heads).
        budget: the budget in force from the start.
        track_average: steer the average budget's solver target from the
            realised costs so the request is met in closed loop (see module doc).
        seed: random-init seed for config sources and for synthetic calibration.
        warn: where start-up warnings go (the node passes its logger).
    """

    def __init__(self, source: str | Path, *, device: str = 'cpu', metric: str = 'rms', cost_kind: CostKind = 'llm',
                 budget: Budget = Budget(), track_average: bool = False, seed: int = 0,
                 warn: Callable[[str], None] = _LOG.warning) -> None:
        check_metric(metric)
        self.source = source
        self.checkpoint = Path(source) if Path(source).is_dir() else None
        self.device = device
        self.cost_kind: CostKind = cost_kind
        self._seed = seed
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self.config = self._config()
        self.cost_table: CostTable = cost_table_for(self.config)
        self.refined = load_refined(refined_path(self.checkpoint)) if self.checkpoint is not None else []
        self.calibration = self._calibration_file(metric)
        self.calibration_source = str(calibration_path(self.checkpoint)) if self.calibration else 'synthetic'
        if self.calibration is None:
            model = self._load(self.config.num_exits)
            warn(f'no calibration file for {self.source}: collecting consistency values on random images; '
                 'average-GFLOPs budgets will be approximate on real data (run `deer-ros calibrate`)')
            self.calibration = synthetic_calibration(model, metric, seed=seed)
            solution = self.solve(budget)
            model.truncate(solution.cap + 1)
        else:
            solution = self.solve(budget)
            model = self._load(solution.cap + 1)
        self.instruction_encoder = InstructionEncoder(self.config.decoder)
        self._policy = EarlyExitPolicy(model, solution.criterion, self.cost_table.truncated(solution.cap + 1),
                                       self.instruction_encoder)
        self.budget = budget
        self.solution = solution
        self.track_average = track_average
        self._tracker = self._new_tracker()

    # ---- loading
    def _config(self) -> DeerConfig:
        if self.checkpoint is not None:
            return DeerConfig.from_file(self.checkpoint / CONFIG_NAME)
        return load_config(self.source)

    def _load(self, num_exits: int) -> DeerVLA:
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

    # ---- budgets
    @property
    def num_exits(self) -> int:
        """Exits the live model has (cap + 1)."""
        return self._policy.num_exits

    def solve(self, budget: Budget) -> BudgetSolution:
        """Cap and thresholds for ``budget`` on the full model; no side effects.

        Thresholds refined by ``deer-ros refine`` for exactly this budget replace
        the offline ones.

        Raises:
            BudgetError: an infeasible budget; the message gives the feasible range.
        """
        solution = solve_budget(budget, self.cost_table, self.calibration, kind=self.cost_kind)
        refined = find_refined(self.refined, budget.avg_gflops, solution.cap, self.cost_kind)
        if refined is None:
            return solution
        criterion = ExitCriterion(np.asarray(refined.thresholds), self.calibration.metric)
        return dataclasses.replace(solution, criterion=criterion)

    def use_thresholds(self, thresholds: np.ndarray) -> None:
        """Run the live cap with explicit thresholds (threshold search); the next budget change replaces them.

        Tracking pauses until then: it would move the thresholds under test.
        """
        with self._lock:
            self._tracker = None
            criterion = ExitCriterion(np.asarray(thresholds, dtype=np.float64), self.calibration.metric)
            self._policy.set_criterion(criterion)
            self.solution = dataclasses.replace(self.solution, criterion=criterion)

    def apply(self, budget: Budget) -> BudgetSolution:
        """Put ``budget`` in force: truncate for a lower cap, reload for a higher one, else swap thresholds.

        A reload restarts the step history (the new model has no LSTM state).
        """
        with self._apply_lock:
            solution = self.solve(budget)
            num_exits = solution.cap + 1
            replacement = None
            if num_exits > self.num_exits:
                model = self._load(num_exits)
                replacement = EarlyExitPolicy(model, solution.criterion, self.cost_table.truncated(num_exits),
                                              self.instruction_encoder)
            with self._lock:
                if replacement is not None:
                    self._policy = replacement
                elif num_exits < self.num_exits:
                    self._policy.set_num_exits(num_exits, solution.criterion)
                else:
                    self._policy.set_criterion(solution.criterion)
                self.budget, self.solution = budget, solution
                self._tracker = self._new_tracker()
            return solution

    def set_average_tracking(self, enabled: bool) -> None:
        """Turn closed-loop tracking of the average budget on or off (off: the offline solve is in force)."""
        with self._apply_lock, self._lock:
            self.track_average = enabled
            if not enabled and self._tracker is not None:
                self.solution = self.solve(self.budget)
                self._policy.set_criterion(self.solution.criterion)
            self._tracker = self._new_tracker()

    def _new_tracker(self) -> AverageBudgetTracker | None:
        """A tracker for the budget in force; none when off, without an average budget, or for refined thresholds.

        Thresholds from ``deer-ros refine`` were tuned in closed loop for exactly this budget: they stay as found.
        """
        if not self.track_average or self.budget.avg_gflops is None:
            return None
        if find_refined(self.refined, self.budget.avg_gflops, self.solution.cap, self.cost_kind) is not None:
            return None
        return AverageBudgetTracker(self.budget.avg_gflops, self.feasible_average())

    def _track(self, info: ExitInfo) -> None:
        """Feed one step's cost to the tracker; re-solve for its new target when it moved (lock held)."""
        assert self._tracker is not None
        target = self._tracker.record(info.llm_gflops if self.cost_kind == 'llm' else info.total_gflops)
        if target is None:
            return
        try:
            solution = solve_budget(dataclasses.replace(self.budget, avg_gflops=target), self.cost_table,
                                    self.calibration, kind=self.cost_kind)
        except BudgetError:  # the target is clamped to the feasible range; keep the thresholds if an edge slips out
            return
        self._policy.set_criterion(solution.criterion)
        self.solution = solution

    def feasible_average(self) -> tuple[float, float]:
        """Average GFLOPs the exit rule can realise under the live peak/memory cap."""
        return feasible_range(exit_costs(self.cost_table, self.cost_kind)[:self.solution.cap + 1])

    # ---- control
    def reset(self) -> None:
        """Forget the step history (new episode or instruction)."""
        with self._lock:
            self._policy.reset()

    def step(self, observation: Observation, instruction: str) -> tuple[Action, ExitInfo]:
        """One policy step; raises ``ValueError`` (bad input) or ``NonFiniteActionError`` like the policy."""
        with self._lock:
            action, info = self._policy.step(observation, instruction)
            if self._tracker is not None:
                self._track(info)
            return action, info

    def describe(self) -> dict[str, str]:
        """Budget in force, cap and thresholds as strings, for diagnostics."""
        solution = self.solution
        described = {key: ('off' if value is None else f'{value:g}')
                     for key, value in dataclasses.asdict(self.budget).items()}
        described.update({
            'cost_kind': self.cost_kind,
            'exits allowed': f'{solution.cap + 1} of {self.cost_table.num_exits}',
            'thresholds': ', '.join(f'{t:.4g}' for t in solution.criterion.thresholds),
            'calibration': self.calibration_source,
        })
        if solution.average is not None:
            described['calibration avg GFLOPs'] = f'{solution.average.realised_cost:.4g}'
        tracker = self._tracker
        described['avg tracking'] = 'off' if tracker is None else (
            f'solver target {tracker.target:.4g}, realised {tracker.realised:.4g} over {tracker.steps} steps')
        return described
