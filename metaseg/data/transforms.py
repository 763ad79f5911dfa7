"""Support-set augmentation (albumentations), used during meta-training only.

The episode sampler calls ``augment(images, masks, seed)`` on the K support rows of an
episode (uint8, before the float conversion) with a seed drawn from the episode's own
generator, so the same (sampler seed, episode index) gives the same augmented episode in any
process or worker. Query images are never augmented: the outer loss must measure
generalisation to untouched images.

Seeding note (albumentations 2.x): ``Compose.set_random_seed(s)`` gives *every* child transform
its own generator seeded with the same ``s``, so e.g. HorizontalFlip and VerticalFlip (both p=0.5)
would always fire together. We instead hand one shared generator to all transforms with
``set_random_state`` so their draws are sequential and independent.
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np


def default_support_transforms() -> A.Compose:
    """Geometry that preserves medical content (flips, 90° turns, small affine) plus mild photometry."""
    return A.Compose(
        [
            *dihedral_transforms(),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    )


def dihedral_transforms() -> list[A.BasicTransform]:
    """Flips and 90° turns only: every augmented image is one of 8 exact views of the original,
    so a model that caches per-image embeddings (medsam_lite) encodes each view once."""
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


AUGMENTATIONS = ("default", "dihedral")  # data.augment: true = "default", false = none


def support_augment(kind: "bool | str") -> "SupportAugment | None":
    """The support augmentation `data.augment` names (true/"default", "dihedral", false/"none")."""
    from metaseg.errors import MetasegError

    if kind is False or kind == "none":
        return None
    if kind is True or kind == "default":
        return SupportAugment()
    if kind == "dihedral":
        return SupportAugment(A.Compose(dihedral_transforms()))
    raise MetasegError(f"data.augment must be true, false or one of {list(AUGMENTATIONS)}, got {kind!r}")


class SupportAugment:
    """Callable ``(images uint8 (K,C,H,W), masks uint8 (K,H,W), seed) -> (images, masks)``, same shapes.

    Masks stay in {0, 1}: geometric transforms use nearest-neighbour interpolation for masks
    (albumentations' default) and photometric ones do not touch masks.
    """

    def __init__(self, compose: A.Compose | None = None) -> None:
        self.compose = compose if compose is not None else default_support_transforms()

    def __call__(self, images: np.ndarray, masks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out_images = np.empty_like(images)
        out_masks = np.empty_like(masks)
        for i in range(images.shape[0]):
            hwc = np.ascontiguousarray(images[i].transpose(1, 2, 0))
            result = self.compose(image=hwc, mask=masks[i])
            image = result["image"]
            out_images[i] = (image[..., None] if image.ndim == 2 else image).transpose(2, 0, 1)
            out_masks[i] = result["mask"]
        return out_images, out_masks
