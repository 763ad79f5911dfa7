"""Decode one image or mask file into uint8 arrays with explicit, documented conversions.

Why hand-written: every conversion rule here (channel handling, bit depth, mask binarisation)
must be explicit and reported, so that a grayscale X-ray is never silently turned into RGB
and a JPEG mask never silently keeps its compression noise.

Images -> uint8 (H, W, C) with C = 1 (grayscale) or 3 (colour):
  * an RGB file whose three channels are identical counts as grayscale (C = 1);
  * RGBA / LA: the alpha channel is dropped; palette and 1-bit files are expanded;
  * 16-bit, 32-bit and float files are linearly rescaled from the image's own [min, max] to [0, 255].
Masks -> uint8 (H, W) in {0, 1} (see `binarise` for the exact rules).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from metaseg.data.types import Decoded, Pair, PairError
from metaseg.errors import MetasegError

LOSSY_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}


def _unreadable(path: Path, reason: object) -> PairError:
    return PairError("unreadable", path, f"cannot read {path}: {reason}")


def _read_tiff(path: Path) -> np.ndarray:
    """tifffile reads TIFFs that Pillow cannot (e.g. the official CVC-ClinicDB frames)."""
    import tifffile

    try:
        arr = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises many exception types for corrupt files
        raise _unreadable(path, exc) from None
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] > 4):
        raise _unreadable(path, f"unsupported TIFF shape {arr.shape} (multi-page or volume?)")
    return arr


def _open_pil(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from None
    if getattr(im, "n_frames", 1) > 1 and path.suffix.lower() in TIFF_SUFFIXES:
        raise _unreadable(path, f"multi-page TIFF with {im.n_frames} pages is not a 2D image")
    return im


def _raw_array(path: Path, for_mask: bool) -> tuple[np.ndarray, list[str]]:
    """Pixels as stored (any dtype), with colour modes reduced to what an image or a mask needs."""
    path = Path(path)
    if not path.is_file():
        raise PairError("missing file", path, f"file not found: {path}")
    notes: list[str] = []
    try:
        im = _open_pil(path)
    except PairError:
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise
        return _reduce_channels(_read_tiff(path), notes), notes
    mode = im.mode
    if mode == "1":
        arr = np.array(im, dtype=bool) if for_mask else np.array(im.convert("L"))
    elif mode == "P" and for_mask:
        arr = np.array(im)  # palette indices are the labels
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        arr = np.array(im.convert("RGBA" if has_alpha else "RGB"))
        notes.append("palette expanded")
    elif mode in ("L", "LA", "RGB", "RGBA") or mode.startswith("I") or mode == "F":
        arr = np.array(im)
    else:  # CMYK, YCbCr, LAB, HSV, ...
        arr = np.array(im.convert("RGB"))
        notes.append(f"{mode} converted to RGB")
    im.close()
    return _reduce_channels(arr, notes), notes


def _reduce_channels(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """Drop alpha: LA -> L, RGBA -> RGB (documented: alpha is not image content)."""
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]
        notes.append("alpha channel dropped")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 as is; bool -> {0, 255}; anything else linearly rescaled from its [min, max] to [0, 255]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image(path: Path | str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode an image file to uint8 (H, W, C), C in {1, 3}; returns the conversions applied."""
    path = Path(path)
    arr, notes = _raw_array(path, for_mask=False)
    if arr.dtype != np.uint8:
        notes.append(f"{arr.dtype} rescaled to 8-bit (min-max)")
        arr = to_uint8(arr)
    if arr.ndim == 3:
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            arr = arr[..., :1]
            notes.append("identical RGB channels -> grayscale")
    else:
        arr = arr[..., None]
    return np.ascontiguousarray(arr), tuple(notes)


def binarise(arr: np.ndarray, lossy: bool = False) -> tuple[np.ndarray, str]:
    """Mask values -> {0, 1}, and a one-line description of the rule used.

    * 1-bit, or exactly the values {0, v} (e.g. {0, 1}, {0, 255}): foreground = value > 0
      (for JPEG masks only {0, 255} counts as exact: anything else may be compression noise);
    * a lossless file whose maximum is below half the range (a label map such as {0, 1, 2}): foreground = value > 0;
    * otherwise (JPEG artefacts, interpolated edges): foreground = value >= half the range (128 for 8-bit).
    """
    if arr.dtype == bool:
        return arr.astype(np.uint8), "binary (1-bit)"
    values = np.unique(arr)
    two_valued = len(values) == 1 or (len(values) == 2 and values[0] == 0)
    if two_valued and (not lossy or values[-1] == 255):
        shown = "{" + ", ".join(str(v.item()) for v in values) + "}"
        return (arr > 0).astype(np.uint8), f"binary {shown}"
    top = values[-1].item()
    if np.issubdtype(arr.dtype, np.floating):
        half = 0.5 if top <= 1 else 128
    else:
        half = 128 if top <= 255 else (int(np.iinfo(arr.dtype).max) + 1) // 2
    if not lossy and top < half:
        return (arr > 0).astype(np.uint8), "label map (max < half range): foreground = value > 0"
    return (arr >= half).astype(np.uint8), f"non-binary: foreground = value >= {half}"


def read_mask(path: Path | str) -> tuple[np.ndarray, str]:
    """Decode a mask file to uint8 (H, W) in {0, 1}; colour masks use the maximum over channels."""
    path = Path(path)
    arr, notes = _raw_array(path, for_mask=True)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
        notes.append("colour mask: max over channels")
    mask, rule = binarise(arr, lossy=path.suffix.lower() in LOSSY_SUFFIXES)
    return mask, "; ".join([rule, *notes])


def decode_pair(pair: Pair) -> Decoded:
    """Decode and validate one pair; raises PairError (a MetasegError) naming the file at fault."""
    if pair.meta.get("volume"):
        from metaseg.data.readers.msd import decode_slice  # volumes need nibabel; import only when used

        return decode_slice(pair)
    if pair.mask is None:
        raise PairError("missing mask", pair.image, f"missing mask for image {pair.image}")
    image, notes = read_image(pair.image)
    mask, rule = read_mask(pair.mask)
    extras = pair.meta.get("extra_masks", ())
    for extra in extras:  # BUSI: an image's second/third lesion file
        more, _ = read_mask(extra)
        if more.shape != mask.shape:
            raise PairError("size mismatch", extra, f"size mismatch: mask {extra} differs from {pair.mask}")
        mask = mask | more
    if extras:
        rule += f"; union of {len(extras) + 1} mask files"
    if image.shape[:2] != mask.shape:
        (h, w), (mh, mw) = image.shape[:2], mask.shape
        raise PairError(
            "size mismatch", pair.mask, f"size mismatch: image {pair.image} is {w}x{h} but mask {pair.mask} is {mw}x{mh}"
        )
    if pair.meta.get("invert_mask"):
        mask = 1 - mask
        rule += "; inverted (the dataset's foreground is stored as 0)"
    return Decoded(image, mask, rule, notes)
