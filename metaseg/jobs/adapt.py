"""`metaseg adapt`: K labelled images of a new dataset -> adapted network -> masks for every image.

Outputs in --out: masks/<id>.png (binary 0/255, each image's ORIGINAL size: the logits are
upsampled to the original size, then thresholded at probability 0.5), overlays/<id>.png, and
predictions.csv with per-image Dice/IoU wherever ground truth exists. Images that were used as
support are flagged (`in_support`) and left out of the mean, which is reported with a 95% CI.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError
from metaseg.metrics import mean_ci95

OUTPUT_NAMES = ("masks", "overlays", "predictions.csv")
CSV_FIELDS = ("id", "image", "width", "height", "mask", "overlay", "ground_truth", "in_support", "dice", "iou", "seen_in_training")


@dataclass
class QueryImage:
    id: str
    image: Path
    mask: Path | None = None


def prepare_adapt_out(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty --out unless --overwrite; with it, only this command's own outputs are replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MetasegError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MetasegError(f"--out {out} is not empty; pass --overwrite to replace its masks/, overlays/ and predictions.csv")
        for name in OUTPUT_NAMES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    return out


def list_query_images(folder: str | Path, layout: str | None = None) -> tuple[list[QueryImage], str]:
    """Images to segment: a dataset in a known layout (its masks become ground truth) or a plain
    folder of images (searched recursively; no ground truth). Returns the list and a description."""
    from metaseg.data.readers import detect_layout, list_pairs
    from metaseg.data.readers._common import image_files, rel_stem

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MetasegError(f"--images: folder not found: {folder}")
    try:
        name = layout or detect_layout(folder)
        pairs = list_pairs(folder, name)
    except MetasegError:
        name, pairs = None, []
    if pairs:
        images = [QueryImage(p.id, Path(p.image), Path(p.mask) if p.mask else None) for p in pairs if not p.meta.get("volume")]
        with_gt = sum(q.mask is not None for q in images)
        return images, f"dataset layout {name!r}: {len(images)} images, {with_gt} with ground truth"
    files = image_files(folder, recursive=True)
    if not files:
        raise MetasegError(f"--images: no image files in {folder}")
    return [QueryImage(rel_stem(p, folder), p) for p in files], f"plain folder: {len(files)} images, no ground truth"


def choose_support(task: TaskArrays, shots: int, seed: int) -> np.ndarray:
    """K rows of the support task, drawn with the seed (sorted so the choice reads naturally)."""
    if shots < 1:
        raise MetasegError(f"--shots must be >= 1 (got {shots})")
    if len(task) < shots:
        raise MetasegError(f"--support has {len(task)} labelled images, fewer than --shots {shots}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(task), shots, replace=False))


def to_input(image_hwc: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """Original image -> (1, C, size, size) float in [0, 1], resized exactly as the training cache does."""
    from metaseg.data.cache import resize_image

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


def build_adapter(checkpoint: str | None, seed: int, steps: int | None, device: torch.device) -> tuple[nn.Module, nn.Module, str, dict]:
    """Checkpoint -> its model and learner; no checkpoint -> the scratch baseline (random init, fine-tuned)."""
    from metaseg.jobs.evaluate import build_method

    return build_method(checkpoint, None, seed, steps, device=device)


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
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Adapt on K support pairs, segment every image of `images`, write masks/overlays/CSV into `out`."""
    from metaseg.data.cache import file_sha1, load_task
    from metaseg.data.images import read_image, read_mask
    from metaseg.jobs.seen import SeenFlagger

    out_dir = prepare_adapt_out(out, overwrite)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    model, learner, method, info = build_adapter(checkpoint, seed, steps, dev)
    size = int(size or info.get("image_size") or 128)
    seen = SeenFlagger(info)  # images the checkpoint was meta-trained/validated on are flagged

    support_path = Path(support).expanduser()
    if not support_path.is_dir():
        raise MetasegError(f"--support: folder not found: {support_path}")
    task = load_task(support_path, layout=layout, size=size, cache_dir=cache_dir)
    rows = choose_support(task, shots, seed)
    sx = torch.from_numpy(task.images[rows]).float().div_(255.0).to(dev)
    sy = torch.from_numpy(task.masks[rows]).float().unsqueeze(1).to(dev)
    support_hashes = {task.hashes[i] for i in rows}
    echo(f"{method}: adapting on {shots} support images of {support_path} at {size} px "
         f"({'learner default' if steps is None else steps} steps): {', '.join(task.ids[i] for i in rows)}")
    with torch.enable_grad():
        fast = learner.adapt(model, sx, sy, steps=steps)

    queries, description = list_query_images(images, layout)
    echo(f"--images {images}: {description}")
    records = []
    for q in queries:
        image, _ = read_image(q.image)
        pred = predict_original_size(learner, model, fast, image, size, dev)
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
            "in_support": file_sha1(Path(q.image)) in support_hashes,
            "dice": "" if dice is None else f"{dice:.6f}", "iou": "" if iou is None else f"{iou:.6f}",
            "seen_in_training": seen.flag(q.image, image, file_sha1(Path(q.image))),
        })
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(records)

    scored = [r for r in records if r["dice"] != "" and not r["in_support"]]
    summary: dict[str, Any] = {"method": method, "images": len(records), "scored": len(scored),
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
        echo(f"Dice {dm:.4f} ± {dci:.4f}, IoU {im:.4f} ± {ici:.4f} (mean ± 95% CI over {len(scored)} images "
             f"with ground truth{skipped})")
    return summary
