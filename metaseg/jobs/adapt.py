"""`metaseg adapt`: K labelled images of a new dataset -> adapted network -> masks for every image.

Outputs in --out: masks/<id>.png (binary 0/255, each image's ORIGINAL size: the logits are
upsampled to the original size, then thresholded at probability 0.5), overlays/<id>.png, and
predictions.csv with per-image Dice/IoU wherever ground truth exists. Images that were used as
support are flagged (`in_support`) and left out of the mean, which is reported with a 95% CI.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from metaseg.data.resize import resize_image
from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError
from metaseg.jobs import checks
from metaseg.jobs.methods import attach_cam_prompts, build_method, resolve_device, uses_checkpoint
from metaseg.meta import core
from metaseg.metrics import mean_ci95, mean_ci_text
from metaseg.outputs import OutputFolder

OUTPUTS = ("masks", "overlays", "predictions.csv")
CSV_FIELDS = ("id", "image", "width", "height", "mask", "overlay", "ground_truth", "in_support", "dice", "iou", "seen_in_training")


@dataclass
class QueryImage:
    id: str
    image: Path
    mask: Path | None = None


def list_query_images(folder: str | Path, layout: str | None = None,
                      reader_options: Mapping[str, Any] | None = None) -> tuple[list[QueryImage], str]:
    """Images to segment: a dataset in a known layout (its masks become ground truth) or a plain
    folder of images (searched recursively; no ground truth). Returns the list and a description.
    Listing only: nothing is decoded, so a wrong --images is refused before any work."""
    from metaseg.data.readers import detect_layout, list_pairs
    from metaseg.data.readers import image_files, rel_stem

    folder = checks.existing_folder("--images", folder)
    try:
        name = layout or detect_layout(folder)
        pairs = list_pairs(folder, name, **dict(reader_options or {}))
    except MetasegError:
        name, pairs = None, []
    if pairs:
        images = [QueryImage(p.id, Path(p.image), Path(p.mask) if p.mask else None) for p in pairs if not p.meta.get("volume")]
        with_gt = sum(q.mask is not None for q in images)
        return images, f"dataset layout {name!r}: {len(images)} images, {with_gt} with ground truth"
    files = image_files(folder, recursive=True)
    if not files:
        raise MetasegError(f"--images {folder}: no image files in it (searched recursively)")
    return [QueryImage(rel_stem(p, folder), p) for p in files], f"plain folder: {len(files)} images, no ground truth"


def check_support_size(n: int, shots: int) -> None:
    if n < shots:
        raise MetasegError(f"--support has {n} labelled images, fewer than --shots {shots}")


def choose_support(task: TaskArrays, shots: int, seed: int) -> np.ndarray:
    """K rows of the support task, drawn with the seed (sorted so the choice reads naturally)."""
    checks.at_least("--shots", shots, 1)
    check_support_size(len(task), shots)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(task), shots, replace=False))


def to_input(image_hwc: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """Original image -> (1, C, size, size) float in [0, 1], resized exactly as the training cache does."""
    return torch.from_numpy(resize_image(image_hwc, size)).float().div_(255.0).unsqueeze(0).to(device)


def predict_original_size(learner: nn.Module, model: nn.Module, fast: dict, image_hwc: np.ndarray, size: int,
                          device: torch.device) -> np.ndarray:
    """Binary mask (H, W) bool at the image's original size: logits upsampled, then thresholded."""
    with torch.no_grad():
        logits = learner.predict(model, fast, to_input(image_hwc, size, device)).float()
        logits = F.interpolate(logits, size=image_hwc.shape[:2], mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).cpu().numpy()  # logit > 0  <=>  probability > 0.5


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Same convention as metaseg.metrics (both empty = 1), on full-resolution binary masks."""
    from metaseg.metrics import dice_iou_per_image

    logits = torch.from_numpy(np.where(pred, 10.0, -10.0)).float()[None, None]
    dice, iou = dice_iou_per_image(logits, torch.from_numpy(gt.astype(np.float32))[None, None])
    return float(dice[0]), float(iou[0])


def overlay(image_hwc: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> Image.Image:
    """Prediction tinted red over the image; ground-truth outline in green when known."""
    from skimage.segmentation import find_boundaries

    rgb = np.repeat(image_hwc, 3, axis=2) if image_hwc.shape[2] == 1 else image_hwc[..., :3]
    out = rgb.astype(np.float32)
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([255, 0, 0], np.float32)
    if gt is not None:
        out[find_boundaries(gt.astype(bool), mode="inner")] = (0, 255, 0)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_predictions(folder: OutputFolder, queries: list, predict: Callable[[np.ndarray, Path, str], tuple[np.ndarray, dict]],
                      support_hashes: set[str], fields: tuple[str, ...]) -> tuple[list[dict[str, Any]], Path]:
    """Segment every query with `predict(image, path, sha1) -> (mask at the image's size, extra CSV columns)` and write
    masks/, overlays/ and predictions.csv inside the run folder: one writer for every `adapt` method."""
    from metaseg.data.cache import file_sha1
    from metaseg.data.images import read_image, read_mask

    records = []
    with folder.writing() as out_dir:
        (out_dir / "masks").mkdir()
        (out_dir / "overlays").mkdir()
        for q in queries:
            image, _ = read_image(q.image)
            sha = file_sha1(Path(q.image))  # read once: support membership here, seen-in-training in `predict`
            pred, extra = predict(image, Path(q.image), sha)
            gt = read_mask(q.mask)[0] if q.mask is not None else None
            if gt is not None and gt.shape != pred.shape:
                raise MetasegError(f"size mismatch: image {q.image} and mask {q.mask}")
            mask_path = out_dir / "masks" / f"{q.id}.png"
            overlay_path = out_dir / "overlays" / f"{q.id}.png"
            save_mask(mask_path, pred)
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            overlay(image, pred, gt).save(overlay_path)
            dice, iou = dice_iou(pred, gt) if gt is not None else (None, None)
            records.append({
                "id": q.id, "image": str(q.image), "width": image.shape[1], "height": image.shape[0],
                "mask": str(mask_path), "overlay": str(overlay_path), "ground_truth": str(q.mask or ""),
                "in_support": sha in support_hashes,
                "dice": "" if dice is None else f"{dice:.6f}", "iou": "" if iou is None else f"{iou:.6f}", **extra,
            })
        with open(out_dir / "predictions.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
    return records, out_dir


def run_adapt(
    checkpoint: str | None,
    support: str | Path,
    images: str | Path,
    out: str | Path,
    shots: int = 5,
    steps: int | None = None,
    layout: str | None = None,
    seed: int = 0,
    size: int | None = None,
    overwrite: bool = False,
    cache_dir: str | None = None,
    device: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    echo: Callable[[str], Any] = print,
    precision: str = "fp32",
    cam_prompts: str | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """Adapt on K support pairs, segment every image of `images`, write masks/overlays/CSV into `out`.
    `method`: a baseline of `metaseg.jobs.methods.BASELINES` instead of the checkpoint.

    Options, --checkpoint, --support (enough pairs for --shots) and --images (has images) are all
    checked before a model is built; --out is created only for the run, and a failed run removes
    what it wrote there (never what was there before)."""
    from metaseg.data.cache import list_task, load_task
    from metaseg.jobs.evaluate import task_notes
    from metaseg.jobs.seen import SeenFlagger

    checks.at_least("--shots", shots, 1)
    checks.precision("--precision", precision)
    checks.at_least("--steps", steps, 0)
    checks.at_least("--seed", seed, 0)
    checks.image_size("--size", size)
    folder = OutputFolder(out, OUTPUTS, overwrite).check()
    dev = resolve_device(device)
    if uses_checkpoint(checkpoint, method):
        checks.checkpoint_file("--checkpoint", checkpoint)
    checks.cam_prompter_file("--cam-prompts", cam_prompts)
    options = dict(reader_options or {})
    support_path = checks.existing_folder("--support", support)
    check_support_size(len(list_task(support_path, layout, **options).pairs), shots)
    queries, description = list_query_images(images, layout, options)

    torch.manual_seed(seed)
    method = attach_cam_prompts(build_method(checkpoint, method, seed, steps, device=dev), cam_prompts)
    size = int(size or method.image_size)
    seen = SeenFlagger(method.info)  # images the checkpoint was meta-trained/validated on are flagged
    task = load_task(support_path, layout=layout, size=size, cache_dir=cache_dir, channels=method.in_channels, **options)
    for line in task_notes(task, "--support"):
        echo(line)
    rows = choose_support(task, shots, seed)
    sx = torch.from_numpy(task.images[rows]).float().div_(255.0).to(dev)
    sy = torch.from_numpy(task.masks[rows]).float().unsqueeze(1).to(dev)
    support_hashes = {task.hashes[i] for i in rows}
    steps_note = "no gradient step" if method.steps is None else f"{method.steps} steps"
    echo(f"{method.name}: adapting on {shots} support images of {support} at {size} px "
         f"({steps_note}): {', '.join(task.ids[i] for i in rows)}")
    with torch.enable_grad(), core.autocast(precision, dev):
        fast = method.learner.adapt(method.model, sx, sy, steps=method.steps)

    echo(f"--images {images}: {description}")

    def predict(image: np.ndarray, path: Path, sha: str) -> tuple[np.ndarray, dict[str, str]]:
        with core.autocast(precision, dev):
            pred = predict_original_size(method.learner, method.model, fast, image, size, dev)
        return pred, {"seen_in_training": seen.flag(path, image, sha)}

    records, out_dir = write_predictions(folder, queries, predict, support_hashes, CSV_FIELDS)
    scored = [r for r in records if r["dice"] != "" and not r["in_support"]]
    summary: dict[str, Any] = {"method": method.name, "steps": method.steps, "images": len(records), "scored": len(scored),
                               "in_support": sum(bool(r["in_support"]) for r in records), "out": str(out_dir),
                               "seen_in_training": seen.count}
    echo(f"wrote {len(records)} masks to {out_dir / 'masks'}, overlays to {out_dir / 'overlays'}, "
         f"scores to {out_dir / 'predictions.csv'}")
    if seen.summary():
        echo(seen.summary())
    if scored:
        dm, dci = mean_ci95([float(r["dice"]) for r in scored])
        im, ici = mean_ci95([float(r["iou"]) for r in scored])
        summary.update(dice=dm, dice_ci95=dci, iou=im, iou_ci95=ici)
        skipped = f"; {summary['in_support']} support images not scored" if summary["in_support"] else ""
        echo(f"Dice {mean_ci_text(dm, dci, len(scored))}, IoU {mean_ci_text(im, ici, len(scored))} "
             f"(mean ± 95% CI over {len(scored)} images "
             f"with ground truth{skipped})")
    return summary
