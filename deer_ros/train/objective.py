"""The DeeR training objective: the model, its auxiliary heads and the summed loss of one batch.

One ``nn.Module`` holds everything trained, so DistributedDataParallel wraps
a single object and sees every trainable parameter in ``forward``.

* ``joint`` stage: exit features with gradients; loss = one term per
  auxiliary head (each on its own exit) + the shared head on an (s1) and an
  (s2) mixed-exit history (+ ``state_weight`` x the state-probe loss and
  ``task_weight`` x the task-probe loss when those options are on).
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
from .data import TASK_NAMES
from .data import Batch
from .heads import AuxiliaryHeads, StateProbe, TaskProbe, gather_exits
from .losses import action_loss
from .parameters import GROUPS, set_trainable


class MultiExitObjective(nn.Module):
    """``forward(batch, s1_exits, s2_exits)`` -> named loss terms (their sum is what gets minimised)."""

    def __init__(self, model: DeerVLA, gripper_weight: float = 0.01, state_weight: float = 0.0,
                 task_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.aux_heads = AuxiliaryHeads(model.config.head, model.config.decoder.hidden_size, model.num_exits)
        resampler = model.config.resampler
        self.state_probe = StateProbe(len(model.CAMERAS) * resampler.num_latents, resampler.hidden_size) \
            if state_weight > 0 else None
        self.task_probe = TaskProbe(model.config.decoder.hidden_size, len(TASK_NAMES)) if task_weight > 0 else None
        self.gripper_weight = gripper_weight
        self.state_weight = state_weight
        self.task_weight = task_weight
        self.stage = STAGES[0]

    def training_heads(self) -> list[nn.Module]:
        """Modules that exist only for training (never part of the saved policy)."""
        return [self.aux_heads] + [probe for probe in (self.state_probe, self.task_probe) if probe is not None]

    def training_state(self) -> dict[str, torch.Tensor]:
        """Tensors of the training-only modules, for resume points."""
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith('model.')}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`training_state` (strict: a missing or extra tensor is an error)."""
        self.load_state_dict({**{f'model.{name}': t for name, t in self.model.state_dict().items()}, **state})

    def set_stage(self, stage: str, frozen: tuple[str, ...] = ()) -> None:
        """Mark what ``stage`` trains; ``frozen`` groups stay fixed in the joint stage."""
        if stage not in STAGES:
            raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
        self.stage = stage
        joint = stage == 'joint'
        set_trainable(self.model, [group for group in GROUPS if group not in frozen] if joint else ['head'])
        for module in self.training_heads():
            module.requires_grad_(joint)
        self.train()

    def train(self, mode: bool = True) -> 'MultiExitObjective':
        """In the heads stage the frozen backbone always runs in eval mode (a fixed feature extractor)."""
        super().train(mode)
        if mode and self.stage == 'heads':
            self.model.eval()
            for module in self.training_heads():
                module.eval()
            self.model.action_head.train()
        return self

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens ``(B*T, V, D)`` and exit features ``(B, T, num_exits, hidden)`` of every frame."""
        rgb_static, rgb_gripper = batch['rgb_static'], batch['rgb_gripper']
        windows, steps = rgb_static.shape[:2]
        proprio = batch['robot_obs'].flatten(0, 1) if self.model.config.use_proprio else None
        visual = self.model.encode_vision(rgb_static.flatten(0, 1), rgb_gripper.flatten(0, 1), proprio)
        features = self.model.exit_features(visual, batch['text_input'].repeat_interleave(steps, dim=0),
                                             batch['text_mask'].repeat_interleave(steps, dim=0))
        return visual, features.view(windows, steps, self.model.num_exits, -1)

    def _loss(self, head: nn.Module, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        return action_loss(head(features), batch['pose'], batch['gripper'], self.gripper_weight)

    def forward(self, batch: Batch, s1_exits: torch.Tensor, s2_exits: torch.Tensor) -> dict[str, torch.Tensor]:
        joint = self.stage == 'joint'
        with contextlib.nullcontext() if joint else torch.no_grad():
            visual, features = self.encode(batch)
        terms = {f'exit{k}': self._loss(head, features[:, :, k], batch)
                 for k, head in enumerate(self.aux_heads)} if joint else {}
        if joint and self.state_probe is not None:
            terms['state'] = self.state_weight * self.state_probe.loss(visual, batch['robot_obs'].flatten(0, 1))
        if joint and self.task_probe is not None:
            terms['task'] = self.task_weight * self.task_probe.loss(features, batch['task'])
        terms['s1'] = self._loss(self.model.action_head, gather_exits(features, s1_exits), batch)
        terms['s2'] = self._loss(self.model.action_head, gather_exits(features, s2_exits), batch)
        return terms

    @torch.no_grad()
    def validation_terms(self, batch: Batch, s1_exits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shared-head loss with every step at exit k (``exit{k}``) and on an (s1) mixed history (``mixed``)."""
        _, features = self.encode(batch)
        terms = {f'exit{k}': self._loss(self.model.action_head, features[:, :, k], batch)
                 for k in range(self.model.num_exits)}
        terms['mixed'] = self._loss(self.model.action_head, gather_exits(features, s1_exits), batch)
        return terms
