"""Settings of one training run, saved as ``train_config.json`` beside its outputs.

Defaults follow upstream DeeR (AdamW, heads at 0.25x the backbone lr in the
joint stage, grad clip 1.0, random-shift pads 10/4, 12-frame windows), except
the learning rates, which suit the small models trained here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ('fp32', 'bf16', 'fp16')
SCHEDULES = ('constant', 'cosine')


@dataclass
class TrainConfig:
    """Everything a run needs; ``joint_steps``/``head_steps`` count optimizer steps per process."""

    data: list[str]                     # dataset roots; their training/ and validation/ splits are concatenated
    output: str
    model: str = 'tiny'                 # config name, config file or checkpoint directory to start from
    add_proprio: bool = False           # turn on use_proprio for a model that lacks it (new robot-state layers)
    sentence_encoder: bool = False      # switch the model's text input to the frozen MiniLM encoder (new projection)
    exit_interval: int = 0              # re-space the model's exits every N decoder layers; 0 = keep the model's
    window: int = 12
    stride: int = 1                     # frames between training-window starts
    batch_size: int = 8                 # windows per process and step
    joint_steps: int = 1000
    head_steps: int = 500
    lr: float = 1e-4                    # backbone lr in the joint stage
    head_lr_scale: float = 0.25         # heads' lr = lr * head_lr_scale in the joint stage
    head_stage_lr: float = 2.5e-5       # shared-head lr in the heads stage
    weight_decay: float = 0.1           # on Linear/Conv/LSTM weight matrices only
    warmup_steps: int = 100             # per stage, linear from 0
    schedule: str = 'constant'          # after warm-up: constant (upstream) or cosine to 0
    grad_clip: float = 1.0
    gripper_weight: float = 0.01
    state_weight: float = 0.0           # robot-state probe on the visual tokens (joint stage); 0 = off, as upstream
    task_weight: float = 0.0            # task-name probe on the exit features (joint stage); 0 = off, as upstream
    static_pad: int = 10
    gripper_pad: int = 4
    feature_cache: bool = True          # a frozen vision trunk trains on its cached features (built on first use)
    feature_shift: int = 0              # random shift of cached feature grids, in cells (1 cell = 16 trunk pixels)
    cache_workers: int = 2              # processes building missing feature caches, one split each
    freeze: list[str] | None = None     # parameter groups frozen in the joint stage; None = model default
    precision: str = 'bf16'             # autocast dtype on GPU; CPU always trains in fp32
    device: str = 'auto'
    num_workers: int = 2
    threads: int = 0                    # torch intra-op threads per process; 0 = torch's default
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    val_windows: int = 64
    save_every: int = 200
    snapshot_every: int = 0             # model-only copies every N global steps, to pick one in closed loop; 0 = off
    calibration_windows: int = 256      # 0 skips calibration
    calibration_metric: str = 'rms'
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):  # one root, as in run files written before several were allowed
            self.data = [str(self.data)]
        if not self.data:
            raise ValueError('data needs at least one dataset root')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.schedule not in SCHEDULES:
            raise ValueError(f'schedule must be one of {SCHEDULES}, got {self.schedule!r}')
        for name in ('window', 'batch_size', 'stride', 'log_every', 'eval_every', 'save_every'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('joint_steps', 'head_steps', 'warmup_steps', 'val_windows', 'calibration_windows',
                     'static_pad', 'gripper_pad', 'num_workers', 'exit_interval', 'threads', 'state_weight',
                     'task_weight', 'snapshot_every', 'feature_shift', 'cache_workers'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')

    @property
    def output_dir(self) -> Path:
        return Path(self.output)

    def stage_steps(self, stage: str) -> int:
        return {'joint': self.joint_steps, 'heads': self.head_steps}[stage]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> 'TrainConfig':
        return cls(**json.loads(path.read_text()))
