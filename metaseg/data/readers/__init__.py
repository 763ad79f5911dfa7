"""Registry of dataset layouts: layout name -> reader listing (image, mask) `Pair`s as distributed.

`list_pairs(root, layout=None, category=None, **options)` lists pairs (detecting the layout when
none is given); `detect_layout(root)` picks a layout from the folder structure. A layout is
detected by the first entry of `LAYOUTS` (in order: most specific first, `generic` last) whose
`detect` accepts the folder, so detection is deterministic.
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from metaseg.data.readers import busi, generic, isic, layouts, msd
from metaseg.data.readers._common import IMAGE_SUFFIXES, image_files, rel_stem  # public: jobs list user folders with them
from metaseg.data.types import Pair
from metaseg.errors import MetasegError, option


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    read: Callable[..., list[Pair]]
    detect: Callable[[Path], bool]

    @property
    def options(self) -> list[str]:
        return list(inspect.signature(self.read).parameters)[1:]


_ALL = [
    Layout("msd", "Medical Segmentation Decathlon: imagesTr/*.nii.gz + labelsTr/ + dataset.json, as 2D slices", msd.msd, msd.detect_msd),
    Layout("ph2", "PH2 dermoscopy: 'PH2 Dataset images'/IMDn/IMDn_Dermoscopic_Image/IMDn.bmp + IMDn_lesion/", layouts.ph2, layouts.detect_ph2),
    Layout("busi", "BUSI breast ultrasound: [Dataset_BUSI_with_GT/]{benign,malignant,normal}/<class> (N).png + _mask[_k].png (union)", busi.busi, busi.detect_busi),
    Layout("isic", "ISIC 2016/2017/2018 Task 1: *_Data/ISIC_n.jpg + *_GroundTruth/ISIC_n_segmentation.png (+ class CSV)", isic.isic, isic.detect_isic),
    Layout("drive", "DRIVE retina: {training,test}/images/*.tif + 1st_manual/NN_manual1.gif", layouts.drive, layouts.detect_drive),
    Layout("chasedb1", "CHASE_DB1 retina (flat): Image_NNX.jpg + Image_NNX_1stHO.png", layouts.chasedb1, layouts.detect_chasedb1),
    Layout("cvc-clinicdb", "CVC-ClinicDB polyps: Original/ + 'Ground Truth'/ (PNG or TIFF)", layouts.cvc_clinicdb, layouts.detect_cvc_clinicdb),
    Layout("kvasir", "Kvasir-SEG polyps: images/*.jpg + masks/*.jpg", layouts.kvasir, layouts.detect_kvasir),
    Layout("membrane", "ISBI 2012 EM membranes: [train/]image/ + label/ (membrane = 0 in file = foreground)", layouts.membrane, layouts.detect_membrane),
    Layout("cxr-lungs", "Shenzhen/Montgomery chest X-ray lungs: cxr/ (or CXR_png/) + masks/", layouts.cxr_lungs, layouts.detect_cxr_lungs),
    Layout("generic", "your own data: an images folder + a masks folder paired by stem (mask suffixes tolerated)", generic.generic, generic.detect_generic),
]
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in _ALL}


def _existing_dir(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MetasegError(f"dataset folder not found: {path}")
    return path.resolve()


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise MetasegError(f"unknown layout {name!r}; known layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def detect_layout(root: str | Path) -> str:
    """The first layout (in `LAYOUTS` order) that recognises the folder structure of `root`."""
    path = _existing_dir(root)
    for layout in LAYOUTS.values():
        if layout.detect(path):
            return layout.name
    layout, folders = option("layout"), [o for o in (option("images_dir"), option("masks_dir")) if o]
    generic = "generic needs an images/ and a masks/ folder" + (f", or {'/'.join(folders)}" if len(folders) == 2 else "")
    raise MetasegError(
        f"cannot detect the dataset layout of {path}" + (f"; set {layout}" if layout else "")
        + f"; known layouts: {', '.join(LAYOUTS)} ({generic})"
    )


def matches_category(meta: dict[str, Any], category: str) -> bool:
    """`category` is a positive class ('melanoma') or 'non-<class>' (every labelled pair without it)."""
    if "labels" not in meta:
        return False
    wanted = category.lower()
    if wanted.startswith("non-"):
        return wanted[4:] not in meta["labels"]
    return wanted in meta["labels"]


def _filter_category(pairs: list[Pair], category: str, where: str) -> list[Pair]:
    labelled = [p for p in pairs if "labels" in p.meta]
    if not labelled:
        raise MetasegError(f"category {category!r} asked for, but {where} has no class table for its images")
    kept = [p for p in labelled if matches_category(p.meta, category)]
    if not kept:
        seen = Counter(label for p in labelled for label in p.meta["labels"])
        raise MetasegError(f"no image of category {category!r} in {where}; categories: {', '.join(sorted(seen))} (or non-<name>)")
    return kept


def list_pairs(root: str | Path, layout: str | None = None, category: str | None = None, **options: Any) -> list[Pair]:
    """All (image, mask) pairs of the dataset at `root`, sorted by id; mask is None where it is missing."""
    path = _existing_dir(root)
    spec = get_layout(layout or detect_layout(path))
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise MetasegError(f"unknown option {unknown[0]!r} for layout {spec.name!r} (accepted: {accepted})")
    pairs = sorted(spec.read(path, **options), key=lambda p: p.id)
    where = f"{path} (layout {spec.name})"
    if not pairs:
        raise MetasegError(f"no images found in {where}; expected {spec.description}")
    duplicates = [i for i, n in Counter(p.id for p in pairs).items() if n > 1]
    if duplicates:
        dup = [str(p.image) for p in pairs if p.id == duplicates[0]]
        raise MetasegError(f"two images share the id {duplicates[0]!r} in {where}: {' and '.join(dup)}")
    return _filter_category(pairs, category, where) if category else pairs
