"""Supervised segmenters for the synthetic-data study: train on N (image, mask) pairs (synthetic or
real), score per-image Dice on real test images. The smp U-Net of the rest of metaseg and one
transformer-based segmenter (SegFormer, smp's MiT-b0 encoder), both from random initialisation
(no downloads) with GroupNorm instead of BatchNorm, as everywhere in metaseg; and the pretrained
LiteMedSAM base (`litemedsam`: metaseg.models.medsam_lite as `--method medsam_lite_finetune`
builds it, frozen image encoder, learned prompts and mask decoder trained).

LiteMedSAM caches the embeddings of real images (fixed content); `generated_inputs` marks the
passes on generated images, which are encoded afresh, under autograd when the image needs a
gradient (GenSeg's segmentation loss then reaches the generator through the frozen encoder).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn as nn

from metaseg.errors import MetasegError


def _unet(in_channels: int, size: int) -> nn.Module:
    from metaseg.models import create_model

    return create_model("unet", in_channels=in_channels)


def _segformer(in_channels: int, size: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    from metaseg.models.unet import SegmentationNet, replace_batchnorm_with_groupnorm

    net = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, in_channels=in_channels, classes=1)
    return SegmentationNet(replace_batchnorm_with_groupnorm(net), in_channels)


def _litemedsam(in_channels: int, size: int) -> nn.Module:
    """The encoder runs at the images' own side (>= 64; 64 px is ~0.2 s per image on a CPU core,
    128 px ~0.85 s; 256 is LiteMedSAM's native size)."""
    from metaseg.models import create_model

    return create_model("medsam_lite", image_size=max(64, size), in_channels=in_channels)


# (in_channels, image side) -> a module mapping (B, C, H, W) in [0, 1] to (B, 1, H, W) logits
SEGMENTERS: dict[str, Callable[[int, int], nn.Module]] = {"unet": _unet, "segformer": _segformer, "litemedsam": _litemedsam}
DEFAULT_LR = {"unet": 1e-3, "segformer": 1e-3, "litemedsam": 3e-4}  # litemedsam: MEDSAM_FINETUNE's (jobs/methods.py)


def generated_inputs(model: nn.Module) -> ContextManager[None]:
    """The block's inputs are generated images: never cached (a no-op for segmenters without a cache)."""
    uncached = getattr(model, "uncached", None)
    return uncached() if callable(uncached) else contextlib.nullcontext()


def fit_segmenter(name: str, images: np.ndarray, masks: np.ndarray, steps: int = 200, batch_size: int = 16,
                  lr: float = 1e-3, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Adam on BCE + soft Dice over seeded minibatches of uint8 images (N, C, H, W) / {0,1} masks (N, H, W),
    on `device` (the minibatch draws are on the CPU generator: the same rows on every device)."""
    from metaseg.losses import bce_dice_loss

    if name not in SEGMENTERS:
        raise MetasegError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    torch.manual_seed(seed)
    with torch.enable_grad():  # the U-Net factory runs a probe backward pass
        model = SEGMENTERS[name](int(images.shape[1]), int(images.shape[-1])).to(device)
    x = torch.from_numpy(images).float().div(255.0).to(device)
    y = torch.from_numpy(masks).float().unsqueeze(1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen).to(device)
        loss = bce_dice_loss(model(x[rows]), y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def dice_per_image(model: nn.Module, images: np.ndarray, masks: np.ndarray, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Per-image Dice (probability > 0.5; an empty prediction on an empty mask scores 1) of uint8
    images (N, C, H, W) and masks (N, H, W), in batches on `device`; the scores come back on the CPU."""
    from metaseg.metrics import dice_iou_per_image

    scores = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).float().div(255.0).to(device)
        y = torch.from_numpy(masks[i:i + batch_size]).float().unsqueeze(1).to(device)
        scores.append(dice_iou_per_image(model(x), y)[0].cpu())
    return torch.cat(scores)


def mean_dice(model: nn.Module, images: np.ndarray, masks: np.ndarray, batch_size: int = 64) -> float:
    """Mean of `dice_per_image`."""
    return float(dice_per_image(model, images, masks, batch_size).mean())
