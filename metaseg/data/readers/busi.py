"""BUSI breast ultrasound (Dataset_BUSI_with_GT) in its official per-class layout.

    Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png
                                                  <class> (N)_mask.png      (the lesion)
                                                  <class> (N)_mask_1.png    (a second lesion, 18 images)

An image's mask is the UNION of all its mask files (a reader that took only `_mask.png` would
miss 18 lesions); the extra files travel in meta["extra_masks"] and `decode_pair` ORs them in.
The class folder is the image-level label (meta["labels"], meta["class"]), so `--category benign`
is a task of its own and SAM-Mix reads presence from it (`normal` = no lesion, empty mask).
"""
from __future__ import annotations

import re
from pathlib import Path

from metaseg.data.readers._common import image_files
from metaseg.data.types import Pair

CLASSES = ("benign", "malignant", "normal")
ABSENT_CLASS = "normal"  # the class whose images have no lesion (empty masks)
_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.I)


def _base(root: Path) -> Path | None:
    """The folder holding the class folders: root itself, or root/Dataset_BUSI_with_GT."""
    for base in (root, root / "Dataset_BUSI_with_GT"):
        if base.is_dir() and sum((base / c).is_dir() for c in CLASSES) >= 2:
            return base
    return None


def _class_pairs(base: Path, name: str) -> list[Pair]:
    files = image_files(base / name)
    masks: dict[str, list[tuple[int, Path]]] = {}
    for path in files:
        hit = _MASK.match(path.stem)
        if hit:
            masks.setdefault(hit["stem"], []).append((int(hit["k"] or 0), path))
    pairs = []
    for image in (p for p in files if not _MASK.match(p.stem)):
        found = [p for _, p in sorted(masks.get(image.stem, []))]
        meta = {"labels": (name,), "class": name}
        if found[1:]:
            meta["extra_masks"] = tuple(str(p) for p in found[1:])
        pairs.append(Pair(f"{name}/{image.stem}", image, found[0] if found else None, meta))
    return pairs


def busi(root: Path) -> list[Pair]:
    base = _base(root)
    return [] if base is None else [p for name in CLASSES for p in _class_pairs(base, name)]


def detect_busi(root: Path) -> bool:
    base = _base(root)
    return base is not None and any(_MASK.match(p.stem) for c in CLASSES for p in image_files(base / c)[:8])
