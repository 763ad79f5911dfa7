"""A presence classifier on frozen image embeddings, and its class activation map (CAM) as prompts.

Why CAM (Zhou et al. 2016) and not Grad-CAM: the presence logit is a pooling of the CAM, so the
map is the classifier's own evidence per location, costs no backward pass at inference, and stays
differentiable (the segmentation loss can shape it through the dense prompt). Two poolings:

- `mean` (the original CAM): presence = spatial mean of the map + a bias (= fc(GAP(features))).
  A small lesion then has to lift the whole image's mean, and a map pushed toward the mask
  (low everywhere but the lesion) lowers the presence logit: the two losses fight.
- `lse` (default): the map holds per-location logits (bias included) and presence is their
  log-sum-exp pooling, a soft maximum (multiple-instance learning: present if some location is).
  Then a per-location loss against the few masks and the presence loss on every label agree.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError

POOLINGS = ("lse", "mean")


class PresenceHead(nn.Module):
    """(B, 256, g, g) image embeddings -> presence logit (B,) and raw CAM (B, g, g)."""

    def __init__(self, channels: int = 256, hidden: int = 32, pooling: str = "lse", sharpness: float = 4.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise MetasegError(f"sam_mix: pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        self.pooling, self.sharpness = pooling, sharpness
        self.features = nn.Sequential(  # 1x1 first: a 3x3 on 256 channels would cost 9x more on a CPU
            nn.Conv2d(channels, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(hidden, 1)

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(embeddings)
        cam = torch.einsum("bchw,c->bhw", feats, self.fc.weight[0])
        if self.pooling == "mean":
            return cam.mean(dim=(1, 2)) + self.fc.bias[0], cam  # = fc(GAP(feats)), exactly
        cam = cam + self.fc.bias[0]  # per-location logits
        r, flat = self.sharpness, cam.flatten(1)
        return (torch.logsumexp(r * flat, dim=1) - math.log(flat.shape[1])) / r, cam

    def normalise(self, cam: torch.Tensor) -> torch.Tensor:
        """The raw map in [0, 1] for prompting: `mean` as normalise_cam; `lse` min-max per map, so
        an image the gate lets through always has a peak (its most lesion-like location)."""
        if self.pooling == "mean":
            return normalise_cam(cam)
        lo, hi = cam.flatten(1).amin(1).view(-1, 1, 1), cam.flatten(1).amax(1).view(-1, 1, 1)
        return (cam - lo) / (hi - lo).clamp_min(1e-8)


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """ReLU, then divide by each map's maximum: (B, g, g) in [0, 1] (all zero where no evidence)."""
    pos = cam.clamp_min(0)
    return pos / pos.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1)


COMPONENTS = ("largest", "all")


