"""The one home of the pixel conversions between a decoded image and a network input: resizing to
the network's square size, and the channel count (a model's `in_channels` decides, never the cache).

Every path that feeds a network (the cache behind meta-training and evaluation, `metaseg adapt`'s
per-image prediction) resizes through `resize_image`/`resize_mask`, so an image is seen at the
same pixels whichever job reads it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as metaseg.models.unet.adapt_channels


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (C, size, size): box (area) filter when shrinking, bilinear when enlarging."""
    h, w, c = image.shape
    resample = Image.Resampling.BOX if (h >= size and w >= size) else Image.Resampling.BILINEAR
    channels = [np.asarray(Image.fromarray(image[..., i]).resize((size, size), resample)) for i in range(c)]
    return np.stack(channels)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) {0, 1} -> (size, size), nearest neighbour (stays binary)."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def to_channels(image_chw: np.ndarray, channels: int) -> np.ndarray:
    """(C, H, W) uint8 -> (channels, H, W): grayscale repeated, colour to luminance (rounded)."""
    c = image_chw.shape[0]
    if c == channels:
        return image_chw
    if c == 1:
        return np.repeat(image_chw, channels, axis=0)
    if c == 3 and channels == 1:
        luma = np.tensordot(np.asarray(LUMA), image_chw.astype(np.float64), axes=1)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[None]
    raise ValueError(f"cannot convert {c} channels to {channels}")


def conversion_note(native: list[int] | np.ndarray, channels: int) -> str:
    """What `to_channels` does to a task whose images have these native channel counts ('' = nothing)."""
    native = np.asarray(native)
    changed = int((native != channels).sum())
    if not changed:
        return ""
    if channels == 1:
        return f"{changed} of {len(native)} images are colour and were converted to luminance (1 channel)"
    return f"{changed} of {len(native)} images are grayscale and were repeated to {channels} channels"
