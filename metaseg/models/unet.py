"""The shared U-Net, built with segmentation-models-pytorch.

Normalisation: every BatchNorm is replaced by GroupNorm. BatchNorm in a MAML inner loop either
uses batch statistics (one image's mask then depends on which other images share its batch, the
"transductive BN" trap) or running statistics that the fast weights never update. GroupNorm
normalises each image on its own, so a prediction is the same alone or inside a batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from metaseg.errors import MetasegError


def _groups_for(channels: int, max_groups: int = 8) -> int:
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def replace_batchnorm_with_groupnorm(module: nn.Module, max_groups: int = 8) -> nn.Module:
    """Swap every BatchNorm2d for a GroupNorm with the same channel count, in place; returns the module."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(_groups_for(child.num_features, max_groups), child.num_features))
        else:
            replace_batchnorm_with_groupnorm(child, max_groups)
    return module


class SegmentationNet(nn.Module):
    """Wraps an smp model: input in [0,1] with `in_channels` channels, output (B,1,H,W) logits.

    Grayscale images given to a 3-channel net (or the reverse) are an explicit, documented
    conversion (`adapt_channels`), never a silent one.
    """

    def __init__(self, net: nn.Module, in_channels: int, channels_last: bool = False):
        super().__init__()
        self.net = net
        self.in_channels = in_channels
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = adapt_channels(x, self.in_channels)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net((x - 0.5) / 0.25)


def adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale -> C channels by repetition, RGB -> 1 channel by luminance; other mismatches are errors."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise MetasegError(f"model.in_channels={channels} cannot take images with {c} channels")


def create_unet(
    encoder_name: str = "resnet18",
    encoder_depth: int = 3,
    decoder_channels: Sequence[int] = (64, 32, 16),
    in_channels: int = 3,
    encoder_weights: str | None = None,
    norm: str = "group",
    channels_last: bool = False,
) -> SegmentationNet:
    """A light U-Net for practical CPU meta-learning; `encoder_weights` is a local file path (no downloads).

    channels_last: weights and activations in NHWC memory order (same values): on one CPU thread
    with bf16 autocast a second-order inner step measured 1.2x faster, in fp32 1.02-1.15x
    (benchmarks/results/throughput.json, layout_compile)."""
    import segmentation_models_pytorch as smp

    decoder_channels = tuple(decoder_channels)
    if len(decoder_channels) != encoder_depth:
        raise MetasegError(
            f"model.decoder_channels has {len(decoder_channels)} entries but model.encoder_depth is {encoder_depth}"
        )
    try:
        net = smp.Unet(
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=None,
            decoder_channels=decoder_channels,
            in_channels=in_channels,
            classes=1,
        )
    except (KeyError, ValueError) as exc:
        raise MetasegError(f"model.encoder_name: cannot build encoder {encoder_name!r} ({exc})") from None
    if encoder_weights:
        load_encoder_weights(net.encoder, Path(encoder_weights))
    drop_unused_encoder_stages(net, in_channels)
    if norm == "group":
        replace_batchnorm_with_groupnorm(net)
    elif norm != "batch":
        raise MetasegError(f"model.norm must be 'group' or 'batch', got {norm!r}")
    return SegmentationNet(net, in_channels, channels_last)


def drop_unused_encoder_stages(net: nn.Module, in_channels: int) -> None:
    """Replace encoder children that a forward pass never touches by Identity.

    smp keeps every stage of e.g. ResNet even with a shallow `encoder_depth`; the unused ones
    would be dead meta-parameters (gradients None) and ~10 M wasted weights on CPU.
    """
    net.eval()
    with torch.enable_grad():  # callers may build models inside torch.no_grad()
        net(torch.zeros(1, in_channels, 64, 64)).sum().backward()
    for name, child in list(net.encoder.named_children()):
        params = list(child.parameters())
        if params and all(p.grad is None for p in params):
            setattr(net.encoder, name, nn.Identity())
    net.zero_grad(set_to_none=True)
    net.train()


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local encoder state dict (weights_only) before BN is swapped; a classifier head is ignored."""
    if not path.is_file():
        raise MetasegError(f"model.encoder_weights: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign pickle
        raise MetasegError(f"model.encoder_weights: cannot read {path} as a weights file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(list(encoder.state_dict())):
        raise MetasegError(f"model.encoder_weights: {path} does not match the encoder (unexpected keys: {unexpected[:3]})")
