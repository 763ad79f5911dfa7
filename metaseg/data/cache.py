"""Validated, resized task arrays cached on disk, so that episodes never decode image files.

`load_task` lists the pairs, hashes every source file (sha1 of its bytes), and looks for
`<cache_dir>/<key>.npz` where key = sha1 of (layout, size, options, category, every pair's id and
file hashes). Only on a miss are the files decoded (`metaseg.data.images.decode_pair`), resized
to size x size (aspect ratio NOT kept: images with area/anti-aliased resampling, masks nearest
neighbour) and saved. Changing a file, the size or an option gives a new entry; old entries stay
until you delete the folder (default ~/.cache/metaseg, or $METASEG_CACHE).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metaseg.data import images as imagesmod
from metaseg.data.readers import detect_layout, list_pairs
from metaseg.data.types import Pair, TaskArrays
from metaseg.errors import MetasegError

CACHE_VERSION = 1  # bump when decoding/resizing rules change, so old entries are not reused


def default_cache_dir() -> Path:
    return Path(os.environ.get("METASEG_CACHE") or Path.home() / ".cache" / "metaseg").expanduser()


def file_sha1(path: Path, _memo: dict[tuple[str, int, int], str] = {}) -> str:
    """sha1 of the file bytes (memoised per process by path, size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        h = hashlib.sha1()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _memo[key] = h.hexdigest()
    return _memo[key]


def pair_hash(pair: Pair) -> str:
    """Content hash of the pair's image (for leakage checks); a volume slice adds its axis and index."""
    base = file_sha1(pair.image)
    return f"{base}#{'xyz'[pair.meta['axis']]}{pair.meta['slice']}" if "slice" in pair.meta else base


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (C, size, size): box (area) filter when shrinking, bilinear when enlarging."""
    h, w, c = image.shape
    resample = Image.Resampling.BOX if (h >= size and w >= size) else Image.Resampling.BILINEAR
    channels = [np.asarray(Image.fromarray(image[..., i]).resize((size, size), resample)) for i in range(c)]
    return np.stack(channels)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def _cache_key(layout: str, size: int, category: str | None, options: dict, pairs: list[Pair], hashes: list[str], skip_bad: bool) -> str:
    h = hashlib.sha1()
    head = {"v": CACHE_VERSION, "layout": layout, "size": size, "category": category, "options": options, "skip_bad": skip_bad}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for pair, image_hash in zip(pairs, hashes):
        mask_hash = file_sha1(pair.mask) if pair.mask is not None and pair.mask.is_file() else "-"
        h.update(json.dumps([pair.id, image_hash, mask_hash, pair.meta], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _decode_all(pairs: list[Pair], size: int, skip_bad: bool) -> tuple[list[int], np.ndarray, np.ndarray]:
    kept, images, masks, bad = [], [], [], []
    for i, pair in enumerate(pairs):
        try:
            decoded = imagesmod.decode_pair(pair)
        except imagesmod.PairError as exc:
            if not skip_bad:
                raise
            bad.append(str(exc))
            continue
        kept.append(i)
        images.append(resize_image(decoded.image, size))
        masks.append(resize_mask(decoded.mask, size))
    if bad:
        warnings.warn(f"skipped {len(bad)} bad pair(s): " + "; ".join(bad), stacklevel=3)
    if not kept:
        raise MetasegError("no usable pair left after skipping bad ones")
    if len({im.shape[0] for im in images}) > 1:  # mixed grayscale/colour: replicate gray to 3 channels
        images = [np.repeat(im, 3, axis=0) if im.shape[0] == 1 else im for im in images]
    return kept, np.stack(images), np.stack(masks)


def _save(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically (temp file + rename) so that an interrupted run never leaves a broken entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_task(
    root: str | Path,
    layout: str | None = None,
    size: int = 128,
    category: str | None = None,
    cache_dir: str | Path | None = None,
    name: str | None = None,
    skip_bad: bool = False,
    **reader_options: Any,
) -> TaskArrays:
    """A dataset (or one category of it) as validated uint8 arrays of size x size, cached on disk.

    Raises MetasegError naming the file for a missing mask, an unreadable file or a size mismatch;
    with skip_bad=True such pairs are left out with a warning instead. Empty masks are kept.
    """
    if int(size) < 8:
        raise MetasegError(f"size={size} is too small (the target square side, e.g. 128)")
    size = int(size)
    layout = layout or detect_layout(root)
    pairs = list_pairs(root, layout, category=category, **reader_options)
    hashes = [pair_hash(p) for p in pairs]
    key = _cache_key(layout, size, category, reader_options, pairs, hashes, skip_bad)
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = path / f"{key}.npz"
    task_name = name or Path(root).resolve().name + (f":{category}" if category else "")
    if entry.is_file():
        try:
            with np.load(entry, allow_pickle=False) as data:
                kept = data["kept"].tolist()
                return TaskArrays(
                    task_name, data["images"], data["masks"], [pairs[i].id for i in kept],
                    [hashes[i] for i in kept], [_source(pairs[i]) for i in kept],
                )
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry (e.g. disk full earlier): rebuild it below
    kept, images, masks = _decode_all(pairs, size, skip_bad)
    try:
        _save(entry, images=images, masks=masks, kept=np.array(kept, dtype=np.int64))
    except OSError as exc:
        raise MetasegError(f"cannot write the cache entry {entry}: {exc} (set --cache-dir or $METASEG_CACHE)") from None
    return TaskArrays(task_name, images, masks, [pairs[i].id for i in kept], [hashes[i] for i in kept], [_source(pairs[i]) for i in kept])


def _source(pair: Pair) -> str:
    return f"{pair.image}#slice{pair.meta['slice']}" if "slice" in pair.meta else str(pair.image)
