"""Segmentation networks: `create_model(kind, **options)` maps (B, C, H, W) in [0, 1] to
(B, 1, H, W) logits. The kinds (`unet`, `sam`, `medsam_lite`, `incontext_unet`, `incontext_sam`) and their modules are listed in
`metaseg.registry`, which also checks the options against the factory's signature."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from metaseg.registry import MODEL_REGISTRY


def create_model(kind: str = "unet", **options: Any) -> nn.Module:
    """Build a network by kind; an unknown kind, option or ill-typed value is a one-line error."""
    return MODEL_REGISTRY.build(kind, options, "model")
