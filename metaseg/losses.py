"""Segmentation losses for the learners' inner and outer loops, by name (`learner.loss`).

Every built-in is smooth and twice differentiable, which second-order meta-gradients (MAML,
iMAML's Hessian-vector products) need. A user's own loss is named by a dotted path
`package.module:function`; it must map (logits (B,1,H,W), target in {0,1}) to a scalar tensor.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F

from metaseg.errors import MetasegError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged: robust to the tiny foregrounds of lesions and vessels."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise binary cross-entropy on logits."""
    return F.binary_cross_entropy_with_logits(logits, target)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE down-weighted by (1 - p_t)^gamma on easy pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1.0 - p_t) ** gamma * bce).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (the default): smooth, twice differentiable."""
    return bce_loss(logits, target) + soft_dice_loss(logits, target)


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Focal + soft Dice: for foregrounds so small that BCE is dominated by easy background."""
    return focal_loss(logits, target) + soft_dice_loss(logits, target)


LOSSES: dict[str, Loss] = {"bce_dice": bce_dice_loss, "bce": bce_loss, "dice": soft_dice_loss,
                           "focal_dice": focal_dice_loss}


def resolve_loss(spec: str, where: str = "learner.loss") -> Loss:
    """A built-in loss by name, or `package.module:function`; anything else is a one-line error."""
    if isinstance(spec, str) and spec in LOSSES:
        return LOSSES[spec]
    known = f"known: {', '.join(LOSSES)} or a dotted path 'package.module:function'"
    if not isinstance(spec, str) or ":" not in spec:
        raise MetasegError(f"{where}: unknown loss {spec!r}; {known}")
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise MetasegError(f"{where}: cannot load loss {spec!r} ({type(exc).__name__}: {exc})") from None
    if not callable(fn):
        raise MetasegError(f"{where}: {spec!r} is not a function")
    return fn
