"""`metaseg adapt --method sam_mix`: K masks plus image-level labels of a dataset -> SAM-Mix -> masks
for every image of --images, with no prompt from the user.

Image-level labels ("is the lesion / structure in this image?") come from `--labels` (a CSV with
an id or file-name column and a label column, `--id-column` / `--label-column` naming them by
header; label 1/0, a number (>= 0.5: 1), yes/no, present/absent, or a class name, where
`--absent-class` names the class without the structure) or, without it, from the dataset's class
folders (BUSI: benign / malignant = present, normal = absent). A class label rather than presence
(ISIC-2017's melanoma column: every image has a lesion) is used with `--presence-threshold 0`: the
classifier learns the class, its CAM still gives the prompts, and no image is gated to empty.
K of the labelled images with a non-empty mask keep their masks and train the segmentation branch. The presence threshold (below it: empty mask) is `--presence-threshold`, or
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
PROMPTER = "cam_prompter.pt"  # the trained head as a box-prompt source (--cam-prompts of adapt / evaluate)
FIELDS = ("id", "image", "width", "height", "presence", "mask", "overlay", "ground_truth", "in_support", "dice", "iou")


ID_COLUMNS = ("id", "image", "image_id", "image_name", "filename", "file", "name", "path")


def _label_value(value: str, absent_class: str, where: str) -> int:
    """1 (present) / 0 (absent) from a cell: yes/no words, a number (>= 0.5: present; e.g. ISIC's
    0.0/1.0 columns), or a class name (absent iff it is `absent_class`)."""
    text = value.strip().lower()
    if not text:
        raise MetasegError(f"{where}: empty label")
    if text in TRUE:
        return 1
    if text in FALSE or (absent_class and text == absent_class.lower()):
        return 0
    try:
        number = float(text)
    except ValueError:
        return 1  # a class name other than --absent-class
    if not 0.0 <= number <= 1.0:
        raise MetasegError(f"{where}: numeric label {value!r} is not in [0, 1]")
    return int(number >= 0.5)


def _column(header: list[str], name: str | None, option: str, path: Path) -> int | None:
    if name is None:
        return None
    lower = [h.strip().lower() for h in header]
    if name.strip().lower() not in lower:
        raise MetasegError(f"--labels {path}: no column {name!r} for {option} (columns: {', '.join(header)})")
    return lower.index(name.strip().lower())


def label_key(name: str) -> str:
    """An image reference reduced to its file stem (folders and image extension dropped), so that a
    CSV naming files ("benign (1).png", "imgs/ISIC_0000000.jpg") matches ids ("benign/benign (1)")."""
    from metaseg.data.readers import IMAGE_SUFFIXES

    name = name.strip().replace("\\", "/")
    tail = name.rsplit("/", 1)[-1]
    stem, dot, ext = tail.rpartition(".")
    return stem if dot and stem and "." + ext.lower() in IMAGE_SUFFIXES else tail


def read_labels_csv(path: str | Path, absent_class: str = "", label_column: str | None = None,
                    id_column: str | None = None) -> dict[str, int]:
    """id -> 1 (present) / 0 (absent) from a labels CSV: an id / file-name column and a label column.

    Why generic: class tables come in many shapes (ISIC's image_id,melanoma with 0.0/1.0; a
    filename,diagnosis export). A header row is read when its first cell is an id-like name or a
    column is named; `label_column` / `id_column` pick columns by header name (default: the first
    id-like column, else the first; the label column is the other one of a two-column table).
    Every malformed file is a one-line MetasegError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetasegError(f"--labels: no such file {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise MetasegError(f"--labels {path}: not a readable CSV ({type(err).__name__}: {err})") from None
    if not rows:
        raise MetasegError(f"--labels {path}: no rows")
    has_header = rows[0][0].strip().lower() in ID_COLUMNS or label_column is not None or id_column is not None
    header = [h.strip() for h in rows[0]] if has_header else [f"column {i + 1}" for i in range(len(rows[0]))]
    body = rows[1:] if has_header else rows
    lower = [h.lower() for h in header]
    id_at = _column(header, id_column, "--id-column", path)
    if id_at is None:
        id_at = next((i for i, h in enumerate(lower) if h in ID_COLUMNS), 0)
    label_at = _column(header, label_column, "--label-column", path)
    if label_at is None:
        others = [i for i in range(len(header)) if i != id_at]
        if len(others) != 1:
            raise MetasegError(f"--labels {path}: {len(header)} columns ({', '.join(header)}); name the label one "
                               "with --label-column" if others else f"--labels {path}: needs two columns id,label, got {header}")
        label_at = others[0]
    if label_at == id_at:
        raise MetasegError(f"--labels {path}: the label column {header[label_at]!r} is also the id column")
    labels: dict[str, int] = {}
    for n, row in enumerate(body, 2 if has_header else 1):
        where = f"--labels {path} line {n}"
        if len(row) <= max(id_at, label_at):
            raise MetasegError(f"{where}: {len(row)} columns, expected at least {max(id_at, label_at) + 1}")
        labels[row[id_at].strip()] = _label_value(row[label_at], absent_class, where)
    if not labels:
        raise MetasegError(f"--labels {path}: a header but no rows")
    return labels


def dataset_labels(root: Path, layout: str | None, absent_class: str) -> dict[str, int]:
    """id -> presence from the class folders / class tables the reader attaches (meta['class'])."""
    from metaseg.data.readers import list_pairs

    pairs = [p for p in list_pairs(root, layout) if "class" in p.meta]
    if not pairs:
        raise MetasegError(f"--support {root}: no class folders or class table to read image-level labels from; "
                           "pass --labels a CSV of id,label")
    return {p.id: int(str(p.meta["class"]).lower() != absent_class.lower()) for p in pairs}


def match_labels(labels: dict[str, int], ids: list[str]) -> dict[str, int]:
    """The labels keyed by dataset id: a CSV key that is an id is used as is, else it matches the
    one id with the same file stem (label_key); a stem shared by several ids matches none."""
    known = set(ids)
    by_stem: dict[str, list[str]] = {}
    for i in ids:
        by_stem.setdefault(label_key(i), []).append(i)
    out: dict[str, int] = {}
    for key, value in labels.items():
        hits = [key] if key in known else by_stem.get(label_key(key), [])
        if len(hits) == 1:
            out.setdefault(hits[0], value)
    return out


def training_rows(ids: list[str], masks: np.ndarray, given: dict[str, int], shots: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labelled rows, their label, K mask rows drawn among labelled images with a non-empty mask)."""
    labels = match_labels(given, ids)
    if not labels:
        unknown = sorted(given)
        raise MetasegError(f"--labels: none of its ids is an image of --support (first: {unknown[0]!r}; ids look like {ids[0]!r})")
    rows = np.array([i for i, name in enumerate(ids) if name in labels], dtype=np.int64)
    present = np.array([labels[ids[i]] for i in rows], dtype=np.int64)
    # every labelled image with a non-empty mask, whatever its label: with presence labels an absent
    # image has an empty mask anyway; with class labels (ISIC: melanoma or not) both classes have lesions
    candidates = np.array([i for i in rows if masks[i].any()], dtype=np.int64)
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
    absent_class: str = "normal", label_column: str | None = None, id_column: str | None = None, steps: int | None = None, warmup: int | None = None, layout: str | None = None,
    seed: int = 0, size: int | None = None, prompts: str = "box+dense", cam_threshold: float | None = None,
    presence_threshold: float | None = None, val_fraction: float = 0.2, refine: int = 0,
    overwrite: bool = False, cache_dir: str | None = None, echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train SAM-Mix on `support` (labels + K masks), segment every image of `images` into `out`.

    cam_threshold None: models.sam_mix.CAM_THRESHOLD (0.7, chosen on validation masks); presence_threshold None: chosen on a
    held-out `val_fraction` of the labels (see the module docstring); 0 turns the gate off, and
    then labels may all be "present" (a dataset without empty images). refine: box-refinement rounds
    at inference (models.sam_mix)."""
    from metaseg.data.cache import load_task
    from metaseg.jobs import checks
    from metaseg.jobs.adapt import OUTPUTS, list_query_images, to_input, write_predictions
    from metaseg.models.sam_mix import CAM_THRESHOLD, create_sam_mix, save_cam_prompter
    from metaseg.outputs import OutputFolder
    from metaseg.training.sam_mix import SamMixBudget, fit_sam_mix

    for option, value, minimum in (("--shots", shots, 1), ("--steps", steps, 0), ("--warmup", warmup, 0), ("--seed", seed, 0),
                                   ("--refine", refine, 0)):
        checks.at_least(option, value, minimum)
    checks.image_size("--size", size)
    checks.unit_interval("--presence-threshold", presence_threshold)
    checks.unit_interval("--cam-threshold", cam_threshold, open_ends=True)
    checks.unit_interval("--val-fraction", val_fraction, open_ends=True)
    folder = OutputFolder(out, OUTPUTS + (PROMPTER,), overwrite).check()  # created only once the inputs are valid
    support_path = checks.existing_folder("--support", support)
    csv_labels = read_labels_csv(labels, absent_class, label_column, id_column) if labels else None  # a bad CSV: before any reading
    queries, description = list_query_images(images, layout)  # --images checked before any training
    size = int(size or 128)
    label_map = csv_labels if csv_labels is not None else dataset_labels(support_path, layout, absent_class)
    task = load_task(support_path, layout=layout, size=size, cache_dir=cache_dir)
    rows, present, chosen = training_rows(task.ids, task.masks, label_map, shots, seed)
    absent_with_mask = int(sum(task.masks[i].any() for i in rows[present == 0]))
    if absent_with_mask and presence_threshold != 0:
        echo(f"sam_mix: {absent_with_mask} images labelled absent have a lesion mask: if the labels are classes rather "
             "than presence (e.g. melanoma or not), turn the gate off with --presence-threshold 0")
    held = None if presence_threshold is not None else validation_rows(rows, present, chosen, val_fraction, seed)
    if presence_threshold is None and held is None:
        echo("sam_mix: too few labelled images without a mask in one class to hold any out: presence threshold 0.5 "
             "(set --presence-threshold)")
    train = np.setdiff1d(np.arange(len(rows)), held if held is not None else [])
    torch.manual_seed(seed)
    model = create_sam_mix(prompts=prompts, cam_threshold=cam_threshold or CAM_THRESHOLD, image_size=size, seed=seed, refine=refine,
                           presence_threshold=0.5 if presence_threshold is None else presence_threshold)
    budget = SamMixBudget(**{k: v for k, v in (("steps", steps), ("warmup", warmup)) if v is not None},
                          absent_labels=presence_threshold != 0)
    echo(f"sam_mix: {len(rows)} image-level labels ({int(present.sum())} present), {shots} masks "
         f"({', '.join(task.ids[i] for i in chosen)}), {budget.warmup} + {budget.steps} steps at {size} px"
         + (f"; {len(held)} labelled images held out to choose the presence threshold" if held is not None else ""))
    val = {} if held is None else {"val_images": task.images[rows[held]], "val_present": present[held]}
    fit_sam_mix(model, task.images[rows[train]], present[train], task.images[chosen], task.masks[chosen], budget,
                seed=seed, **val)
    echo(f"sam_mix: presence threshold {model.presence_threshold:.3f} "
         f"({'chosen on the held-out labels' if held is not None else 'fixed'}), CAM threshold {model.cam_threshold:.2f} "
         f"({'default' if cam_threshold is None else 'fixed'})")
    support_hashes = {task.hashes[i] for i in chosen}

    echo(f"--images {images}: {description}")

    def predict(image: np.ndarray, path: Path, sha: str) -> tuple[np.ndarray, dict[str, str]]:
        with torch.no_grad():
            result = model.outputs(to_input(image, size, torch.device("cpu")))
            logits = F.interpolate(result["logits"], size=image.shape[:2], mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).numpy(), {"presence": f"{float(torch.sigmoid(result['presence'][0])):.4f}"}

    records, out_dir = write_predictions(folder, queries, predict, support_hashes, FIELDS)
    prompter = save_cam_prompter(model, out_dir / PROMPTER)
    echo(f"wrote the CAM box prompter to {prompter} (other SAM-based methods: --cam-prompts {prompter})")
    scored = [float(r["dice"]) for r in records if r["dice"] != "" and not r["in_support"]]
    summary: dict[str, Any] = {"method": "sam_mix", "images": len(records), "scored": len(scored), "out": str(out_dir),
                               "presence_threshold": model.presence_threshold, "cam_threshold": model.cam_threshold}
    echo(f"wrote {len(records)} masks to {out_dir / 'masks'}, overlays to {out_dir / 'overlays'}, scores to {out_dir / 'predictions.csv'}")
    if scored:
        summary["dice"], summary["dice_ci95"] = mean_ci95(scored)
        echo(f"Dice {mean_ci_text(summary['dice'], summary['dice_ci95'], len(scored))} (mean ± 95% CI over {len(scored)} images "
             "with ground truth, support images left out; empty masks count as the metrics module scores them)")
    return summary
