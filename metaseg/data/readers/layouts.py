"""Readers for fixed public 2D layouts, each exactly as the dataset is distributed.

Every reader takes the dataset folder and returns `Pair`s sorted by id, with mask=None where the
mask is missing (so that `metaseg data check` can name the image); `detect_*` says whether a
folder looks like that layout.
"""
from __future__ import annotations

import re
from pathlib import Path

from metaseg.data.readers._common import (
    find_child_dir,
    image_files,
    pair_by_stem,
    same_stem,
    stem_index,
)
from metaseg.data.types import Pair
from metaseg.errors import MetasegError


def _has_dirs(root: Path, *names: str) -> bool:
    return all((root / n).is_dir() for n in names)


# --- Kvasir-SEG: images/<id>.jpg + masks/<id>.jpg -------------------------------------------------
def kvasir(root: Path) -> list[Pair]:
    masks = image_files(root / "masks")
    return pair_by_stem(image_files(root / "images"), root / "images", stem_index(masks, root / "masks"), same_stem)


def detect_kvasir(root: Path) -> bool:
    named = (root / "kavsir_bboxes.json").is_file() or "kvasir" in root.name.lower()
    return named and _has_dirs(root, "images", "masks")


# --- CVC-ClinicDB: Original/<n>.{png,tif} + "Ground Truth"/<n>.{png,tif} ---------------------------
CVC_MASK_DIRS = ("Ground Truth", "GroundTruth", "Ground_Truth")


def cvc_clinicdb(root: Path) -> list[Pair]:
    gt = find_child_dir(root, CVC_MASK_DIRS) or root / "Ground Truth"
    return pair_by_stem(image_files(root / "Original"), root / "Original", stem_index(image_files(gt), gt), same_stem)


def detect_cvc_clinicdb(root: Path) -> bool:
    return (root / "Original").is_dir() and find_child_dir(root, CVC_MASK_DIRS) is not None


# --- PH2: "PH2 Dataset images"/IMDn/IMDn_Dermoscopic_Image/IMDn.bmp + IMDn_lesion/IMDn_lesion.bmp ----
def _ph2_base(root: Path) -> Path | None:
    for base in (root / "PH2 Dataset images", root / "PH2Dataset" / "PH2 Dataset images", root):
        if base.is_dir() and any(base.glob("IMD*/IMD*_Dermoscopic_Image")):
            return base
    return None


def ph2(root: Path) -> list[Pair]:
    base = _ph2_base(root)
    if base is None:
        return []
    pairs = []
    for case in sorted(p for p in base.glob("IMD*") if p.is_dir()):
        images = image_files(case / f"{case.name}_Dermoscopic_Image")
        masks = image_files(case / f"{case.name}_lesion")
        if images:
            pairs.append(Pair(case.name, images[0], masks[0] if masks else None, {}))
    return pairs


def detect_ph2(root: Path) -> bool:
    return _ph2_base(root) is not None


# --- DRIVE: {training,test}/images/NN_<split>.tif + {split}/1st_manual/NN_manual1.gif ---------------
DRIVE_SPLITS = ("training", "test", "testing")


def drive(root: Path, split: str | None = None) -> list[Pair]:
    """split: 'training' or 'test' (default: both)."""
    if split is not None and split not in DRIVE_SPLITS:
        raise MetasegError(f"option split={split!r} for layout 'drive' must be one of {', '.join(DRIVE_SPLITS)}")
    pairs = []
    for name in DRIVE_SPLITS:
        folder = root / name
        if (split is None or split == name) and (folder / "images").is_dir():
            manual = folder / "1st_manual"
            masks = stem_index(image_files(manual), manual)
            pairs += pair_by_stem(
                image_files(folder / "images"),
                folder / "images",
                masks,
                lambda stem: [f"{stem.split('_')[0]}_manual1"],
                {"split": name},
            )
    return pairs


def detect_drive(root: Path) -> bool:
    return any(_has_dirs(root / s, "images", "1st_manual") for s in DRIVE_SPLITS)


# --- CHASE_DB1 (flat): Image_NNX.jpg + Image_NNX_1stHO.png (2nd observer: _2ndHO) --------------------
def chasedb1(root: Path, observer: int = 1) -> list[Pair]:
    """observer: 1 (masks *_1stHO, default) or 2 (*_2ndHO)."""
    suffix = {1: "_1stHO", 2: "_2ndHO"}.get(int(observer))
    if suffix is None:
        raise MetasegError(f"option observer={observer!r} for layout 'chasedb1' must be 1 or 2")
    files = image_files(root)
    images = [p for p in files if not re.search(r"_(1st|2nd)HO$", p.stem)]
    return pair_by_stem(images, root, stem_index(files, root), lambda stem: [stem + suffix])


def detect_chasedb1(root: Path) -> bool:
    return root.is_dir() and any(root.glob("*_1stHO.*"))


# --- ISBI 2012 membranes: [split/]image/N.png + [split/]label/N.png; foreground = membrane = 0 in file -
def _membrane_splits(root: Path) -> list[Path]:
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [c for c in candidates if _has_dirs(c, "image", "label")]


def membrane(root: Path) -> list[Pair]:
    splits = _membrane_splits(root)
    pairs = []
    for folder in splits:
        label = folder / "label"
        found = pair_by_stem(image_files(folder / "image"), folder / "image", stem_index(image_files(label), label), same_stem)
        prefix = f"{folder.name}/" if len(splits) > 1 else ""
        pairs += [Pair(prefix + p.id, p.image, p.mask, {"invert_mask": True}) for p in found]
    return pairs


def detect_membrane(root: Path) -> bool:
    """Needs the dataset's name in the path too: a user's own image/ + label/ folder must not be inverted."""
    named = any(k in part.lower() for part in root.resolve().parts[-3:] for k in ("membrane", "isbi"))
    return named and bool(_membrane_splits(root))


# --- Shenzhen/Montgomery chest X-ray lungs: cxr/<name>.png + masks/<name>.png (NLM: CXR_png + _mask) ---
def cxr_lungs(root: Path) -> list[Pair]:
    images = find_child_dir(root, ("cxr", "CXR_png")) or root / "cxr"
    masks = root / "masks"
    return pair_by_stem(image_files(images), images, stem_index(image_files(masks), masks), lambda s: [s, s + "_mask"])


def detect_cxr_lungs(root: Path) -> bool:
    return find_child_dir(root, ("cxr", "CXR_png")) is not None and (root / "masks").is_dir()
