"""In-context segmenters: a new task is given by a support set of (image, mask) pairs at
prediction time, with no gradient step (UniverSeg, Butoi et al. 2023; GMISeg, arXiv 2311.12539).

`InContextModel` is what both kinds share: the support set as a dict of tensors (the learner's
"fast weights", so `metaseg adapt/evaluate` and the benchmark drive them like any learner), its
checks, a canonical support order (content hash, so that ensembling over support subsets does not
depend on the order the user listed the files in), and the ensemble over R random support subsets.

`incontext_unet` (this file) is the UniverSeg-style network of CrossBlocks. Its shared "cross"
convolution over the concatenation [target features, support pair features] is computed as the
sum of a convolution of the target and one of the support pair (the same linear map, split by
input channels), so the target part is computed once per target instead of once per pair.
The support features of the later levels depend on the target (z_j mixes t and s_j), so every
query carries K feature maps through every level: the network runs channels-last (2-3x faster
oneDNN convolutions and pooling on CPU), on chunks of about PAIRS_PER_CHUNK (query, member) pairs
that stay in cache, with the first level's support part computed once per call and the last
block's support convolution (whose output nothing reads) skipped; the values are the plain
definition's (tested against it).
Nothing mixes the images of a query batch, and the support set enters only through means over
its members: predictions do not depend on the support order or on the other queries (tested).
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.models.unet import adapt_channels

Support = dict[str, torch.Tensor]
_EPS = 1e-4
PAIRS_PER_CHUNK = 32  # (query, support member) pairs an incontext_unet pass carries at once (cache, not values)
INITS = ("kaiming", "torch")
LEAKY_SLOPE = 0.1


def support_order(support_x: torch.Tensor, support_y: torch.Tensor) -> list[int]:
    """Indices that sort a support set by the content hash of each (image, mask) pair."""
    def digest(i: int) -> str:
        h = hashlib.sha1(support_x[i].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        h.update(support_y[i].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    return sorted(range(support_x.shape[0]), key=digest)


class InContextModel(nn.Module):
    """Shared by the in-context segmenters; subclasses implement `encode_support` and `segment_once`.

    Prediction options (model attributes, so a benchmark variant can switch them after one
    adaptation): `ensemble` = R random support subsets whose probabilities are averaged (0 or 1:
    off), `ensemble_size` = members per subset (0: half the support set, rounded up).
    """

    in_channels: int
    ensemble: int = 0
    ensemble_size: int = 0
    ensemble_seed: int = 0

    # -- the support set ------------------------------------------------------------------------
    def check_support(self, support_x: torch.Tensor, support_y: torch.Tensor) -> None:
        if support_x.dim() != 4 or support_x.shape[0] < 1:
            raise MetasegError(f"support images must be (K, C, H, W) with K >= 1, got shape {tuple(support_x.shape)}")
        if support_x.shape[1] not in (1, self.in_channels):
            raise MetasegError(f"support images have {support_x.shape[1]} channels; model.in_channels={self.in_channels} "
                               f"takes {self.in_channels} (or 1, repeated)")
        if tuple(support_y.shape) != (support_x.shape[0], 1, *support_x.shape[-2:]):
            raise MetasegError(f"support masks must be (K, 1, H, W) = {(support_x.shape[0], 1, *support_x.shape[-2:])}, "
                               f"got {tuple(support_y.shape)}")

    def prepare_support(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Support:
        """The support set in canonical order, plus whatever the model precomputes from it."""
        self.check_support(support_x, support_y)
        order = torch.tensor(support_order(support_x, support_y), device=support_x.device)
        support_x, support_y = support_x[order], support_y[order].float()
        return {"support_x": support_x, "support_y": support_y, **self.encode_support(support_x, support_y)}

    def encode_support(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Support:
        """Extra per-member tensors (first dimension K) computed once per support set."""
        return {}

    # -- prediction -----------------------------------------------------------------------------
    def segment(self, x: torch.Tensor, support: Support) -> torch.Tensor:
        """Logits (B, 1, H, W) of queries `x` given a prepared support set."""
        channels = support["support_x"].shape[1]
        if x.dim() != 4 or x.shape[1] != channels:
            raise MetasegError(f"query images have {x.shape[1] if x.dim() == 4 else '?'} channels but the support "
                               f"images have {channels}: a support set and its queries must match")
        k = support["support_x"].shape[0]
        size = self.ensemble_size or math.ceil(k / 2)
        if self.ensemble <= 1 or k < 2 or size >= k:
            return self.segment_once(x, support)
        generator = torch.Generator().manual_seed(self.ensemble_seed)
        prob = 0.0
        for _ in range(self.ensemble):
            pick = torch.randperm(k, generator=generator)[:size].sort().values.to(x.device)
            prob = prob + torch.sigmoid(self.segment_once(x, {n: t[pick] for n, t in support.items()}))
        return torch.logit((prob / self.ensemble).clamp(_EPS, 1 - _EPS))

    def segment_once(self, x: torch.Tensor, support: Support) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        return self.segment(x, self.prepare_support(support_x, support_y))


class CrossBlock(nn.Module):
    """UniverSeg's CrossBlock: z_j = act(conv([t, s_j])) for every support member j, then
    t' = act(conv_t(mean_j z_j)) and s'_j = act(conv_s(z_j)).

    Support features are 4-D: (B*K, C, H, W) with query b's members at rows b*K..b*K+K-1, or
    (K, C, H, W) when they are the same for every query (the first level)."""

    def __init__(self, target_in: int, support_in: int, channels: int):
        super().__init__()
        self.cross_target = nn.Conv2d(target_in, channels, 3, padding=1)  # target part of the shared conv
        self.cross_support = nn.Conv2d(support_in, channels, 3, padding=1, bias=False)  # its support part
        self.target_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.support_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)  # each input is a fresh sum/convolution output

    def forward(self, t: torch.Tensor, s: torch.Tensor, k: int,
                support_out: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """t (B, Ct, H, W); s (B*K or K, Cs, H, W) -> (B, C, H, W), (B*K, C, H, W) (None if not `support_out`)."""
        return self.mix(t, self.cross_support(s), k, support_out)

    def mix(self, t: torch.Tensor, zs: torch.Tensor, k: int,
            support_out: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` given the support part of the shared conv, zs = cross_support(s)."""
        z = self.act(self.cross_target(t).unsqueeze(1) + zs.unflatten(0, (-1, k)))  # (B, K, C, H, W)
        t_out = self.act(self.target_conv(z.mean(1)))
        # the last block's support features are never used: skip their convolution
        s_out = self.act(self.support_conv(z.flatten(0, 1))) if support_out else None
        return t_out, s_out


