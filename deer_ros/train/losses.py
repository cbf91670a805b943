"""The per-head action loss of DeeR: Huber on the pose plus a small BCE on the gripper."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deer_ros.model.modeling_deer import HeadOutput


def action_loss(output: HeadOutput, pose: torch.Tensor, gripper: torch.Tensor,
                gripper_weight: float = 0.01) -> torch.Tensor:
    """Huber(pose) + ``gripper_weight`` * BCE-with-logits(gripper), averaged over every supervised frame.

    ``pose`` (B, T, 6) in [-1, 1]; ``gripper`` (B, T) in {0, 1} (CALVIN's -1/+1 mapped by (g+1)/2).
    Computed in fp32 so mixed-precision runs sum the same numbers.
    """
    pose_term = F.huber_loss(output.pose.float(), pose.float())
    gripper_term = F.binary_cross_entropy_with_logits(output.gripper_logit.float(), gripper.float())
    return pose_term + gripper_weight * gripper_term
