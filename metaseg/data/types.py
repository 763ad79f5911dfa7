"""Plain data records passed between the data pipeline stages (see DESIGN.md's data flow).

They are deliberately dumb containers so that every stage (readers, cache, sampler,
learners, Lightning module) agrees on shapes without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaseg.errors import MetasegError


@dataclass(frozen=True)
class Pair:
    """One annotated example as distributed on disk; `id` is stable across machines (relative path stem)."""

    id: str
    image: Path
    mask: Path | None
    meta: dict[str, Any] = field(default_factory=dict)


class PairError(MetasegError):
    """A problem with one (image, mask) pair; `kind` groups problems in `metaseg data check`."""

    def __init__(self, kind: str, file: Path | str, message: str):
        super().__init__(message)
        self.kind = kind
        self.file = str(file)


@dataclass
class Decoded:
    """One validated pair: image (H, W, C) uint8, mask (H, W) uint8 in {0, 1}, and how it was converted."""

    image: np.ndarray
    mask: np.ndarray
    mask_rule: str
    notes: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.image.shape[2])


@dataclass
class TaskArrays:
    """All examples of one task, decoded and resized once.

    images: uint8 (N, C, H, W), C = 1 (grayscale modality) or 3 (colour), never silently converted:
            `conversion` says what was done to a task mixing the two ('' = nothing).
    masks:  uint8 (N, H, W) with values in {0, 1}.
    ids:    stable example ids; hashes: content hash of each source image (for leakage checks);
    sources: the image file each row came from (for error messages), or a synthetic descriptor.
    duplicates: (dropped id, kept id) of byte-identical images left out when the task was built.
    """

    name: str
    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    hashes: list[str]
    sources: list[str]
    conversion: str = ""
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])


@dataclass
class Episode:
    """K-shot support and Q query of one task, as float tensors ready for a model.

    x: float32 (B, C, H, W) in [0, 1]; y: float32 (B, 1, H, W) in {0, 1}.
    """

    task: str
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    support_ids: list[str]
    query_ids: list[str]

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(
            self.task,
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.support_ids,
            self.query_ids,
        )