def strongest_component(region: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """The 8-connected component of `region` holding the most `cam` mass (why: a second, weaker
    blob elsewhere - a shadow, the image border - otherwise stretches the box over both). With
    `cam` = the region itself, the mass is the pixel count: the largest component."""
    from scipy import ndimage

    labels, count = ndimage.label(region.cpu().numpy(), structure=np.ones((3, 3)))
    if count <= 1:
        return region
    mass = ndimage.sum(cam.cpu().numpy(), labels, index=np.arange(1, count + 1))
    return torch.from_numpy(labels == int(np.argmax(mass)) + 1).to(region.device)


def cam_boxes(cam01: torch.Tensor, threshold: float, image_size: int, component: str = "largest") -> torch.Tensor:
    """Bounding box (x0, y0, x1, y1, pixels of the `image_size` input) of the CAM above `threshold`
    (`component`: "largest" = its strongest connected component only, "all" = every pixel above);
    the whole image where nothing passes. Always inside [0, image_size - 1]."""
    if component not in COMPONENTS:
        raise MetasegError(f"sam_mix: box_component must be one of {list(COMPONENTS)}, got {component!r}")
    stride = image_size / cam01.shape[-1]
    boxes = []
    cams = cam01.detach()
    for cam, region in zip(cams, cams >= threshold):
        if component == "largest" and region.any():
            region = strongest_component(region, cam)
        ys, xs = torch.nonzero(region, as_tuple=True)
        if ys.numel() == 0:
            boxes.append([0.0, 0.0, image_size - 1.0, image_size - 1.0])
            continue
        x0, y0 = xs.min().item() * stride, ys.min().item() * stride
        x1 = min((xs.max().item() + 1) * stride - 1, image_size - 1.0)
        y1 = min((ys.max().item() + 1) * stride - 1, image_size - 1.0)
        boxes.append([x0, y0, x1, y1])
    return torch.tensor(boxes, dtype=torch.float32, device=cam01.device)


def mask_boxes(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, H, W) masks -> (N, 4) pixel boxes x0, y0, x1, y1 (inclusive); NaN rows for empty masks.
    The one mask-box definition: medsam_lite.boxes_from_masks rescales it into a prompt frame."""
    masks = np.asarray(masks).reshape(len(masks), *np.asarray(masks).shape[-2:]) > 0
    out = np.full((len(masks), 4), np.nan)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys):
            out[i] = [xs.min(), ys.min(), xs.max(), ys.max()]
    return out


def box_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU of paired inclusive pixel boxes (N, 4) x (N, 4) -> (N,) (NaN where either is NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0] + 1) * (z[:, 3] - z[:, 1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def choose_cam_threshold(cam01: torch.Tensor, masks: np.ndarray | torch.Tensor, image_size: int,
                         candidates: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7), component: str = "largest") -> tuple[float, float]:
    """The candidate CAM threshold whose boxes best match the masks' boxes (mean IoU), and that IoU.
    Why the masks' boxes: the box is what the decoder gets, so it is what the threshold must get right."""
    truth = mask_boxes(masks)
    keep = ~np.isnan(truth[:, 0])
    if not keep.any():
        raise MetasegError("sam_mix: choosing the CAM threshold needs at least one non-empty mask")
    scores = [float(np.mean(box_iou(cam_boxes(cam01[torch.from_numpy(keep)], t, image_size, component).numpy(), truth[keep])))
              for t in candidates]
    best = int(np.argmax(scores))  # first maximum: ties go to the lower threshold
    return float(candidates[best]), scores[best]


def choose_presence_threshold(probability: np.ndarray, present: np.ndarray, min_recall: float | None = None) -> float:
    """The presence threshold with the best balanced accuracy (mean of the two class recalls) on
    labelled images; candidates midway between sorted probabilities, ties broken toward 0.5.
    Balanced, not plain accuracy: with 83% lesion images "always present" scores 0.83 plainly.
    `min_recall`: instead, the highest candidate that still keeps that share of the PRESENT images
    (why: every present image the gate drops scores Dice 0, so a gate tuned for balanced accuracy
    costs Dice on small structures, e.g. the ends of the hippocampus; benchmarks/results/sam_mix.md)."""
    probability, present = np.asarray(probability, np.float64), np.asarray(present).astype(bool)
    if min_recall is not None and not (isinstance(min_recall, (int, float)) and 0.0 < min_recall <= 1.0):
        raise MetasegError(f"sam_mix: presence_min_recall must be in (0, 1], got {min_recall!r}")
    if present.all() or not present.any():
        raise MetasegError("sam_mix: choosing the presence threshold needs labelled images of both classes")
    values = np.unique(probability)
    candidates = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2, [1.0]]) if len(values) > 1 else np.array([0.5])
    if min_recall is not None:
        recall = np.array([np.mean(probability[present] >= t) for t in candidates])
        return float(candidates[recall >= min_recall - 1e-12].max())
    scores = [(np.mean(probability[present] >= t) + np.mean(probability[~present] < t)) / 2 for t in candidates]
    best = np.flatnonzero(np.isclose(scores, max(scores)))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def balanced_rows(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k row indices drawn with replacement so that each class is equally likely (why: the presence
    classifier otherwise collapses to the majority class, e.g. 'present' on BUSI's 83/17 split)."""
    counts = torch.bincount(labels.long(), minlength=2).float()
    weights = (1.0 / counts.clamp_min(1))[labels.long()]
    return torch.multinomial(weights, k, replacement=True, generator=generator)


def cam_mask_loss(cam_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice between the raw CAM of an `lse` head (per-location logits, B x g x g) and each
    mask area-averaged to the CAM grid: the few masks teach the classifier WHERE, the labels WHETHER."""
    target = F.adaptive_avg_pool2d(masks.float().reshape(len(masks), 1, *masks.shape[-2:]), cam_logits.shape[-2:])[:, 0]
    prob = torch.sigmoid(cam_logits)
    dice = 1 - (2 * (prob * target).flatten(1).sum(1) + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    return F.binary_cross_entropy_with_logits(cam_logits, target) + dice.mean()


def cam_mask_logits(cam01: torch.Tensor, threshold: float, side: int, sharpness: float = 10.0) -> torch.Tensor:
    """The thresholded CAM as SAM mask-prompt logits (B, 1, side, side): > 0 where CAM >= threshold.
    Soft (a scaled difference, not a hard step) so that gradients reach the classifier."""
    up = F.interpolate(cam01.unsqueeze(1), (side, side), mode="bilinear", align_corners=False)
    return (up - threshold) * sharpness


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over the batch; alpha weighs the positive class."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (2 * weight * (1 - p_t) ** gamma * bce).mean()
