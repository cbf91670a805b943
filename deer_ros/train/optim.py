"""AdamW and the learning-rate schedule of each stage.

Joint stage: backbone at ``lr``, all heads at ``lr * head_lr_scale`` (upstream
trains heads slower while the features under them still move). Heads stage:
the shared head alone at ``head_stage_lr``. Both: linear warm-up, then
constant (upstream) or cosine decay to 0 at the end of the stage.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig
from .objective import MultiExitObjective
from .parameters import BACKBONE_GROUPS, decay_split, group_modules


def build_optimizer(objective: MultiExitObjective, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters the current stage trains (frozen ones are left out)."""
    model = objective.model
    if objective.stage == 'joint':
        parts = [(list(group_modules(model, BACKBONE_GROUPS)), config.lr),
                 ([model.action_head, *objective.training_heads()], config.lr * config.head_lr_scale)]
    else:
        parts = [([model.action_head], config.head_stage_lr)]
    groups = []
    for modules, lr in parts:
        decayed, other = decay_split(modules)
        groups += [{'params': decayed, 'lr': lr, 'weight_decay': config.weight_decay},
                   {'params': other, 'lr': lr, 'weight_decay': 0.0}]
    groups = [group for group in groups if group['params']]
    if not groups:
        raise ValueError(f'nothing to train in the {objective.stage} stage: every parameter is frozen')
    return torch.optim.AdamW(groups)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr before optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == 'constant':
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, config.warmup_steps, total_steps, config.schedule))
