"""Tiny float64 models and episodes for the learners' exactness tests (not a test module)."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode


class TinyConvNet(nn.Module):
    """Two 3x3 convolutions with tanh: smooth (finite differences are accurate), ~80 parameters
    (the full Hessian is cheap), (B,1,H,W) logits like the U-Net."""

    def __init__(self, hidden: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(x)))


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> TinyConvNet:
    torch.manual_seed(seed)
    return TinyConvNet().to(dtype)


def random_episode(shots: int = 3, queries: int = 2, size: int = 6, channels: int = 1, seed: int = 1,
                   dtype: torch.dtype = torch.float64) -> Episode:
    g = torch.Generator().manual_seed(seed)
    n = shots + queries
    x = torch.rand(n, channels, size, size, generator=g, dtype=dtype)
    y = (torch.rand(n, 1, size, size, generator=g) > 0.6).to(dtype)
    return Episode("random", x[:shots], y[:shots], x[shots:], y[shots:],
                   [f"s{i}" for i in range(shots)], [f"q{i}" for i in range(queries)])


def meta_grads(learner, model, episode) -> list[torch.Tensor]:
    """learner.meta_backward's accumulated gradients, one per meta-parameter (zeroed first)."""
    params = list(learner.meta_parameters(model))
    for p in params:
        p.grad = None
    learner.meta_backward(model, episode)
    return [p.grad.clone() for p in params]


def unflattener(params: dict):
    """Inverse of torch.cat([p.flatten() ...]) over `params`' shapes, for full-Hessian references."""
    names, shapes = list(params), [p.shape for p in params.values()]

    def unflatten(vec):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = vec[i:i + s.numel()].view(s)
            i += s.numel()
        return out

    return unflatten
