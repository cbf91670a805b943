"""The DeeR training objective: the model, its auxiliary heads and the summed loss of one batch.

One ``nn.Module`` holds everything trained, so DistributedDataParallel wraps
a single object and sees every trainable parameter in ``forward``.

* ``joint`` stage: exit features with gradients; loss = one term per
  auxiliary head (each on its own exit) + the shared head on an (s1) and an
  (s2) mixed-exit history.
* ``heads`` stage: the backbone is frozen and run under ``no_grad``; only the
  shared head trains, on (s1) + (s2). The auxiliary heads are left out: they
  exist to shape backbone features, which this stage no longer changes, and
  they are not part of the shipped policy.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from deer_ros.model.modeling_deer import DeerVLA

from .config import STAGES
from .data import Batch
from .heads import AuxiliaryHeads, gather_exits
from .losses import action_loss
from .parameters import GROUPS, set_trainable


class MultiExitObjective(nn.Module):
    """``forward(batch, s1_exits, s2_exits)`` -> named loss terms (their sum is what gets minimised)."""

    def __init__(self, model: DeerVLA, gripper_weight: float = 0.01) -> None:
        super().__init__()
        self.model = model
        self.aux_heads = AuxiliaryHeads(model.config.head, model.config.decoder.hidden_size, model.num_exits)
        self.gripper_weight = gripper_weight
        self.stage = STAGES[0]

    def set_stage(self, stage: str, frozen: tuple[str, ...] = ()) -> None:
        """Mark what ``stage`` trains; ``frozen`` groups stay fixed in the joint stage."""
        if stage not in STAGES:
            raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
        self.stage = stage
        joint = stage == 'joint'
        set_trainable(self.model, [group for group in GROUPS if group not in frozen] if joint else ['head'])
        self.aux_heads.requires_grad_(joint)
        self.train()

    def train(self, mode: bool = True) -> 'MultiExitObjective':
        """In the heads stage the frozen backbone always runs in eval mode (a fixed feature extractor)."""
        super().train(mode)
        if mode and self.stage == 'heads':
            self.model.eval()
            self.aux_heads.eval()
            self.model.action_head.train()
        return self

    def exit_features(self, batch: Batch) -> torch.Tensor:
        """``(B, T, num_exits, hidden)`` features of every frame of every window."""
        rgb_static, rgb_gripper = batch['rgb_static'], batch['rgb_gripper']
        windows, steps = rgb_static.shape[:2]
        proprio = batch['proprio'].flatten(0, 1) if 'proprio' in batch else None
        visual = self.model.encode_vision(rgb_static.flatten(0, 1), rgb_gripper.flatten(0, 1), proprio)
        features = self.model.exit_features(visual, batch['input_ids'].repeat_interleave(steps, dim=0),
                                             batch['text_mask'].repeat_interleave(steps, dim=0))
        return features.view(windows, steps, self.model.num_exits, -1)

    def _loss(self, head: nn.Module, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        return action_loss(head(features), batch['pose'], batch['gripper'], self.gripper_weight)

    def forward(self, batch: Batch, s1_exits: torch.Tensor, s2_exits: torch.Tensor) -> dict[str, torch.Tensor]:
        joint = self.stage == 'joint'
        with contextlib.nullcontext() if joint else torch.no_grad():
            features = self.exit_features(batch)
        terms = {f'exit{k}': self._loss(head, features[:, :, k], batch)
                 for k, head in enumerate(self.aux_heads)} if joint else {}
        terms['s1'] = self._loss(self.model.action_head, gather_exits(features, s1_exits), batch)
        terms['s2'] = self._loss(self.model.action_head, gather_exits(features, s2_exits), batch)
        return terms

    @torch.no_grad()
    def validation_terms(self, batch: Batch, s1_exits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shared-head loss with every step at exit k (``exit{k}``) and on an (s1) mixed history (``mixed``)."""
        features = self.exit_features(batch)
        terms = {f'exit{k}': self._loss(self.model.action_head, features[:, :, k], batch)
                 for k in range(self.model.num_exits)}
        terms['mixed'] = self._loss(self.model.action_head, gather_exits(features, s1_exits), batch)
        return terms
