"""Stateless terms of the scorer's training objective and the measures logged beside it.

All take the flat masks the model returns in training: `(N,)` over the merged visual tokens of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mask_regularization(soft_mask: torch.Tensor, hard_mask: torch.Tensor) -> torch.Tensor:
    """BCE(soft, hard): pulls the differentiable top-k mask towards the hard top-k mask of the same scores.

    Computed in float32 outside autocast (binary cross-entropy is not autocast-safe). The hard mask is a target:
    no gradient reaches it.

    Args:
        soft_mask (`torch.Tensor` of shape `(N,)`): values in [0, 1].
        hard_mask (`torch.Tensor` of shape `(N,)`): 0/1.

    Returns:
        `torch.Tensor`, scalar float32: the mean binary cross-entropy.
    """
    if soft_mask.shape != hard_mask.shape:
        raise ValueError(f"The soft mask {tuple(soft_mask.shape)} and hard mask {tuple(hard_mask.shape)} differ in shape.")
    with torch.autocast(device_type=soft_mask.device.type, enabled=False):
        return F.binary_cross_entropy(soft_mask.float(), hard_mask.detach().float())


@torch.no_grad()
def mask_sharpness(soft_mask: torch.Tensor) -> torch.Tensor:
    """How binary a mask is: one minus the mean binary entropy of its values, in bits.

    0 when every value is 0.5, 1 when every value is 0 or 1. (Not mean |2m - 1|: with every value below 0.5 that is
    `1 - 2 * mean(m)`, fixed by the top-k constraint `sum(m) = k`, so it could not show the mask sharpening.)
    """
    m = soft_mask.float()
    entropy = -(torch.special.xlogy(m, m) + torch.special.xlogy(1 - m, 1 - m)) / math.log(2)
    return 1 - entropy.mean()


@torch.no_grad()
def mask_hard_distance(soft_mask: torch.Tensor, hard_mask: torch.Tensor) -> torch.Tensor:
    """Mean |soft - hard|: 0 when the soft mask equals the hard top-k mask it is trained towards."""
    return (soft_mask.float() - hard_mask.float()).abs().mean()


__all__ = ["mask_regularization", "mask_sharpness", "mask_hard_distance"]
