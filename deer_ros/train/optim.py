"""AdamW and the learning-rate schedule of each stage.

Joint stage: backbone at ``lr``, all heads at ``lr * head_lr_scale`` (upstream
trains heads slower while the features under them still move). Heads stage:
the shared head alone at ``head_stage_lr``. Both: linear warm-up, then
constant (upstream) or cosine decay to 0 at the end of the stage. Weight
decay applies to weight matrices only.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from deer_ros.model.modeling_deer_training import MultiExitObjective
from deer_ros.model.parameter_groups import BACKBONE_GROUPS, group_modules

from .config import TrainConfig

# weight matrices that get weight decay; norms, biases, gates, latents, positions and embeddings do not
_DECAYED = {nn.Linear: ('weight',), nn.Conv2d: ('weight',), nn.LSTMCell: ('weight_ih', 'weight_hh')}


def decay_split(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of ``modules`` split into (decayed weight matrices, the rest)."""
    decayed: dict[int, nn.Parameter] = {}
    everything: dict[int, nn.Parameter] = {}
    for root in modules:
        for module in root.modules():
            for kind, names in _DECAYED.items():
                if isinstance(module, kind):
                    decayed.update({id(getattr(module, n)): getattr(module, n) for n in names})
        everything.update({id(p): p for p in root.parameters()})
    trainable = {key: p for key, p in everything.items() if p.requires_grad}
    return ([p for key, p in trainable.items() if key in decayed],
            [p for key, p in trainable.items() if key not in decayed])


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