def _pool(v: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(v, 2)


def _up(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(v, size, mode="bilinear", align_corners=False)


class InContextUNet(InContextModel):
    """CrossBlock U-Net: `len(channels)` encoder levels, one fewer decoder levels, 1x1 head.

    init="kaiming" (UniverSeg's): Kaiming-normal weights for the LeakyReLU and zero biases, so
    that, with no normalisation layer, features keep unit scale through the 13 convolutions of
    the deepest path. "torch" (PyTorch's default, what the first benchmark rows used) shrinks the
    second moment about 6x per convolution + activation: at initialisation the features after the
    first block are mostly the biases and the logits hardly depend on the images or the masks
    (`tests/test_incontext.py`)."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (64, 64, 64, 64), init: str = "torch"):
        super().__init__()
        if init not in INITS:
            raise MetasegError(f"model.init must be one of {list(INITS)} for incontext_unet, got {init!r}")
        self.init = init
        self.in_channels, self.channels = in_channels, tuple(channels)
        self.encoder = nn.ModuleList()
        t_in, s_in = in_channels, in_channels + 1
        for c in self.channels:
            self.encoder.append(CrossBlock(t_in, s_in, c))
            t_in = s_in = c
        self.decoder = nn.ModuleList()
        for skip in reversed(self.channels[:-1]):
            self.decoder.append(CrossBlock(t_in + skip, s_in + skip, skip))
            t_in = s_in = skip
        self.head = nn.Conv2d(t_in, 1, 1)
        if init == "kaiming":
            for module in self.modules():
                if isinstance(module, nn.Conv2d) and module is not self.head:
                    nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def segment_once(self, x: torch.Tensor, support: Support) -> torch.Tensor:
        height, width = x.shape[-2:]
        if support["support_x"].shape[-2:] != (height, width):
            raise MetasegError(f"support images are {tuple(support['support_x'].shape[-2:])} px, queries {(height, width)} px")
        depth = len(self.channels) - 1
        if height % (1 << depth) or width % (1 << depth):
            raise MetasegError(f"incontext_unet: image size {(height, width)} must be divisible by {1 << depth}")
        k = support["support_x"].shape[0]
        pair = torch.cat([adapt_channels(support["support_x"], self.in_channels), support["support_y"]], 1)
        # the first level's support features are the same for every query: computed once per call
        zs = self.encoder[0].cross_support(((pair - 0.5) * 2).contiguous(memory_format=torch.channels_last))
        t = ((adapt_channels(x, self.in_channels) - 0.5) * 2).contiguous(memory_format=torch.channels_last)
        # Each query carries K support feature maps through every level, so queries go in chunks of
        # about PAIRS_PER_CHUNK (query, support) pairs: the features stay in cache (no effect on values).
        step = max(1, PAIRS_PER_CHUNK // k)
        return torch.cat([self.segment_chunk(t[i:i + step], zs, k) for i in range(0, t.shape[0], step)])

    def segment_chunk(self, t: torch.Tensor, zs: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of channels-last queries `t` given the first level's support features `zs` (K, C, H, W)."""
        depth = len(self.channels) - 1
        t, s = self.encoder[0].mix(t, zs, k)
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                t, s = block(t, s, k)
            if level < depth:
                skips.append((t, s))
                t, s = _pool(t), _pool(s)
        for index, block in enumerate(self.decoder):
            skip_t, skip_s = skips.pop()
            size = skip_t.shape[-2:]
            t, s = block(torch.cat([_up(t, size), skip_t], 1), torch.cat([_up(s, size), skip_s], 1), k,
                         support_out=index < len(self.decoder) - 1)
        return self.head(t)


def create_incontext_unet(in_channels: int = 3, channels: int | list[int] = 64, levels: int = 4,
                          ensemble: int = 0, ensemble_size: int = 0, init: str = "torch") -> InContextUNet:
    """UniverSeg-style in-context U-Net (random init; meta-train it with `learner: {name: incontext}`).

    in_channels: 1 (grayscale) or 3 (RGB); channels: width of every level (or one width per
    level); levels: encoder levels (decoder: levels - 1); ensemble / ensemble_size: see
    InContextModel; init: "kaiming" (UniverSeg's) or "torch" (PyTorch's default), see InContextUNet.
    """
    if in_channels not in (1, 3):
        raise MetasegError(f"model.in_channels must be 1 or 3 for incontext_unet, got {in_channels!r}")
    widths = [channels] * int(levels) if isinstance(channels, int) else list(channels)
    if len(widths) != int(levels) or int(levels) < 2 or any(not isinstance(c, int) or c < 1 for c in widths):
        raise MetasegError(f"model.channels must be one positive width or one per level (levels={levels}), got {channels!r}")
    check_ensemble(ensemble, ensemble_size)
    model = InContextUNet(in_channels, tuple(widths), init)
    model.ensemble, model.ensemble_size = ensemble, ensemble_size
    return model


def check_ensemble(ensemble: int, ensemble_size: int) -> None:
    for name, value in (("ensemble", ensemble), ("ensemble_size", ensemble_size)):
        if not isinstance(value, int) or value < 0:
            raise MetasegError(f"model.{name} must be an integer >= 0, got {value!r}")
