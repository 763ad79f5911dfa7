"""Segmentation loss shared by every learner's inner and outer loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged: robust to the tiny foregrounds of lesions and vessels."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice: smooth, twice differentiable (needed for second-order meta-gradients)."""
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
