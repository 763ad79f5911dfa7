"""Generic layout: an images folder and a masks folder paired by file stem (a user's own data, no code).

Masks may carry a suffix (`_mask`, `_segmentation`, `_label`, `_gt`, ...) and another extension
than their image; subfolders are followed and become part of the id. When images and masks share
one folder (images_dir == masks_dir), files whose stem ends with a mask suffix are the masks.
"""
from __future__ import annotations

from pathlib import Path

from metaseg.data.readers._common import find_child_dir, image_files, pair_by_stem, stem_index
from metaseg.data.types import Pair
from metaseg.errors import MetasegError

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "original", "inputs", "input", "x")
MASK_DIR_NAMES = (
    "masks", "mask", "labels", "label", "annotations", "annotation", "ground truth", "groundtruth",
    "ground_truth", "gt", "segmentations", "segmentation", "y",
)
# tried in this order after the bare stem; matching is case-insensitive (so `_Segmentation`, `_GT` work too)
MASK_SUFFIXES = (
    "_mask", "_masks", "-mask", "_segmentation", "_seg", "_label", "_labels", "_gt", "_manual1",
    "_1stHO", "_lesion", "_annotation", "_anno",
)


def _resolve(root: Path, given: str | None, names: tuple[str, ...], option: str) -> Path | None:
    if given is None:
        return find_child_dir(root, names)
    folder = (root / given).resolve()
    if not folder.is_dir():
        raise MetasegError(f"option {option}: folder not found: {folder}")
    return folder


def _is_mask_name(stem: str, suffixes: tuple[str, ...]) -> bool:
    return any(stem.lower().endswith(s.lower()) for s in suffixes)


def generic(
    root: Path, images_dir: str | None = None, masks_dir: str | None = None, mask_suffix: str | None = None
) -> list[Pair]:
    """images_dir / masks_dir: folders relative to root (default: the first of images/, image/, ... and
    masks/, labels/, gt/, ...); mask_suffix: the exact mask stem suffix (default: try the common ones)."""
    images = _resolve(root, images_dir, IMAGE_DIR_NAMES, "images_dir")
    masks = _resolve(root, masks_dir, MASK_DIR_NAMES, "masks_dir")
    if images is None or masks is None:
        raise MetasegError(
            f"generic layout: no images/masks folders found in {root} "
            "(name them with --images-dir and --masks-dir, e.g. --images-dir . --masks-dir . for a flat folder)"
        )
    suffixes = (mask_suffix,) if mask_suffix is not None else MASK_SUFFIXES
    mask_files = image_files(masks, recursive=True)
    image_list = image_files(images, recursive=True)
    if images == masks:  # flat folder: the suffix tells masks from images
        mask_files = [p for p in mask_files if _is_mask_name(p.stem, suffixes)]
        image_list = [p for p in image_list if p not in set(mask_files)]
    elif masks.is_relative_to(images):  # masks/ nested inside images/: do not list masks as images
        image_list = [p for p in image_list if not p.is_relative_to(masks)]
    candidates = ("",) + suffixes if mask_suffix is None else suffixes
    return pair_by_stem(image_list, images, stem_index(mask_files, masks), lambda s: [s + c for c in candidates])


def detect_generic(root: Path) -> bool:
    return find_child_dir(root, IMAGE_DIR_NAMES) is not None and find_child_dir(root, MASK_DIR_NAMES) is not None
