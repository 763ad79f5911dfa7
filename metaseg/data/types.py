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
    The sampler returns the subclass `PixelEpisode`, which makes these tensors when first used.
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


class PixelEpisode(Episode):
    """An Episode over the cache's uint8 pixels whose float32 tensors are made only when first
    needed: on first access to support_x (etc.), or by `to(device)` on that device.

    Why: gathering the uint8 rows is ~5x cheaper than the float conversion on a CPU core, so the
    sampler (and a DataLoader worker) does only that, hands 4x fewer bytes to the main process,
    and on a GPU the conversion runs there. The values are the same either way: x = pixels / 255
    (`pixels_to_float`), y = mask.
    """

    def __init__(self, task: str, images: torch.Tensor, masks: torch.Tensor, n_support: int,
                 support_ids: list[str], query_ids: list[str]) -> None:
        """uint8 images (B, C, H, W) and masks (B, H, W), the n_support support rows first."""
        self.task, self.support_ids, self.query_ids = task, support_ids, query_ids
        self._pixels: tuple[torch.Tensor, torch.Tensor, int] | None = (images, masks, n_support)
        self._tensors: list[torch.Tensor] | None = None

    @property
    def pixels(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """(uint8 images, uint8 masks, n_support) until the float tensors are made, then None."""
        return self._pixels

    def _floats(self) -> list[torch.Tensor]:
        if self._tensors is None:
            images, masks, k = self._pixels
            x, y = pixels_to_float(images, masks)
            self._tensors, self._pixels = [x[:k], y[:k], x[k:], y[k:]], None
        return self._tensors

    def _set(self, i: int, value: torch.Tensor) -> None:
        self._floats()[i] = value

    support_x = property(lambda self: self._floats()[0], lambda self, v: self._set(0, v))
    support_y = property(lambda self: self._floats()[1], lambda self, v: self._set(1, v))
    query_x = property(lambda self: self._floats()[2], lambda self, v: self._set(2, v))
    query_y = property(lambda self: self._floats()[3], lambda self, v: self._set(3, v))

    def to(self, device: torch.device | str) -> Episode:
        if self._pixels is None:
            return super().to(device)
        images, masks, k = self._pixels  # move the uint8 pixels, convert on the device
        x, y = pixels_to_float(images.to(device), masks.to(device))
        return Episode(self.task, x[:k], y[:k], x[k:], y[k:], self.support_ids, self.query_ids)

    def __repr__(self) -> str:
        shape = tuple(self._pixels[0].shape) if self._pixels is not None else tuple(self._tensors[0].shape)
        return f"PixelEpisode(task={self.task!r}, support={len(self.support_ids)}, query={len(self.query_ids)}, images={shape})"


def pixels_to_float(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, C, H, W) and masks (B, H, W) -> float32 x / 255 and y (B, 1, H, W).

    Into preallocated float tensors (copy_ converts, div_ scales in place): no temporaries; the
    fastest of the variants measured on one core (numpy's casting divide was no faster, a
    mixed-dtype torch.div(u8, 255, out=f32) 2x slower)."""
    x = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    y = torch.empty((masks.shape[0], 1, *masks.shape[1:]), dtype=torch.float32, device=masks.device)
    x.copy_(images)
    y[:, 0].copy_(masks)
    return x.div_(255.0), y
