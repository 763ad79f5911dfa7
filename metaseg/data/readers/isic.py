"""ISIC 2016/2017/2018 Task 1 (lesion segmentation) with optional class tables.

Layouts handled (all may sit side by side in one folder):
  2016: ISBI2016_ISIC_Part1_Training_Data/ISIC_n.jpg + ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_n_Segmentation.png
  2017: ISIC-2017_Training_Data/ISIC_n.jpg + ISIC-2017_Training_Part1_GroundTruth/ISIC_n_segmentation.png
  2018: ISIC2018_Task1-2_Training_Input/ISIC_n.jpg + ISIC2018_Task1_Training_GroundTruth/ISIC_n_segmentation.png
Class tables: every *.csv in the folder whose first column holds ISIC ids, e.g. the official
ISIC-2017_Training_Part3_GroundTruth.csv (image_id, melanoma, seborrheic_keratosis), a melanoma-only
table (image_id, melanoma), ISIC 2018 Task 3 one-hot (image, MEL, NV, ...) or ISIC 2016 (id, benign|malignant).
Each pair gets meta["labels"] (positive class names, lower case) and meta["class"] (one readable name).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from metaseg.data.readers._common import image_files, pair_by_stem, stem_index
from metaseg.data.types import Pair
from metaseg.errors import MetasegError

ISIC_ID = re.compile(r"^ISIC_\d+$")
SPLITS = ("Training", "Validation", "Test")


def _data_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and re.search(r"_(Data|Input)$", p.name))


def _mask_dirs(root: Path) -> list[Path]:
    """Segmentation ground truth only (not the Part2/Task2 attribute or Part3/Task3 class folders)."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and "GroundTruth" in p.name and not re.search(r"Part[23]|Task[23]", p.name)
    )


def _split_of(folder: Path) -> str:
    return next((s.lower() for s in SPLITS if s.lower() in folder.name.lower()), "all")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def read_class_tables(paths: list[Path]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """ISIC id -> positive class names (lower case), and the class column names seen (for 'non-<x>' naming)."""
    labels: dict[str, tuple[str, ...]] = {}
    columns: list[str] = []
    for path in paths:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r]
        if not rows:
            continue
        header = None if ISIC_ID.match(rows[0][0].strip()) else [h.strip().lower() for h in rows[0]]
        body = rows if header is None else rows[1:]
        if not body or not ISIC_ID.match(body[0][0].strip()):
            continue  # not a class table
        if header:
            columns += [c for c in header[1:] if c not in columns]
        for row in body:
            values = [v.strip() for v in row[1:]]
            if header and all(_number(v) is not None for v in values):  # one-hot / 0-1 columns
                labels[row[0].strip()] = tuple(c for c, v in zip(header[1:], values) if _number(v) >= 0.5)
            else:  # a label string per row (ISIC 2016: benign / malignant)
                labels[row[0].strip()] = tuple(v.lower() for v in values if v)
    return labels, columns


def _class_name(positive: tuple[str, ...], columns: list[str]) -> str:
    if positive:
        return "+".join(positive)
    return f"non-{columns[0]}" if len(columns) == 1 else "none"


def isic(root: Path, split: str | None = None, classes_csv: str | None = None) -> list[Pair]:
    """split: keep only folders whose name contains it (e.g. 'Training'); classes_csv: an extra class table."""
    masks = {}
    for folder in _mask_dirs(root):
        masks.update(stem_index(image_files(folder), folder))
    tables = sorted(root.glob("*.csv"))
    if classes_csv:
        extra = Path(classes_csv) if Path(classes_csv).is_absolute() else root / classes_csv
        if not extra.is_file():
            raise MetasegError(f"option classes_csv: file not found: {extra}")
        tables.append(extra)
    labels, columns = read_class_tables(tables)
    pairs = []
    for folder in _data_dirs(root):
        if split and split.lower() not in folder.name.lower():
            continue
        images = [p for p in image_files(folder) if ISIC_ID.match(p.stem)]  # skips 2017 *_superpixels.png
        for p in pair_by_stem(images, folder, masks, lambda s: [s + "_segmentation", s + "_Segmentation"]):
            meta = {"split": _split_of(folder)}
            if p.id in labels:
                meta.update(labels=labels[p.id], **{"class": _class_name(labels[p.id], columns)})
            pairs.append(Pair(p.id, p.image, p.mask, meta))
    return pairs


def detect_isic(root: Path) -> bool:
    return root.is_dir() and bool(_data_dirs(root)) and bool(_mask_dirs(root)) and any(
        ISIC_ID.match(p.stem) for d in _data_dirs(root) for p in image_files(d)[:5]
    )
