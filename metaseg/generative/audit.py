"""Memorisation audit: does a generator reproduce its training images?

For every synthetic image: the maximum Pearson correlation with any training image (rows
standardised once, then chunked matrix products, so memory stays at chunk x chunk floats) and
the maximum SSIM (scikit-image) over the training images, by default all of them. An image whose
maximum correlation exceeds tau (0.95) is flagged as a likely copy. The same audit of real
held-out images against the training images is the reference: what "no memorisation" looks
like for this data set (similar anatomy is correlated too).
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError, at_least
from metaseg.outputs import OutputFolder

OUTPUTS = ("audit.json", "synthetic.csv", "reference.csv", "histogram.png", "closest_pairs.png")


def _standardise(images: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, D) float32 rows with mean 0 and norm 1 (a constant image becomes all zeros)."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def nearest_by_correlation(query: np.ndarray, train: np.ndarray, k: int = 1, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The k most correlated training rows of every query row: (values (N, k) descending, indices (N, k)).
    Pearson r = dot product of standardised rows; computed chunk x chunk."""
    at_least("--chunk", chunk, 1)
    q, t = _standardise(query), _standardise(train)
    k = min(k, len(t))
    values = np.empty((len(q), k), np.float32)
    indices = np.empty((len(q), k), np.int64)
    for i0 in range(0, len(q), chunk):
        best_v = np.full((min(chunk, len(q) - i0), 0), -np.inf, np.float32)
        best_i = np.empty(best_v.shape, np.int64)
        for j0 in range(0, len(t), chunk):
            corr = q[i0:i0 + chunk] @ t[j0:j0 + chunk].T
            cand_v = np.concatenate([best_v, corr], axis=1)
            cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(j0, j0 + corr.shape[1]), corr.shape)], axis=1)
            keep = np.argpartition(-cand_v, k - 1, axis=1)[:, :k] if cand_v.shape[1] > k else np.argsort(-cand_v, axis=1)
            best_v = np.take_along_axis(cand_v, keep, axis=1)
            best_i = np.take_along_axis(cand_i, keep, axis=1)
        order = np.argsort(-best_v, axis=1)
        values[i0:i0 + len(best_v)] = np.take_along_axis(best_v, order, axis=1)
        indices[i0:i0 + len(best_v)] = np.take_along_axis(best_i, order, axis=1)
    return values, indices


