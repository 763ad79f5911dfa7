"""GenSeg's mask augmentation: new masks from the real ones, to be turned into images by the
mask -> image generator. Geometric only (a mask has no colours), then re-binarised, so a new
mask is a plausible lesion/organ outline that no real image was ever drawn for.

The transform is albumentations' (flip, pad-or-crop, affine), not hand-written; parameters are
those of the GenSeg paper: horizontal flip p=0.5, crop/pad 0-10 %, scale 0.8-1.2, translate
+-10 %, rotate +-15 deg, shear +-8 deg. Masks are warped with nearest-neighbour interpolation
and thresholded again at 0.5, so the output is exactly {0, 1}.
"""
from __future__ import annotations

import numpy as np


def mask_transform(p: float = 1.0):
    """The albumentations pipeline (applied to the mask passed as `image`, nearest interpolation)."""
    import albumentations as A
    import cv2

    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.CropAndPad(percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT, fill=0, keep_size=True,
                     interpolation=cv2.INTER_NEAREST, p=p),
        A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=(-15, 15), shear=(-8, 8),
                 interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, p=p),
    ])


def augment_masks(masks: np.ndarray, seed: int, n: int | None = None) -> np.ndarray:
    """`n` (default len(masks)) new {0,1} uint8 masks (n, H, W), each from a seeded random real one.

    Deterministic for a seed (albumentations is seeded through `Compose.set_random_seed`)."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) == 0:
        raise ValueError(f"augment_masks expects a non-empty (N, H, W) mask array, got shape {masks.shape}")
    n = len(masks) if n is None else int(n)
    rng = np.random.default_rng(seed)
    pipe = mask_transform()
    pipe.set_random_seed(int(rng.integers(0, 2**31 - 1)))
    rows = rng.integers(0, len(masks), n)
    out = np.empty((n,) + masks.shape[1:], dtype=np.uint8)
    for i, r in enumerate(rows):
        m = (masks[r] > 0).astype(np.uint8) * 255
        out[i] = (pipe(image=m)["image"] > 127).astype(np.uint8)
    return out


def augment_pairs(images: np.ndarray, masks: np.ndarray, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same geometric pipeline on (image, mask) pairs (the `real_aug` baseline: classical
    augmentation of the real pairs): uint8 (N, C, H, W) images (linear interpolation) and their
    {0,1} masks (nearest, re-binarised)."""
    import albumentations as A

    n = len(masks) if n is None else int(n)
    rng = np.random.default_rng(seed)
    pipe = mask_transform()
    pipe = A.Compose(list(pipe.transforms))  # images warp linearly; mask targets stay nearest
    for t in pipe.transforms:
        if hasattr(t, "interpolation"):
            import cv2
            t.interpolation = cv2.INTER_LINEAR
            t.mask_interpolation = cv2.INTER_NEAREST
    pipe.set_random_seed(int(rng.integers(0, 2**31 - 1)))
    rows = rng.integers(0, len(masks), n)
    out_x = np.empty((n,) + images.shape[1:], dtype=np.uint8)
    out_m = np.empty((n,) + masks.shape[1:], dtype=np.uint8)
    for i, r in enumerate(rows):
        res = pipe(image=np.ascontiguousarray(images[r].transpose(1, 2, 0)), mask=masks[r].astype(np.uint8))
        img = res["image"]
        out_x[i] = (img[..., None] if img.ndim == 2 else img).transpose(2, 0, 1)
        out_m[i] = (res["mask"] > 0).astype(np.uint8)
    return out_x, out_m
