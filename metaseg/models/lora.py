"""Low-rank adapters (LoRA) for nn.Linear layers, written for meta-learning.

Hand-written rather than taken from `peft` because:
- SAM's image encoder uses one *fused* `qkv` Linear per block; a plain rank-r update of that
  Linear is exactly what we want, and needs no model-type plumbing;
- the learners run the model through `torch.func.functional_call` with fast weights, so every
  tensor the forward touches must be a plain attribute parameter (`weight`, `lora_A`, `lora_B`)
  with no hooks, caches or merged-weight state that would bypass the substituted values;
- `peft` pulls in `transformers`/`accelerate`, a heavy dependency for ~40 lines.

`LoRALinear` subclasses nn.Linear and keeps the base `weight`/`bias` under their original
names, so an official checkpoint's keys (`...attn.qkv.weight`) still load unchanged; only
`lora_A`/`lora_B` are new keys. B starts at zero, so the adapted model equals the base model
until the adapters are trained.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha / r) * x A^T B^T with W, b frozen and A (r x in), B (out x r) trainable."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = 8, alpha: float = 8.0):
        super().__init__(in_features, out_features, bias=bias)
        if rank < 1:
            raise MetasegError(f"model.lora_rank must be >= 1, got {rank}")
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # same init as nn.Linear / peft
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def wrap(cls, base: nn.Linear, rank: int, alpha: float) -> "LoRALinear":
        """A LoRALinear that shares (not copies) the base layer's weight and bias tensors."""
        layer = cls(base.in_features, base.out_features, bias=base.bias is not None, rank=rank, alpha=alpha)
        layer.weight = base.weight
        layer.bias = base.bias
        layer.weight.requires_grad_(False)
        if layer.bias is not None:
            layer.bias.requires_grad_(False)
        return layer.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def inject_lora(root: nn.Module, targets: Iterable[str], rank: int = 8, alpha: float = 8.0) -> list[str]:
    """Replace every nn.Linear child whose attribute name is in `targets` by a LoRALinear, in place.

    Returns the qualified names of the wrapped layers; no match at all is an error (a typo in
    `model.lora_targets` would otherwise silently train nothing but the decoder).
    """
    targets = set(targets)
    wrapped: list[str] = []
    for parent_name, parent in list(root.named_modules()):
        for name, child in list(parent.named_children()):
            if name in targets and type(child) is nn.Linear:
                setattr(parent, name, LoRALinear.wrap(child, rank, alpha))
                wrapped.append(f"{parent_name}.{name}" if parent_name else name)
    if not wrapped:
        raise MetasegError(f"model.lora_targets: no Linear layer named any of {sorted(targets)}")
    return wrapped
