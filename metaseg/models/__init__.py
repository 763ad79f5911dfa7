"""Model factories: `create_model(kind=...)` over a small registry (U-Net now, SAM later)."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(kind: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODEL_REGISTRY[kind] = fn
        return fn

    return deco


def create_model(kind: str = "unet", **kwargs: Any) -> nn.Module:
    """Build a segmentation network that maps (B, C, H, W) in [0,1] to (B, 1, H, W) logits."""
    from metaseg.errors import MetasegError

    if kind == "unet":
        from metaseg.models import unet  # noqa: F401  (registers itself)
    elif kind == "sam":
        from metaseg.models import sam  # noqa: F401
    elif kind == "medsam_lite":
        from metaseg.models import medsam_lite  # noqa: F401
    if kind not in MODEL_REGISTRY:
        raise MetasegError(f"model.kind: unknown model {kind!r}; known: {sorted(MODEL_REGISTRY) or ['unet', 'sam']}")
    return MODEL_REGISTRY[kind](**kwargs)
