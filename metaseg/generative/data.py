"""Joint samples: a dataset's (image, mask) pairs as one (C+1)-channel tensor in [-1, 1], and the
seeded split that keeps held-out images (the audit's reference, the segmenters' real test set)
away from the generator.

The split is by content: each source file's sha1 (a volume's, for MSD slices, so slices of one
volume never straddle the split) is hashed with the seed, the ordering of those keys decides.
Renaming or reordering files does not move an image between splits.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError


def load_dataset(dataset: str | Path, size: int, layout: str | None = None, cache_dir: str | None = None,
                 option: str = "--dataset", reader_options: dict[str, Any] | None = None) -> TaskArrays:
    """Any readable dataset folder at size x size (through the shared cache); one-line errors name the option.
    `reader_options` go to the reader (e.g. {"label": "1,2"} for an MSD task); see `check_single_mask`."""
    from metaseg.data.cache import load_task

    path = Path(dataset).expanduser()
    if not path.is_dir():
        raise MetasegError(f"{option}: folder not found: {path}")
    options = dict(reader_options or {})
    try:
        check_single_mask(path, layout, options, option)
        return load_task(path, layout=layout, size=size, cache_dir=cache_dir, **options)
    except MetasegError as exc:
        text = str(exc)
        raise MetasegError(text if text.startswith(option) else f"{option}: {text}") from None


def check_single_mask(path: Path, layout: str | None, options: dict[str, Any], option: str = "--dataset") -> None:
    """The generators model ONE binary mask. An MSD task whose dataset.json names several foreground
    labels (Task04 Hippocampus: 1 anterior, 2 posterior) would be read as label 1 only by default,
    which silently drops the rest of the structure: refuse it unless the labels are chosen
    (`-o label=1,2` for their union, the binary mask this study uses, or `-o label=1`)."""
    from metaseg.data.readers import detect_layout
    from metaseg.data.readers.msd import foreground_labels

    if "label" in options or (layout or detect_layout(path)) != "msd":
        return
    labels = foreground_labels(path)
    if len(labels) > 1:
        named = ", ".join(f"{k} {v}" for k, v in labels.items())
        union = ",".join(str(k) for k in labels)
        raise MetasegError(f"{option} {path}: dataset.json names {len(labels)} foreground labels ({named}) and the generators "
                           f"model one binary mask; pass -o label={union} (their union) or -o label={next(iter(labels))} (one of them)")


def group_key(content_hash: str) -> str:
    """The source file of a row: a volume slice's hash is '<file sha1>#z12'."""
    return content_hash.split("#", 1)[0]


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices the generator (and the real-data segmenter) train on
    heldout: np.ndarray  # never seen by the generator: audit reference and real test set
    order: list[int] = field(default_factory=list)  # every row in the seeded hash order (GenSeg's train/val/test)


def split_by_hash(hashes: list[str], heldout_fraction: float = 0.2, n_train: int | None = None, seed: int = 0) -> Split:
    """Held-out = the first `heldout_fraction` of source files in seeded hash order; train = the next
    `n_train` rows (all the rest by default). Deterministic for a given seed and file contents."""
    if not 0 <= heldout_fraction < 1:
        raise MetasegError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}")
    groups = sorted({group_key(h) for h in hashes}, key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
    n_held = int(round(heldout_fraction * len(groups)))
    held_groups = set(groups[:n_held])
    rank = {g: i for i, g in enumerate(groups)}
    order = sorted(range(len(hashes)), key=lambda i: (rank[group_key(hashes[i])], hashes[i]))
    heldout = [i for i in order if group_key(hashes[i]) in held_groups]
    train = [i for i in order if group_key(hashes[i]) not in held_groups]
    if n_train is not None:
        if n_train < 1 or n_train > len(train):
            raise MetasegError(f"--n-train must be between 1 and {len(train)} (the images left after the held-out split), got {n_train}")
        train = train[:n_train]
    if not train:
        raise MetasegError("no training image left after the held-out split (lower --heldout-fraction)")
    return Split(np.array(sorted(train), dtype=np.int64), np.array(sorted(heldout), dtype=np.int64), order)


def to_joint(images: np.ndarray, masks: np.ndarray) -> torch.Tensor:
    """uint8 images (N, C, H, W) and {0,1} masks (N, H, W) -> float (N, C+1, H, W) in [-1, 1]."""
    x = torch.from_numpy(images).float().div(127.5).sub(1.0)
    m = torch.from_numpy(masks).float().mul(2.0).sub(1.0).unsqueeze(1)
    return torch.cat([x, m], dim=1)


def from_joint(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, C+1, H, W) in [-1, 1] -> uint8 images (N, C, H, W) and masks (N, H, W) thresholded to {0, 1}."""
    x = x.detach().float().cpu()
    images = ((x[:, :-1].clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    masks = (x[:, -1] > 0).to(torch.uint8).numpy()
    return images, masks
