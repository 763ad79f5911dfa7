"""Checkpoint -> a dataset folder: images/synth_00000.png + masks/synth_00000.png (0/255), which
the generic reader pairs by file stem, so every metaseg command (data check, adapt, evaluate,
meta-train task specs, synth audit) reads it like any other dataset. Also grid.png (the first 16
pairs) and synth.json (where the samples came from)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from metaseg.errors import at_least
from metaseg.generative.data import from_joint
from metaseg.generative.trainer import load_generator, read_synth_checkpoint
from metaseg.outputs import OutputFolder

OUTPUTS = ("images", "masks", "grid.png", "synth.json")


def write_pairs(images: np.ndarray, masks: np.ndarray, out: Path, start: int = 0) -> None:
    """uint8 images (N, C, H, W) and {0,1} masks (N, H, W) as PNG pairs synth_<index>."""
    for i, (image, mask) in enumerate(zip(images, masks), start):
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        Image.fromarray(np.ascontiguousarray(pixels)).save(out / "images" / f"synth_{i:05d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"synth_{i:05d}.png")


def sample_to_folder(checkpoint: str | Path, n: int, out: str | Path, seed: int = 0, batch_size: int = 64,
                     overwrite: bool = False, echo: Callable[[str], Any] | None = None, device: str = "cpu",
                     **options: Any) -> Path:
    """Write n sampled (image, mask) pairs; the same checkpoint, seed and batch size give the same files.
    `options` go to the generator's sampler (diffusion: sampler, steps)."""
    from metaseg.generative.figures import sample_grid

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    at_least("--n", n, 1)
    at_least("--batch-size", batch_size, 1)
    ckpt = read_synth_checkpoint(checkpoint)
    folder = OutputFolder(out, OUTPUTS, overwrite).check()
    model = load_generator(ckpt, device)
    with folder.writing() as out:
        (out / "images").mkdir()
        (out / "masks").mkdir()
        first: list[tuple[np.ndarray, np.ndarray]] = []
        for b, start in enumerate(range(0, n, batch_size)):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
            images, masks = from_joint(model.sample(min(batch_size, n - start), gen, **options))
            write_pairs(images, masks, out, start)
            if start < 16:
                first.append((images, masks))
            echo(f"[sample] {min(start + batch_size, n)}/{n} pairs written to {out}")
        grid_images = np.concatenate([f[0] for f in first])[:16]
        grid_masks = np.concatenate([f[1] for f in first])[:16]
        sample_grid(grid_images, grid_masks, out / "grid.png", title=f"{ckpt['config']['model']} samples (seed {seed})")
        info = {"checkpoint": str(Path(checkpoint).resolve()), "model": ckpt["config"]["model"], "step": ckpt["step"],
                "trained_on": ckpt["config"]["dataset"], "n": n, "seed": seed, "batch_size": batch_size, "options": options}
        (out / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
