"""Which exit feeds the shared head at each step during training, and the per-exit auxiliary heads.

The shared head must act on histories built from whatever exits dynamic
inference happened to take, so DeeR trains it on two kinds of mixed
histories: (s1) an independent random exit at every step, and (s2) one
random exit up to a random switch point and another after it. Auxiliary
heads, one per exit, shape each exit's features for acting, and the optional
state probe shapes the visual tokens and the optional task probe the
instruction path; they are used only in training and never shipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deer_ros.calvin_layout import ROBOT_OBS_DIM
from deer_ros.model.configuration_deer import HeadConfig
from deer_ros.model.modeling_deer import ActionHead

from .data import UNKNOWN_TASK


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
