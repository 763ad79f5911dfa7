"""Figures of the synthetic-data study (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image: np.ndarray, mask: np.ndarray | None = None) -> None:
    """image uint8 (C, H, W); the mask (H, W) drawn as a red contour."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.moveaxis(image[:3], 0, -1))
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    ax.set_xticks([]), ax.set_yticks([])


def sample_grid(images: np.ndarray, masks: np.ndarray, path: Path, title: str = "", cols: int = 4) -> None:
    """Samples with their mask contour, `cols` per row."""
    plt = _plt()
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, images[i], masks[i])
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def correlation_histogram(series: dict[str, np.ndarray], tau: float, path: Path) -> None:
    """Distributions of the per-image maximum correlation (synthetic vs train, held-out vs train)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(-0.2, *(float(v.min()) for v in series.values() if v.size)), 1.0, 41)
    for label, values in series.items():
        if values.size:
            ax.hist(values, bins=bins, alpha=0.55, density=True, label=f"{label} (n={values.size})")
    ax.axvline(tau, color="k", linestyle="--", linewidth=1, label=f"tau = {tau:g}")
    ax.set_xlabel("maximum Pearson correlation with any training image")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def closest_pairs(query: np.ndarray, train: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    """Top row: the queries (synthetic images); bottom row: their nearest training image."""
    plt = _plt()
    n = len(query)
    fig, axes = plt.subplots(2, max(n, 1), figsize=(2 * max(n, 1), 4.4), squeeze=False)
    for i in range(n):
        _show(axes[0, i], query[i])
        _show(axes[1, i], train[i])
        axes[0, i].set_title(labels[i], fontsize=7)
    axes[0, 0].set_ylabel("synthetic")
    axes[1, 0].set_ylabel("nearest training")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
