"""Random-shift augmentation (DrQ-style, as upstream DeeR: pad 10 static / 4 gripper; grid cells for cached features).

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
                  generator: torch.Generator | None = None, feature_shift: int = 0) -> dict[str, torch.Tensor]:
    """Random-shift both cameras of a batch, every frame by its own offset.

    Images (B, T, H, W, C) move by up to ``static_pad`` / ``gripper_pad`` pixels; cached trunk features
    (B, T, C, g, g) by up to ``feature_shift`` grid cells (one cell = 16 input pixels of the trunk).
    """
    shifted = dict(batch)
    for key, pad in (('rgb_static', static_pad), ('rgb_gripper', gripper_pad)):
        if key in batch:
            images = batch[key]
            shifted[key] = random_shift(images.flatten(0, 1), pad, generator).view(images.shape)
    for key in ('features_static', 'features_gripper'):
        if key in batch and feature_shift:
            grids = batch[key].flatten(0, 1).permute(0, 2, 3, 1)  # cells as "pixels", channels last
            shifted[key] = random_shift(grids, feature_shift, generator).permute(0, 3, 1, 2).reshape(batch[key].shape)
    return shifted
