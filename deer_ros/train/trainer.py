"""The training loop: joint stage, heads stage, then the shipped policy and its calibration.

Outputs under ``config.output``::

    policy/            config.json + model.safetensors + calibration.npz (what ``load_model`` and the nodes use)
    last/              resume point (also loadable as a policy; adds aux heads and optimizer state)
    snapshots/step_N/  with ``snapshot_every``: the model after global step N (config + weights, no calibration),
                       to choose a checkpoint by closed-loop success (``deer-ros evaluate``), which the
                       per-frame validation loss does not predict at small data sizes (docs/training.md)
    metrics.csv        step,stage,name,value (train/* every log_every steps, val/* every eval_every)
    train_config.json  the settings of the run

Random streams (dropout, exit choices, image shifts) are re-seeded from
(seed, rank, global step) at every stage start and save point, so a resumed run draws exactly
what an uninterrupted one would, on every rank, without saving RNG states.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from deer_ros.budget.calibration import CalibrationData, calibration_path, checkpoint_sha256
from deer_ros.budget.collect import collect_calibration
from deer_ros.model import load_model
from deer_ros.model.builder import with_exit_interval, with_proprioception, with_sentence_encoder
from deer_ros.model.modeling_deer_training import STAGES, Batch, MultiExitObjective, per_step_exits
from deer_ros.model.parameter_groups import check_groups, default_frozen
from deer_ros.model.tokenization import InstructionEncoder

from .augment import augment_batch
from .checkpoint import ResumePoint, has_resume_point, load_resume_point, save_resume_point
from .config import TrainConfig
from .data import TASK_NAMES, EpochBatchSampler, WindowCollator, open_split, split_windows, state_statistics
from .distributed import DistContext, init_distributed, shutdown_distributed
from .feature_cache import CachedWindows, build_caches
from .metrics import MetricsLog
from .step import StageStep, autocast_dtype

POLICY_DIR = 'policy'
LAST_DIR = 'last'
SNAPSHOT_DIR = 'snapshots'
CONFIG_FILE = 'train_config.json'


@dataclass
class TrainResult:
    policy_dir: Path
    calibration_file: Path | None
    steps: int
    seconds: float
    rank: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or, with ``resume``, continue) the two-stage training described by ``config``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    context, device = init_distributed(config.device)
    try:
        return Trainer(config, context, device, resume).run()
    finally:
        shutdown_distributed(context)


class Trainer:
    """One process's share of a run; the main process also logs, saves and calibrates."""

    def __init__(self, config: TrainConfig, context: DistContext, device: torch.device, resume: bool) -> None:
        self.config, self.context, self.device = config, context, device
        self.output = config.output_dir
        self.output.mkdir(parents=True, exist_ok=True)
        self.point: ResumePoint | None = None
        if resume and has_resume_point(self.output / LAST_DIR):
            model, training_heads, self.point = load_resume_point(self.output / LAST_DIR, device)
            self.objective = MultiExitObjective(model, config.gripper_weight, config.state_weight,
                                                config.task_weight, len(TASK_NAMES)).to(device)
            self.objective.load_training_state(training_heads)
        else:
            torch.manual_seed(config.seed)  # the same initial weights on every rank
            model = load_model(config.model, device=device)
            if config.add_proprio:
                model = with_proprioception(model)
            if config.sentence_encoder:
                model = with_sentence_encoder(model)
            if config.exit_interval:
                model = with_exit_interval(model, config.exit_interval)
            self.objective = MultiExitObjective(model, config.gripper_weight, config.state_weight,
                                                config.task_weight, len(TASK_NAMES)).to(device)
        # The head is trained on `window`-step histories: the policy replays that many at run time.
        model.config.head.history_window = config.window
        self.robot_obs = model.config.use_proprio or config.state_weight > 0
        self.frozen = check_groups(config.freeze) if config.freeze is not None else default_frozen(model.config)
        self.amp_dtype = autocast_dtype(config.precision, device)
        self.generator = torch.Generator()
        self.instruction_encoder = InstructionEncoder(model.config.decoder)
        # A frozen vision trunk trains on its cached features: computed once per frame, not at every step.
        self.cached = model.frozen_vision and config.feature_cache
        if self.cached:
            self._build_feature_caches()
        self.train_set = self._open_split('training', config.stride)
        if self.train_set is None:
            raise FileNotFoundError(f'no training/ split under {", ".join(config.data)}')
        if self.objective.state_probe is not None and self.point is None:
            mean, std = state_statistics(self.train_set)
            self.objective.state_probe.set_statistics(torch.from_numpy(mean), torch.from_numpy(std))
        self.val_set = self._validation_windows()
        self.metrics = None
        self.val_metrics: dict[str, float] = {}
        if context.is_main:
            config.save(self.output / CONFIG_FILE)
            self.metrics = MetricsLog(self.output, self.point.global_step if self.point else None)
            self._say(f'{len(self.train_set)} training windows, {len(self.val_set or [])} validation windows; '
                      f'device {device}, {context.world} process(es), precision '
                      f'{config.precision if self.amp_dtype else "fp32"}; frozen in the joint stage: '
                      f'{list(self.frozen) or "nothing"}')

    # ---------------------------------------------------------------- helpers
    def _say(self, message: str) -> None:
        if self.context.is_main and self.config.progress:
            tqdm.write(message)

    def _validation_windows(self) -> Subset | None:
        """A fixed, seeded subset of non-overlapping validation windows (None when the split has none)."""
        if self.config.val_windows == 0:
            return None
        windows = self._open_split('validation', self.config.window)
        if windows is None or len(windows) == 0:
            return None
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(self.config.seed))
        return Subset(windows, order[:self.config.val_windows].tolist())

    def _split_dirs(self, split: str) -> list[Path]:
        return [Path(root) / split for root in self.config.data if (Path(root) / split).is_dir()]

    def _build_feature_caches(self) -> None:
        """The main process builds every missing split cache (in parallel processes); the others wait for it."""
        if self.context.is_main:
            splits = self._split_dirs('training') + self._split_dirs('validation')
            self._say(f'feature caches of {len(splits)} splits (built once, reused by later runs)')
            build_caches(splits, self.objective.model.config.vision, self.config.cache_workers, self.config.progress)
        self.context.barrier()

    def _open_split(self, split: str, stride: int) -> Dataset | None:
        """Training samples of ``split`` over all roots: cached features or decoded images (None when absent)."""
        if not self.cached:
            return open_split(self.config.data, split, self.config.window, stride, self.robot_obs)
        dirs = self._split_dirs(split)
        return CachedWindows(dirs, self.objective.model.config.vision, self.config.window, stride) if dirs else None

    def _seed_streams(self, global_step: int) -> None:
        seed = ((self.config.seed * 1_000_003 + self.context.rank) * 1_000_033 + global_step) % 2**62
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _to_device(self, batch: Batch) -> Batch:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def _loader(self, dataset: Any, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, collate_fn=WindowCollator(self.instruction_encoder),
                          num_workers=self.config.num_workers,
                          pin_memory=self.device.type == 'cuda', **kwargs)

    # ---------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        started = time.perf_counter()
        global_step = self.point.global_step if self.point else 0
        for stage in STAGES:
            resumed = self.point is not None and self.point.stage == stage
            if self.point is not None and STAGES.index(self.point.stage) > STAGES.index(stage):
                continue
            first = self.point.step if resumed else 0
            if first < self.config.stage_steps(stage):
                global_step = self._run_stage(stage, first, global_step, self.point if resumed else None)
        calibration = self._export()
        if self.metrics is not None:
            self.metrics.close()
        return TrainResult(self.output / POLICY_DIR, calibration, global_step, time.perf_counter() - started,
                           self.context.rank, self.val_metrics)

    def _run_stage(self, stage: str, first: int, global_step: int, point: ResumePoint | None) -> int:
        config = self.config
        total = config.stage_steps(stage)
        self.objective.set_stage(stage, self.frozen)
        update = StageStep(self.objective, config, total, self.device, self.generator, self.context.enabled)
        if point is not None and first > 0:
            update.load_state_dict(point.state)
        sampler = EpochBatchSampler(len(self.train_set), config.batch_size, config.seed * 10 + STAGES.index(stage),
                                    self.context.rank, self.context.world, start_batch=first)
        batches = iter(self._loader(self.train_set, batch_sampler=sampler))
        self._seed_streams(global_step)  # after the loader drew its worker seeds, as on resume
        running: dict[str, torch.Tensor] = {}
        count, tick, paused = 0, time.perf_counter(), 0.0  # paused: validation and saving, kept out of the rate
        progress = tqdm(range(first, total), desc=stage, unit='step', initial=first, total=total,
                        disable=not (self.context.is_main and config.progress))
        for step in progress:
            batch = self._to_device(next(batches))
            batch = augment_batch(batch, config.static_pad, config.gripper_pad, self.generator, config.feature_shift)
            for name, value in update(batch).items():
                running[name] = running.get(name, 0) + value  # no device sync until logged
            global_step += 1
            count += 1
            done = step + 1
            if done % config.log_every == 0 or done == total:
                rate = count * config.batch_size * self.context.world / (time.perf_counter() - tick - paused)
                values = {f'train/{name}': float(value) / count for name, value in running.items()}
                values.update({'train/lr': update.lr, 'train/windows_per_s': rate})
                if self.metrics is not None:
                    self.metrics.log(global_step, stage, values)
                progress.set_postfix(loss=f"{values['train/loss']:.4f}", win_s=f'{rate:.1f}')
                running.clear()
                count, tick, paused = 0, time.perf_counter(), 0.0
            pause_start = time.perf_counter()
            if done % config.eval_every == 0 or done == total:
                self.val_metrics = self._validate(global_step, stage)
            if done % config.save_every == 0 or done == total:
                self._save(ResumePoint(stage, done, global_step, update.state_dict()))
            if config.snapshot_every and global_step % config.snapshot_every == 0 and self.context.is_main:
                self.objective.model.save_pretrained(self.output / SNAPSHOT_DIR / f'step_{global_step:06d}')
            paused += time.perf_counter() - pause_start
        progress.close()
        return global_step

    def _save(self, point: ResumePoint) -> None:
        if self.context.is_main:
            save_resume_point(self.output / LAST_DIR, self.objective, point)
        self.context.barrier()
        self._seed_streams(point.global_step)

    @torch.no_grad()
    def _validate(self, global_step: int, stage: str) -> dict[str, float]:
        """Shared-head losses per exit and on mixed histories, on the fixed validation subset (main process)."""
        if not self.context.is_main or self.val_set is None:
            return {}
        objective = self.objective
        objective.eval()
        generator = torch.Generator().manual_seed(self.config.seed)  # the same mixed histories every time
        sums: dict[str, float] = defaultdict(float)
        for raw in self._loader(self.val_set, batch_size=self.config.batch_size):
            batch = self._to_device(raw)
            windows, steps = batch['pose'].shape[:2]
            with self._autocast():
                terms = objective.validation_terms(
                    batch, per_step_exits(windows, steps, objective.model.num_exits, generator))
            for name, value in terms.items():
                sums[name] += float(value) * windows
        objective.train()
        values = {f'val/{name}': total / len(self.val_set) for name, total in sums.items()}
        assert self.metrics is not None
        self.metrics.log(global_step, stage, values)
        self._say(f'step {global_step} validation: ' + ' '.join(
            f'{name[4:]}={value:.4f}' for name, value in values.items()))
        return values

    def _export(self) -> Path | None:
        """Save the policy (model only, no aux heads) and its calibration file; main process only."""
        path = None
        if self.context.is_main:
            policy = self.output / POLICY_DIR
            model = self.objective.model.eval()
            model.save_pretrained(policy)
            data = self._calibrate(policy)
            if data is not None:
                path = data.save(calibration_path(policy))
                self._say(f'wrote {path}: {data.num_samples} samples')
            self._say(f'policy saved to {policy}')
        self.context.barrier()
        return path

    def _calibrate(self, policy: Path) -> CalibrationData | None:
        """Consistency values on held-out validation windows with mixed-exit histories (budget file format)."""
        config, model = self.config, self.objective.model
        if config.calibration_windows == 0:
            return None
        keys = ('rgb_static', 'rgb_gripper') + (('robot_obs',) if model.config.use_proprio else ())
        windows = split_windows(config.data, 'validation', config.window, config.window, keys)
        if windows is None or len(windows) == 0:
            self._say(f'no {config.window}-frame validation windows under {", ".join(config.data)}: '
                      'calibration skipped')
            return None
        return collect_calibration(model, self.instruction_encoder, windows, metric=config.calibration_metric,
                                   batch_size=config.batch_size, max_windows=config.calibration_windows,
                                   seed=config.seed, progress=config.progress,
                                   metadata={'checkpoint_sha256': checkpoint_sha256(policy), 'data': config.data})
