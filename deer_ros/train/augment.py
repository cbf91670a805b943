"""Random-shift image augmentation (DrQ-style, as in upstream DeeR: pad 10 static / 4 gripper).

Works on the uint8 HWC frames before the model's own resize, so the shift is
in camera pixels. Indices are clamped instead of padding the image: the same
result as edge-replicate padding followed by a random crop, without a copy of
the padded batch.
"""
from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of ``images`` (N, H, W, C) by its own integer offset in [-pad, pad] on both axes.

    Offsets are drawn on the CPU (``generator``) so runs are reproducible on
    any device; border pixels are repeated into the uncovered strip.
    """
    if pad == 0:
        return images
    count, height, width = images.shape[:3]
    offsets = torch.randint(-pad, pad + 1, (count, 2), generator=generator).to(images.device)
    rows = (torch.arange(height, device=images.device) + offsets[:, :1]).clamp_(0, height - 1)
    cols = (torch.arange(width, device=images.device) + offsets[:, 1:]).clamp_(0, width - 1)
    index = torch.arange(count, device=images.device)[:, None, None]
    return images[index, rows[:, :, None], cols[:, None, :]]


def augment_batch(batch: dict[str, torch.Tensor], static_pad: int, gripper_pad: int,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random-shift both cameras of a (B, T, H, W, C) batch, every frame by its own offset."""
    shifted = dict(batch)
    for key, pad in (('rgb_static', static_pad), ('rgb_gripper', gripper_pad)):
        images = batch[key]
        shifted[key] = random_shift(images.flatten(0, 1), pad, generator).view(images.shape)
    return shifted
