"""One optimizer update of a stage: mixed-exit sampling, (autocast) forward, backward, clipping, step.

Kept apart from the loop so the speed benchmark times exactly what training runs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from deer_ros.model.modeling_deer_training import Batch, MultiExitObjective, per_step_exits, switching_exits

from .config import TrainConfig
from .optim import build_optimizer, build_scheduler

_AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on GPUs; CPU autocast is slower than fp32 for these models."""
    return _AMP_DTYPES.get(precision) if device.type == 'cuda' else None


class StageStep:
    """Optimizer, schedule and loss scaler of the objective's current stage; calling it applies one update."""

    def __init__(self, objective: MultiExitObjective, config: TrainConfig, total_steps: int,
                 device: torch.device, generator: torch.Generator, distributed: bool = False) -> None:
        self.objective, self.generator, self.grad_clip = objective, generator, config.grad_clip
        self.amp_dtype = autocast_dtype(config.precision, device)
        self.optimizer = build_optimizer(objective, config)
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.parameters = [p for group in self.optimizer.param_groups for p in group['params']]
        # find_unused_parameters: a CLIP tower has a post-norm the patch tokens never pass through
        self.network = DistributedDataParallel(objective, find_unused_parameters=True) if distributed else objective

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Update on ``batch`` (already on the device); returns detached ``loss``, ``grad_norm`` and every term."""
        windows, steps = batch['pose'].shape[:2]
        num_exits = self.objective.model.num_exits
        s1 = per_step_exits(windows, steps, num_exits, self.generator)
        s2 = switching_exits(windows, steps, num_exits, self.generator)
        with torch.autocast(batch['pose'].device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            terms = self.network(batch, s1, s2)
        loss = torch.stack(list(terms.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {'loss': loss.detach(), 'grad_norm': grad_norm.detach(), **{k: v.detach() for k, v in terms.items()}}

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
                'scaler': self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
