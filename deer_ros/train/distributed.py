"""Process-group setup for multi-GPU / multi-node training with ``torchrun`` (or any launcher setting its env vars).

``torchrun --nnodes N --nproc-per-node G -m deer_ros.cli train ...`` sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; a plain
``deer-ros train`` sees none of them and runs as a single process. NCCL on
GPUs, gloo on CPUs (what the tests use).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``auto``: this process's GPU when there is one, else the CPU."""
    if requested == 'auto':
        return torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
    device = torch.device(requested)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', local_rank)
    return device


def init_distributed(requested_device: str = 'auto') -> tuple[DistContext, torch.device]:
    """Join the process group described by the environment, if any, and pick this process's device."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = pick_device(requested_device, local_rank)
    if world <= 1:
        return DistContext(), device
    if not dist.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return DistContext(int(os.environ['RANK']), world, local_rank), device


def shutdown_distributed(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
