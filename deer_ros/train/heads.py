"""Which exit feeds the shared head at each step during training, and the per-exit auxiliary heads.

The shared head must act on histories built from whatever exits dynamic
inference happened to take, so DeeR trains it on two kinds of mixed
histories: (s1) an independent random exit at every step, and (s2) one
random exit up to a random switch point and another after it. Auxiliary
heads, one per exit, shape each exit's features for acting; they are used
only in training and never shipped.
"""
from __future__ import annotations

import torch
from torch import nn

from deer_ros.model.configuration_deer import HeadConfig
from deer_ros.model.modeling_deer import ActionHead


def per_step_exits(batch: int, steps: int, num_exits: int, generator: torch.Generator) -> torch.Tensor:
    """(s1) ``(batch, steps)`` exit indices, uniform and independent per (window, step)."""
    return torch.randint(0, num_exits, (batch, steps), generator=generator)


def switching_exits(batch: int, steps: int, num_exits: int, generator: torch.Generator) -> torch.Tensor:
    """(s2) per window, exit ``a`` for steps before a switch point in [1, steps] and exit ``b`` from it on.

    The switch point is drawn per window (upstream shares one per batch); a
    switch at ``steps`` keeps one exit for the whole window.
    """
    first, second = torch.randint(0, num_exits, (2, batch, 1), generator=generator)
    switch = torch.randint(1, steps + 1, (batch, 1), generator=generator)
    return torch.where(torch.arange(steps) < switch, first, second)


def gather_exits(features: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """``features`` (B, T, num_exits, D) and ``exits`` (B, T) -> the chosen exit's feature per step (B, T, D)."""
    index = exits.to(features.device)[..., None, None].expand(-1, -1, 1, features.shape[-1])
    return features.gather(2, index).squeeze(2)


class AuxiliaryHeads(nn.ModuleList):
    """One :class:`ActionHead` per exit, each trained on its own exit's features over the window."""

    def __init__(self, config: HeadConfig, feature_dim: int, num_exits: int) -> None:
        super().__init__(ActionHead(config, feature_dim) for _ in range(num_exits))
