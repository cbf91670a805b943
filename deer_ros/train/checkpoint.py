"""Resume points: the model, the auxiliary heads and the optimizer/scheduler/RNG state of a run.

A resume point is a directory (``OUTPUT/last``): ``config.json`` +
``model.safetensors`` written by ``DeerVLA.save_pretrained`` (so it also
loads as a policy), ``training_heads.safetensors`` (aux heads and state probe,
kept out of the model file) and ``trainer_state.pt``. It is written to a temporary
directory and swapped in, so a crash while saving keeps the previous one.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deer_ros.model.modeling_deer import DeerVLA
from deer_ros.model.modeling_deer_training import MultiExitObjective

TRAINING_HEADS_FILE = 'training_heads.safetensors'
STATE_FILE = 'trainer_state.pt'


@dataclass
class ResumePoint:
    """Where a run stopped: ``step`` optimizer steps done in ``stage``; ``state`` holds the rest."""

    stage: str
    step: int
    global_step: int
    state: dict[str, Any]


def save_resume_point(directory: Path, objective: MultiExitObjective, point: ResumePoint) -> None:
    """Write ``directory`` atomically (build beside it, then swap)."""
    staging = directory.with_name(directory.name + '.tmp')
    shutil.rmtree(staging, ignore_errors=True)
    objective.model.save_pretrained(staging)
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in objective.training_state().items()},
              str(staging / TRAINING_HEADS_FILE))
    torch.save({'stage': point.stage, 'step': point.step, 'global_step': point.global_step, **point.state},
               staging / STATE_FILE)
    retired = directory.with_name(directory.name + '.old')
    if directory.exists():
        directory.replace(retired)
    staging.replace(directory)
    shutil.rmtree(retired, ignore_errors=True)


def load_resume_point(directory: Path, device: torch.device) -> tuple[DeerVLA, dict[str, torch.Tensor], ResumePoint]:
    """The saved model (on ``device``), the training-only modules' tensors and the trainer state."""
    model = DeerVLA.from_pretrained(directory, device=device)
    training_heads = load_file(str(directory / TRAINING_HEADS_FILE), device=str(device))
    state = torch.load(directory / STATE_FILE, map_location='cpu', weights_only=True)
    return model, training_heads, ResumePoint(state.pop('stage'), state.pop('step'), state.pop('global_step'), state)


def has_resume_point(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file()
