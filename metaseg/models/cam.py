"""A presence classifier on frozen image embeddings, and its class activation map (CAM) as prompts.

Why CAM (Zhou et al. 2016) and not Grad-CAM: with global average pooling followed by one linear
layer the presence logit is exactly the spatial mean of the CAM plus a bias, so the map is the
classifier's own evidence per location, costs no backward pass at inference, and stays
differentiable (the segmentation loss can shape it through the dense prompt).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PresenceHead(nn.Module):
    """(B, 256, g, g) image embeddings -> presence logit (B,) and CAM (B, g, g)."""

    def __init__(self, channels: int = 256, hidden: int = 32):
        super().__init__()
        self.features = nn.Sequential(  # 1x1 first: a 3x3 on 256 channels would cost 9x more on a CPU
            nn.Conv2d(channels, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(hidden, 1)

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(embeddings)
        cam = torch.einsum("bchw,c->bhw", feats, self.fc.weight[0])
        return cam.mean(dim=(1, 2)) + self.fc.bias[0], cam  # = fc(GAP(feats)), exactly


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """ReLU, then divide by each map's maximum: (B, g, g) in [0, 1] (all zero where no evidence)."""
    pos = cam.clamp_min(0)
    return pos / pos.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1)


def cam_boxes(cam01: torch.Tensor, threshold: float, image_size: int) -> torch.Tensor:
    """Bounding box (x0, y0, x1, y1, pixels of the `image_size` input) of the CAM above `threshold`;
    the whole image where nothing passes. Always inside [0, image_size - 1]."""
    stride = image_size / cam01.shape[-1]
    boxes = []
    for region in cam01.detach() >= threshold:
        ys, xs = torch.nonzero(region, as_tuple=True)
        if ys.numel() == 0:
            boxes.append([0.0, 0.0, image_size - 1.0, image_size - 1.0])
            continue
        x0, y0 = xs.min().item() * stride, ys.min().item() * stride
        x1 = min((xs.max().item() + 1) * stride - 1, image_size - 1.0)
        y1 = min((ys.max().item() + 1) * stride - 1, image_size - 1.0)
        boxes.append([x0, y0, x1, y1])
    return torch.tensor(boxes, dtype=torch.float32, device=cam01.device)


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