def max_ssim(query: np.ndarray, train: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Maximum SSIM (skimage, data range 1, 7x7 window) of each query image (C, H, W) in [0, 1] over the
    training images, or over `candidates[i]` (training indices) when given."""
    from skimage.metrics import structural_similarity

    channel_axis = 0 if query.shape[1] > 1 else None
    squeeze = (lambda a: a) if channel_axis == 0 else (lambda a: a[0])
    best = np.empty(len(query), np.float64)
    for i, q in enumerate(query):
        rows = range(len(train)) if candidates is None else candidates[i]
        best[i] = max(structural_similarity(squeeze(q), squeeze(train[j]), data_range=1.0, channel_axis=channel_axis) for j in rows)
    return best


@dataclass
class AuditResult:
    ids: list[str]
    max_corr: np.ndarray
    nearest: np.ndarray  # row of the most correlated training image
    max_ssim: np.ndarray

    def summary(self, tau: float) -> dict[str, Any]:
        above = self.max_corr > tau
        return {
            "n": len(self.ids), "tau": tau, "n_above_tau": int(above.sum()), "frac_above_tau": float(above.mean()),
            "max_corr_median": float(np.median(self.max_corr)), "max_corr_p99": float(np.percentile(self.max_corr, 99)),
            "max_corr_max": float(self.max_corr.max()),
            "max_ssim_median": float(np.median(self.max_ssim)), "max_ssim_p99": float(np.percentile(self.max_ssim, 99)),
        }


def audit_arrays(query: TaskArrays, train: TaskArrays, ssim_candidates: int = 0, chunk: int = 512) -> AuditResult:
    """Audit the images of `query` against those of `train` (same size and channel count).
    ssim_candidates = 0: SSIM against every training image; K > 0: against the K most correlated."""
    if query.images.shape[1:] != train.images.shape[1:]:
        raise MetasegError(f"the images to audit are {tuple(query.images.shape[1:])} (C, H, W) but the training images are "
                           f"{tuple(train.images.shape[1:])}; both must have the same channels (check --size)")
    at_least("--ssim-candidates", ssim_candidates, 0)
    k = ssim_candidates or 1
    values, indices = nearest_by_correlation(query.images, train.images, k, chunk)
    q = query.images.astype(np.float64) / 255.0
    t = train.images.astype(np.float64) / 255.0
    ssim = max_ssim(q, t, indices if ssim_candidates else None)
    return AuditResult(list(query.ids), values[:, 0].astype(np.float64), indices[:, 0], ssim)


def _write_csv(path: Path, result: AuditResult, train: TaskArrays, tau: float) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "max_corr", "nearest_train_id", "max_ssim", "above_tau"])
        for i, id_ in enumerate(result.ids):
            w.writerow([id_, f"{result.max_corr[i]:.6f}", train.ids[result.nearest[i]], f"{result.max_ssim[i]:.6f}",
                        int(result.max_corr[i] > tau)])


def _rows(task: TaskArrays, keep: set[str]) -> TaskArrays:
    idx = [i for i, h in enumerate(task.hashes) if h in keep]
    return TaskArrays(task.name, task.images[idx], task.masks[idx], [task.ids[i] for i in idx],
                      [task.hashes[i] for i in idx], [task.sources[i] for i in idx])


def run_audit(synthetic: str | Path, train: str | Path, out: str | Path, heldout: str | Path | None = None,
              checkpoint: str | Path | None = None, tau: float = 0.95, size: int | None = None, layout: str | None = None,
              ssim_candidates: int = 0, chunk: int = 512, top: int = 8, overwrite: bool = False,
              cache_dir: str | None = None, echo: Callable[[str], Any] | None = None,
              reader_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Audit --synthetic against --train (with --checkpoint: only the images the generator saw; the
    reference is then its held-out split) and, when there is a reference, the reference too.
    `reader_options` read --train/--heldout (default: the checkpoint's, e.g. label=1,2 for an MSD task).
    Writes audit.json, synthetic.csv, reference.csv, histogram.png and closest_pairs.png to --out."""
    from metaseg.generative.data import load_dataset
    from metaseg.generative.figures import closest_pairs, correlation_histogram
    from metaseg.generative.trainer import read_synth_checkpoint

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    if not 0 < tau <= 1:
        raise MetasegError(f"--tau must be in (0, 1], got {tau}")
    at_least("--top", top, 0)
    folder = OutputFolder(out, OUTPUTS, overwrite).check()
    ckpt = read_synth_checkpoint(checkpoint) if checkpoint else None
    size = int(size or (ckpt["config"]["size"] if ckpt else 64))
    if reader_options is None and ckpt is not None:
        reader_options = ckpt["config"].get("reader_options")
    synth = load_dataset(synthetic, size, None, cache_dir, option="--synthetic")
    real = load_dataset(train, size, layout, cache_dir, option="--train", reader_options=reader_options)
    reference = load_dataset(heldout, size, layout, cache_dir, option="--heldout", reader_options=reader_options) if heldout else None
    train_set = real
    if ckpt is not None:
        train_set = _rows(real, set(ckpt["train_hashes"]))
        if not len(train_set):
            raise MetasegError(f"--train {train}: none of the {len(ckpt['train_hashes'])} images the --checkpoint was trained on is in it")
        if reference is None and ckpt["heldout_hashes"]:
            reference = _rows(real, set(ckpt["heldout_hashes"]))
    echo(f"[audit] {len(synth)} synthetic vs {len(train_set)} training images at {size} px"
         + (f"; reference: {len(reference)} held-out images" if reference is not None else "; no held-out reference (pass --heldout or --checkpoint)"))
    with folder.writing() as out:
        result = audit_arrays(synth, train_set, ssim_candidates, chunk)
        report: dict[str, Any] = {"synthetic": str(synthetic), "train": str(train), "size": size, "tau": tau,
                                  "ssim_against": "all training images" if not ssim_candidates else f"the {ssim_candidates} most correlated",
                                  "synthetic_vs_train": result.summary(tau)}
        _write_csv(out / "synthetic.csv", result, train_set, tau)
        series = {"synthetic vs train": result.max_corr}
        if reference is not None and len(reference):
            ref = audit_arrays(reference, train_set, ssim_candidates, chunk)
            report["heldout_vs_train"] = ref.summary(tau)
            _write_csv(out / "reference.csv", ref, train_set, tau)
            series["held-out real vs train"] = ref.max_corr
        correlation_histogram(series, tau, out / "histogram.png")
        order = np.argsort(-result.max_corr)[:top]
        if len(order):
            labels = [f"r={result.max_corr[i]:.3f} ssim={result.max_ssim[i]:.2f}" for i in order]
            closest_pairs(synth.images[order], train_set.images[result.nearest[order]], labels, out / "closest_pairs.png",
                          f"closest synthetic/training pairs (tau = {tau:g})")
        report["closest"] = [{"synthetic": result.ids[i], "train": train_set.ids[result.nearest[i]],
                              "max_corr": float(result.max_corr[i]), "max_ssim": float(result.max_ssim[i])} for i in order]
        (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
        for name in ("synthetic_vs_train", "heldout_vs_train"):
            if name in report:
                s = report[name]
                echo(f"[audit] {name.replace('_', ' ')}: max corr median {s['max_corr_median']:.3f}, p99 {s['max_corr_p99']:.3f}, "
                     f"{s['n_above_tau']}/{s['n']} ({100 * s['frac_above_tau']:.1f}%) above tau={tau:g}; "
                     f"max SSIM median {s['max_ssim_median']:.3f}")
        echo(f"[audit] wrote {out / 'audit.json'}, synthetic.csv, histogram.png, closest_pairs.png")
    return report


def diversity(images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """How varied a set of (image, mask) pairs is - the mode-collapse check of docs/synthetic.md: the
    mean Pearson r over all pairs of distinct images (1.0 = every image the same; compare with the real
    training images' value), the share of empty masks and the mean mask area (fraction of pixels)."""
    x = _standardise(images)
    n = len(x)
    gram = x @ x.T
    pairwise = float((gram.sum() - np.trace(gram)) / (n * (n - 1))) if n > 1 else 1.0
    area = masks.reshape(n, -1).mean(axis=1)
    return {"pairwise_r_mean": pairwise, "empty_mask_frac": float((area == 0).mean()), "mask_area_mean": float(area.mean())}
