"""Per-image Dice and IoU on probabilities thresholded at 0.5, and 95% confidence intervals.

Written by hand rather than with torchmetrics because the protocol (per-image averaging,
an empty prediction on an empty mask scores 1) must be explicit and identical everywhere.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import stats


@torch.no_grad()
def dice_iou_per_image(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of each image in a batch (B,1,H,W) logits vs {0,1} target; returns two (B,) tensors."""
    pred = (torch.sigmoid(logits) > 0.5).flatten(1).float()
    gt = (target > 0.5).flatten(1).float()
    inter = (pred * gt).sum(1)
    p, g = pred.sum(1), gt.sum(1)
    union = p + g - inter
    both_empty = (p + g) == 0
    dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / (p + g).clamp_min(1e-12))
    iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp_min(1e-12))
    return dice, iou


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 half-width for fewer than two values)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, 0.0
    sem = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return mean, float(stats.t.ppf(0.975, arr.size - 1) * sem)


def paired_ci95(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """Mean and 95% t-interval half-width of a[i] - b[i] over aligned pairs (same image, episode or
    seed on both sides), and the number of pairs; (nan, nan, 0) for none. Unequal lengths are an
    error rather than a silent truncation: a caller that compares over a common prefix cuts it."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci95: {len(a)} values against {len(b)}; pairs must be aligned")
    mean, ci = mean_ci95(np.subtract(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).tolist())
    return mean, ci, len(a)


MIN_CI_IMAGES = 5  # below this many per-image scores a t-interval is too wide to mean anything


def mean_ci_text(mean: float, ci: float, n: int, digits: int = 4) -> str:
    """How every command prints a score: `0.8123 ± 0.0151` (mean ± 95% CI), or, over fewer than
    MIN_CI_IMAGES images, the mean and the count with no interval: `0.1174 (2 images, too few for a CI)`."""
    if n < 1 or math.isnan(mean):
        return "n/a"
    if n < MIN_CI_IMAGES:
        return f"{mean:.{digits}f} ({n} image{'s' if n != 1 else ''}, too few for a CI)"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"
