"""`metaseg adapt --method sam_mix`: K masks plus image-level labels of a dataset -> SAM-Mix -> masks
for every image of --images, with no prompt from the user.

Image-level labels ("is the lesion / structure in this image?") come from `--labels` (a CSV of
id,label with label 1/0, yes/no, present/absent, or a class name, where `--absent-class` names the
class without the structure) or, without it, from the dataset's class folders (BUSI: benign /
malignant = present, normal = absent). K of the present images keep their masks and train the
segmentation branch. The presence threshold (below it: empty mask) is `--presence-threshold`, or
by default chosen like the benchmark does: a seeded, class-stratified `--val-fraction` of the
labelled images without a mask is held out of classifier training and the threshold with the best
balanced accuracy on their labels is kept. Every other labelled image trains the classifier.
Outputs as `metaseg adapt` (masks/, overlays/, predictions.csv), plus each image's presence probability.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from metaseg.errors import MetasegError, at_least
from metaseg.metrics import mean_ci95, mean_ci_text

TRUE = {"1", "yes", "true", "present", "positive"}
FALSE = {"0", "no", "false", "absent", "negative"}
FIELDS = ("id", "image", "width", "height", "presence", "mask", "overlay", "ground_truth", "in_support", "dice", "iou")


def read_labels_csv(path: str | Path, absent_class: str) -> dict[str, int]:
    """id -> 1 (present) / 0 (absent) from a two-column CSV (a header row is optional)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetasegError(f"--labels: no such file {path}")
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and r[0].strip()]
    if rows and rows[0][0].strip().lower() in ("id", "image", "image_id", "name"):
        rows = rows[1:]
    labels = {}
    for n, row in enumerate(rows, 1):
        if len(row) < 2:
            raise MetasegError(f"--labels {path}: row {n} needs two columns id,label, got {row}")
        value = row[1].strip().lower()
        labels[row[0].strip()] = 1 if value in TRUE else 0 if value in FALSE or value == absent_class.lower() else 1
    if not labels:
        raise MetasegError(f"--labels {path}: no rows")
    return labels


def dataset_labels(root: Path, layout: str | None, absent_class: str) -> dict[str, int]:
    """id -> presence from the class folders / class tables the reader attaches (meta['class'])."""
    from metaseg.data.readers import list_pairs

    pairs = [p for p in list_pairs(root, layout) if "class" in p.meta]
    if not pairs:
        raise MetasegError(f"--support {root}: no class folders or class table to read image-level labels from; "
                           "pass --labels a CSV of id,label")
    return {p.id: int(str(p.meta["class"]).lower() != absent_class.lower()) for p in pairs}


