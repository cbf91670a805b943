"""DeeR training: the model, its training-only heads and the summed loss of one batch.

Kept next to the model it trains, as ``transformers`` keeps
``...ForCausalLM(labels=...)``: the loss is part of the model's definition,
while ``deer_ros.train`` holds only the loop, data, optimiser, schedule and
trainer-state checkpoints. One ``nn.Module`` holds everything trained, so
DistributedDataParallel wraps a single object and sees every trainable
parameter in ``forward``.

Which exit feeds the shared head at each step: the shared head must act on
histories built from whatever exits dynamic inference happened to take, so
DeeR trains it on two kinds of mixed histories: (s1) an independent random
exit at every step, and (s2) one random exit up to a random switch point and
another after it.

* ``joint`` stage: exit features with gradients; loss = one term per
  auxiliary head (each on its own exit) + the shared head on an (s1) and an
  (s2) mixed-exit history (+ ``state_weight`` x the state-probe loss and
  ``task_weight`` x the task-probe loss when those options are on).
* ``heads`` stage: the backbone is frozen and run under ``no_grad``; only the
  shared head trains, on (s1) + (s2). The auxiliary heads are left out: they
  exist to shape backbone features, which this stage no longer changes, and
  they are not part of the shipped policy.

Auxiliary heads, one per exit, shape each exit's features for acting; the
optional state probe shapes the visual tokens and the optional task probe the
instruction path. They are used only in training and never shipped.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from deer_ros.calvin_layout import ROBOT_OBS_DIM

from .configuration_deer import HeadConfig
from .modeling_deer import ActionHead, DeerVLA, HeadOutput
from .parameter_groups import GROUPS, set_trainable

Batch = dict[str, torch.Tensor]
STAGES = ('joint', 'heads')
UNKNOWN_TASK = -100  # a window of no known task: cross-entropy's ignore index, skipped by the task probe


def action_loss(output: HeadOutput, pose: torch.Tensor, gripper: torch.Tensor,
                gripper_weight: float = 0.01) -> torch.Tensor:
    """DeeR's per-head loss: Huber(pose) + ``gripper_weight`` * BCE-with-logits(gripper), over every supervised frame.

    ``pose`` (B, T, 6) in [-1, 1]; ``gripper`` (B, T) in {0, 1} (CALVIN's -1/+1 mapped by (g+1)/2).
    Computed in fp32 so mixed-precision runs sum the same numbers.
    """
    pose_term = F.huber_loss(output.pose.float(), pose.float())
    gripper_term = F.binary_cross_entropy_with_logits(output.gripper_logit.float(), gripper.float())
    return pose_term + gripper_weight * gripper_term


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


class StateProbe(nn.Module):
    """Linear read-out of the standardised robot state (CALVIN ``robot_obs``) from one frame's camera tokens.

    An optional training-only auxiliary (not in upstream DeeR). A randomly
    initialised vision stack behind zero-initialised cross-attention gates
    gets almost no gradient from the action loss, and the model settles on
    the instruction's average action; regressing the arm state from the
    camera tokens gives the vision stack a direct signal from the first step.
    """

    def __init__(self, camera_tokens: int, token_dim: int, state_dim: int = ROBOT_OBS_DIM) -> None:
        super().__init__()
        self.camera_tokens = camera_tokens
        self.linear = nn.Linear(camera_tokens * token_dim, state_dim)
        self.register_buffer('mean', torch.zeros(state_dim))
        self.register_buffer('std', torch.ones(state_dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)

    def loss(self, visual: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """MSE between the prediction from ``visual`` (N, V, D) and the standardised ``state`` (N, state_dim)."""
        prediction = self.linear(visual[:, :self.camera_tokens].flatten(1).float())
        return F.mse_loss(prediction, (state.float() - self.mean) / self.std)


class TaskProbe(nn.Module):
    """Linear read-out of the task (one of CALVIN's 34) from every exit feature of every frame.

    An optional training-only auxiliary (not in upstream DeeR), the language
    counterpart of :class:`StateProbe`: a randomly initialised byte-level
    decoder must learn from the action loss alone that ~170 paraphrases name
    34 tasks, which a CPU budget does not give it; a cross-entropy on the
    task name gives the instruction path a direct signal. Windows of unknown
    tasks (``UNKNOWN_TASK``) are ignored.
    """

    def __init__(self, feature_dim: int, num_tasks: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_tasks)

    def loss(self, features: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``features`` (B, T, num_exits, D) against ``task`` (B,), averaged over frames and exits."""
        logits = self.linear(features.float())
        target = task.to(logits.device)[:, None, None].expand(logits.shape[:-1])
        return F.cross_entropy(logits.flatten(0, 2), target.flatten(), ignore_index=UNKNOWN_TASK)


class MultiExitObjective(nn.Module):
    """``forward(batch, s1_exits, s2_exits)`` -> named loss terms (their sum is what gets minimised).

    Args:
        model: the policy being trained (``model.`` prefixes its tensors in this module's state dict).
        gripper_weight: weight of the gripper BCE in every head's loss.
        state_weight: weight of the state probe in the joint stage; 0 = no probe.
        task_weight: weight of the task probe in the joint stage; 0 = no probe.
        num_tasks: the task probe's classes (the data's task ids, ``deer_ros.train.data.TASK_NAMES``);
            needed when ``task_weight`` > 0. The model knows no task list: it reads instructions.
    """

    def __init__(self, model: DeerVLA, gripper_weight: float = 0.01, state_weight: float = 0.0,
                 task_weight: float = 0.0, num_tasks: int = 0) -> None:
        super().__init__()
        if task_weight > 0 and num_tasks < 1:
            raise ValueError('a task probe (task_weight > 0) needs num_tasks >= 1')
        self.model = model
        self.aux_heads = AuxiliaryHeads(model.config.head, model.config.decoder.hidden_size, model.num_exits)
        resampler = model.config.resampler
        self.state_probe = StateProbe(len(model.CAMERAS) * resampler.num_latents, resampler.hidden_size) \
            if state_weight > 0 else None
        self.task_probe = TaskProbe(model.config.decoder.hidden_size, num_tasks) if task_weight > 0 else None
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
        """Visual tokens ``(B*T, V, D)`` and exit features ``(B, T, num_exits, hidden)`` of every frame.

        A batch holds camera images (``rgb_static``, ``rgb_gripper``) or, for a frozen vision trunk, its cached
        features (``features_static``, ``features_gripper``); the rest of the model is the same either way.
        """
        windows, steps = batch['pose'].shape[:2]
        proprio = batch['robot_obs'].flatten(0, 1) if self.model.config.use_proprio else None
        if 'features_static' in batch:
            visual = self.model.encode_vision_features(batch['features_static'].flatten(0, 1),
                                                       batch['features_gripper'].flatten(0, 1), proprio)
        else:
            visual = self.model.encode_vision(batch['rgb_static'].flatten(0, 1), batch['rgb_gripper'].flatten(0, 1),
                                              proprio)
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
