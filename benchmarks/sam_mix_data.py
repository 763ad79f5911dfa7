"""Datasets and fixed splits of the SAM-Mix benchmark (benchmarks/sam_mix.py).

Split by content hash (seeded), so the same images land in the same part on every machine:
each image (BUSI) or each VOLUME (hippocampus: slices of one volume never straddle parts) gets
the rank of sha1(seed, hash); the first `test` fraction is the test set, the next `val` fraction
validation, the rest the train pool. Caps keep a seeded, hash-ordered subset of each part (CPU budget).

Two per-image labels: `present` (the structure is in the image: which images may keep a mask, the
presence gate, the FP rate) and `labels` (what the classifier is trained on). They are the same
except for ISIC-2017, where every image has a lesion (present = 1) and the classifier learns the
class table's melanoma label (read through `metaseg adapt`'s labels-CSV reader): there the presence
gate is off and the melanoma classifier's CAM, shaped by the N masks, is the prompt source.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from metaseg.data.cache import load_task
from metaseg.data.readers import list_pairs
from metaseg.data.tasks import resolve_data_root

BUSI_ABSENT = "normal"
DATASETS = {
    "BUSI": {"root": "BUSI", "options": {}},
    "Hippocampus": {"root": "MSD-Task04-Hippocampus", "options": {"label": "1,2", "empty_fraction": 1.0}},
    # cross-domain pair (polyps; neither has an image without a polyp: every presence label is 1)
    "Kvasir-SEG": {"root": "Kvasir-SEG", "options": {}},
    "CVC-ClinicDB": {"root": "CVC-ClinicDB", "options": {}},
    # every image has a lesion; image-level label = melanoma (1) vs not (0) from the class CSVs
    "ISIC-2017": {"root": "ISIC-2017-256sq", "options": {},
                  "labels_csv": ("ISIC-2017_Training_Classes.csv", "ISIC-2017_Validation_Classes.csv"),
                  "label_column": "melanoma"},
}
BENCHMARK = ("BUSI", "Hippocampus")  # the in-domain comparison of issue 11 (its Dice targets)
IN_DOMAIN = BENCHMARK + ("ISIC-2017",)  # benchmarked in-domain (ISIC: no issue target, reported)


@dataclass
class Split:
    """uint8 images (N, C, S, S), masks (N, S, S), presence labels (N,) in {0, 1} per part."""

    name: str
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    ids: dict[str, list[str]]
    labels: dict[str, np.ndarray] | None = None  # the classifier's targets where they differ from `present`

    def targets(self, part: str) -> np.ndarray:
        """The image-level labels the classifier trains on (`labels`, else `present`)."""
        return (self.labels or self.present)[part]


def _rank(key: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def split(dataset: str, size: int = 128, seed: int = 0, test: float = 0.2, val: float = 0.1,
          caps: dict[str, int] | None = None) -> Split:
    """The fixed train-pool / val / test split of one benchmark dataset (see module docstring)."""
    spec = DATASETS[dataset]
    root = resolve_data_root(required=True) / spec["root"]
    task = load_task(root, size=size, **spec["options"])
    groups = [h.split("#")[0] for h in task.hashes]  # a volume slice's hash is "<volume sha1>#z<k>"
    order = sorted(set(groups), key=lambda g: _rank(g, seed))
    n_test, n_val = int(round(test * len(order))), int(round(val * len(order)))
    part_of = {g: "test" if i < n_test else "val" if i < n_test + n_val else "pool" for i, g in enumerate(order)}
    if dataset == "BUSI":  # the image-level label is the class folder (normal = no lesion)
        by_id = {p.id: p.meta["class"] for p in list_pairs(root)}
        present = np.array([by_id[i] != BUSI_ABSENT for i in task.ids], dtype=np.int64)
    else:  # slices: does the slice contain the structure (a cheap yes/no read off the label volume)
        present = task.masks.reshape(len(task), -1).any(1).astype(np.int64)
    labels = _csv_labels(root, spec, task.ids) if "labels_csv" in spec else None
    out = Split(dataset, {}, {}, {}, {}, None if labels is None else {})
    for part in ("pool", "val", "test"):
        rows = [i for i, g in enumerate(groups) if part_of[g] == part]
        rows.sort(key=lambda i: _rank(task.hashes[i], seed))
        cap = (caps or {}).get(part)
        rows = sorted(rows[:cap] if cap else rows)
        out.images[part], out.masks[part] = task.images[rows], task.masks[rows]
        out.present[part], out.ids[part] = present[rows], [task.ids[i] for i in rows]
        if labels is not None:
            out.labels[part] = labels[rows]
    return out


def _csv_labels(root, spec: dict, ids: list[str]) -> np.ndarray:
    """Per-image classifier labels from the dataset's class CSVs (every image must have one)."""
    from metaseg.jobs.sam_mix import read_labels_csv

    table: dict[str, int] = {}
    for name in spec["labels_csv"]:
        table.update(read_labels_csv(root / name, label_column=spec["label_column"]))
    missing = [i for i in ids if i not in table]
    if missing:
        raise SystemExit(f"{spec['root']}: {len(missing)} images without a label in {spec['labels_csv']} (first {missing[0]})")
    return np.array([table[i] for i in ids], dtype=np.int64)


def labelled_subset(present: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Which N pool images keep their masks: seeded, drawn among images WITH the structure (a mask of
    an absent image teaches the segmenter nothing a presence label does not)."""
    rows = np.flatnonzero(present == 1)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, min(n, len(rows)), replace=False))


CAPS = {"pool": 120, "val": 60, "test": 60}  # CPU budget: 2 shared cores (val: image-level labels pick the presence threshold)


def encode_all(model, data: Split, batch: int = 8) -> None:
    """Fill the embedding cache for every image of the split (resumable: cached images are skipped)."""
    import torch

    for part in ("pool", "val", "test"):
        images = data.images[part]
        for start in range(0, len(images), batch):
            with torch.no_grad():
                model.embed(torch.from_numpy(images[start:start + batch]).float().div_(255.0))
            print(f"{data.name} {part}: {min(start + batch, len(images))}/{len(images)} encoded", flush=True)


if __name__ == "__main__":  # python -m benchmarks.sam_mix_data [DATASET ...]: encode the benchmark's images once
    import torch

    from metaseg.models import create_model

    torch.set_num_threads(1)
    model = create_model("medsam_lite", image_size=128).eval()
    for name in (__import__("sys").argv[1:] or BENCHMARK):
        encode_all(model, split(name, caps=CAPS))