def training_rows(ids: list[str], masks: np.ndarray, labels: dict[str, int], shots: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labelled rows, their presence, K mask rows drawn among present images with a non-empty mask)."""
    unknown = sorted(set(labels) - set(ids))
    if unknown and len(unknown) == len(labels):
        raise MetasegError(f"--labels: none of its ids is an image of --support (first: {unknown[0]!r}; ids look like {ids[0]!r})")
    rows = np.array([i for i, name in enumerate(ids) if name in labels], dtype=np.int64)
    present = np.array([labels[ids[i]] for i in rows], dtype=np.int64)
    candidates = np.array([i for i, p in zip(rows, present) if p == 1 and masks[i].any()], dtype=np.int64)
    at_least("--shots", shots, 1)
    if len(candidates) < shots:
        raise MetasegError(f"--support has {len(candidates)} labelled images with a lesion mask, fewer than --shots {shots}")
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, shots, replace=False))
    return rows, present, chosen


def validation_rows(rows: np.ndarray, present: np.ndarray, chosen: np.ndarray, fraction: float,
                    seed: int) -> np.ndarray | None:
    """Positions in `rows` held out to choose the presence threshold: `fraction` of each class's
    labelled images that have no mask in use (at least one per class), seeded; None when a class
    has fewer than 2 such images (nothing left to both train and choose with)."""
    rng = np.random.default_rng(seed + 1)
    free = ~np.isin(rows, chosen)
    held = []
    for value in (0, 1):
        candidates = np.flatnonzero(free & (present == value))
        if len(candidates) < 2:
            return None
        k = min(len(candidates) - 1, max(1, int(round(fraction * len(candidates)))))  # keep one to train on
        held.append(rng.choice(candidates, k, replace=False))
    return np.sort(np.concatenate(held))


def run_sam_mix_adapt(
    support: str | Path, images: str | Path, out: str | Path, shots: int = 5, labels: str | None = None,
    absent_class: str = "normal", steps: int | None = None, warmup: int | None = None, layout: str | None = None,
    seed: int = 0, size: int | None = None, prompts: str = "box+dense", cam_threshold: float | None = None,
    presence_threshold: float | None = None, val_fraction: float = 0.2,
    overwrite: bool = False, cache_dir: str | None = None, echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train SAM-Mix on `support` (labels + K masks), segment every image of `images` into `out`.

    cam_threshold None: chosen by box fit on the K masks; presence_threshold None: chosen on a
    held-out `val_fraction` of the labels (see the module docstring); 0 turns the gate off, and
    then labels may all be "present" (a dataset without empty images)."""
    from metaseg.data.cache import load_task
    from metaseg.jobs import checks
    from metaseg.jobs.adapt import OUTPUTS, list_query_images, to_input, write_predictions
    from metaseg.models.sam_mix import create_sam_mix
    from metaseg.outputs import OutputFolder
    from metaseg.training.sam_mix import SamMixBudget, fit_sam_mix

    for option, value, minimum in (("--shots", shots, 1), ("--steps", steps, 0), ("--warmup", warmup, 0), ("--seed", seed, 0)):
        checks.at_least(option, value, minimum)
    checks.image_size("--size", size)
    checks.unit_interval("--presence-threshold", presence_threshold)
    checks.unit_interval("--cam-threshold", cam_threshold, open_ends=True)
    checks.unit_interval("--val-fraction", val_fraction, open_ends=True)
    folder = OutputFolder(out, OUTPUTS, overwrite).check()  # created only once the inputs are valid
    support_path = checks.existing_folder("--support", support)
    queries, description = list_query_images(images, layout)  # --images checked before any training
    size = int(size or 128)
    label_map = read_labels_csv(labels, absent_class) if labels else dataset_labels(support_path, layout, absent_class)
    task = load_task(support_path, layout=layout, size=size, cache_dir=cache_dir)
    rows, present, chosen = training_rows(task.ids, task.masks, label_map, shots, seed)
    held = None if presence_threshold is not None else validation_rows(rows, present, chosen, val_fraction, seed)
    if presence_threshold is None and held is None:
        echo("sam_mix: too few labelled images without a mask in one class to hold any out: presence threshold 0.5 "
             "(set --presence-threshold)")
    train = np.setdiff1d(np.arange(len(rows)), held if held is not None else [])
    torch.manual_seed(seed)
    model = create_sam_mix(prompts=prompts, cam_threshold=cam_threshold or 0.5, image_size=size, seed=seed,
                           presence_threshold=0.5 if presence_threshold is None else presence_threshold)
    budget = SamMixBudget(**{k: v for k, v in (("steps", steps), ("warmup", warmup)) if v is not None},
                          auto_cam_threshold=cam_threshold is None, absent_labels=presence_threshold != 0)
    echo(f"sam_mix: {len(rows)} image-level labels ({int(present.sum())} present), {shots} masks "
         f"({', '.join(task.ids[i] for i in chosen)}), {budget.warmup} + {budget.steps} steps at {size} px"
         + (f"; {len(held)} labelled images held out to choose the presence threshold" if held is not None else ""))
    val = {} if held is None else {"val_images": task.images[rows[held]], "val_present": present[held]}
    fit_sam_mix(model, task.images[rows[train]], present[train], task.images[chosen], task.masks[chosen], budget,
                seed=seed, **val)
    echo(f"sam_mix: presence threshold {model.presence_threshold:.3f} "
         f"({'chosen on the held-out labels' if held is not None else 'fixed'}), CAM threshold {model.cam_threshold:.2f} "
         f"({'chosen on the K masks' if cam_threshold is None else 'fixed'})")
    support_hashes = {task.hashes[i] for i in chosen}

    echo(f"--images {images}: {description}")

    def predict(image: np.ndarray, path: Path, sha: str) -> tuple[np.ndarray, dict[str, str]]:
        with torch.no_grad():
            result = model.outputs(to_input(image, size, torch.device("cpu")))
            logits = F.interpolate(result["logits"], size=image.shape[:2], mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).numpy(), {"presence": f"{float(torch.sigmoid(result['presence'][0])):.4f}"}

    records, out_dir = write_predictions(folder, queries, predict, support_hashes, FIELDS)
    scored = [float(r["dice"]) for r in records if r["dice"] != "" and not r["in_support"]]
    summary: dict[str, Any] = {"method": "sam_mix", "images": len(records), "scored": len(scored), "out": str(out_dir),
                               "presence_threshold": model.presence_threshold, "cam_threshold": model.cam_threshold}
    echo(f"wrote {len(records)} masks to {out_dir / 'masks'}, overlays to {out_dir / 'overlays'}, scores to {out_dir / 'predictions.csv'}")
    if scored:
        summary["dice"], summary["dice_ci95"] = mean_ci95(scored)
        echo(f"Dice {mean_ci_text(summary['dice'], summary['dice_ci95'], len(scored))} (mean ± 95% CI over {len(scored)} images "
             "with ground truth, support images left out; empty masks count as the metrics module scores them)")
    return summary
