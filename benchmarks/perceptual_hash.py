"""How well the perceptual hash (metaseg.data.fingerprints) finds copies, and how often it flags
different images, on the real datasets (issue 17; the numbers in docs/adapt-evaluate.md):

    python -m benchmarks.perceptual_hash            # needs ../shared/datasets or $METASEG_DATA

1. Modified copies: every 4th image of 5 datasets is resized, JPEG re-encoded or cropped; the share
   whose hash (at the file's own size, as `adapt` reads it) lies within NEAR_BITS of the original's
   reference hashes (its 128 px cache entry and that entry's centred crops, as a checkpoint stores).
2. Real splits: how many held-out images are flagged as near-duplicates of the training side, for
   the datasets' own splits (ISIC-2017 Training -> Validation, DRIVE training -> test) and for an
   80/20 split by content hash (what `data.val_split` does) of the others, and how many of them the
   exact hash (file bytes) finds. Flags are copies, near-duplicates or look-alikes.
"""
from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze()).save(buffer, "JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    return out[..., None] if out.ndim == 2 else out


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    w, h = max(8, int(image.shape[1] * scale)), max(8, int(image.shape[0] * scale))
    out = np.asarray(Image.fromarray(image.squeeze()).resize((w, h), Image.Resampling.BICUBIC))
    return out[..., None] if out.ndim == 2 else out


def _crop(image: np.ndarray, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    dy, dx = round(fraction * h), round(fraction * w)
    return image[dy:h - dy, dx:w - dx]


CHANGES = {
    "3/4 size": lambda im: _resize(im, 0.75),
    "JPEG quality 30": lambda im: _jpeg(im, 30),
    "3/4 size + JPEG 75": lambda im: _jpeg(_resize(im, 0.75), 75),
    "crop 2% per side": lambda im: _crop(im, 0.02),
    "crop 5% per side": lambda im: _crop(im, 0.05),
    "crop 8% per side": lambda im: _crop(im, 0.08),
    "crop 4% off one corner": lambda im: im[: im.shape[0] * 96 // 100, : im.shape[1] * 96 // 100],
}


def modified_copies(root) -> None:
    from metaseg.data.cache import resize_image
    from metaseg.data.fingerprints import NEAR_BITS, nearest, perceptual_hash, reference_hashes
    from metaseg.data.images import read_image
    from metaseg.data.readers import list_pairs

    images = [read_image(p.image)[0] for name in ("Kvasir-SEG", "ISIC-2017-256sq", "CXR-Lungs-Shenzhen-Montgomery",
                                                   "CVC-ClinicDB", "membrane") for p in list_pairs(root / name)[::4][:100]]
    references = [reference_hashes(resize_image(im, 128)[None]) for im in images]
    print(f"1. modified copies found (distance <= {NEAR_BITS} bits), {len(images)} images of 5 datasets")
    for change, apply in CHANGES.items():
        found = [nearest(perceptual_hash(apply(im))[None], ref)[0][0] <= NEAR_BITS for im, ref in zip(images, references)]
        print(f"   {change:24s} {np.mean(found):6.1%}")


def real_splits(root) -> None:
    from metaseg.data.cache import load_task
    from metaseg.data.fingerprints import NEAR_BITS, hash64, nearest, perceptual_hashes, reference_hashes
    from metaseg.data.tasks import split_by_hash

    cases = [("ISIC-2017-256sq", {"split": "Training"}, {"split": "Validation"}),
             ("DRIVE", {"split": "training"}, {"split": "test"})]
    cases += [(name, None, None) for name in ("Kvasir-SEG", "CVC-ClinicDB", "CXR-Lungs-Shenzhen-Montgomery", "CHASEDB1", "membrane")]
    print(f"2. held-out images flagged as near-duplicates of the training side (128 px caches, <= {NEAR_BITS} bits)")
    for name, train_opts, test_opts in cases:
        if train_opts is None:
            train, test = split_by_hash(load_task(root / name, size=128), 0.2, 0)
            how = "80/20 by content hash"
        else:
            train, test = load_task(root / name, size=128, **train_opts), load_task(root / name, size=128, **test_opts)
            how = f"{train_opts['split']} -> {test_opts['split']}"
        start = time.perf_counter()
        distance, _ = nearest(perceptual_hashes(test.images), reference_hashes(train.images))
        seconds = time.perf_counter() - start
        exact = np.isin(hash64(test.hashes), hash64(train.hashes)).sum()
        print(f"   {name:30s} {how:22s} {len(train):5d} -> {len(test):4d}: {np.sum(distance <= NEAR_BITS):3d} flagged "
              f"({np.mean(distance <= NEAR_BITS):5.1%}), {exact} exact; {seconds:.2f} s")


def main() -> None:
    from metaseg.data.tasks import resolve_data_root

    root = resolve_data_root(required=True)
    modified_copies(root)
    real_splits(root)


if __name__ == "__main__":
    main()
