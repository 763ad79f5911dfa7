"""Validated, resized task arrays cached on disk, so that episodes never decode image files.

`load_task` lists the pairs, hashes every source file (sha1 of its bytes), drops byte-identical
images after the first (`list_task`: a dataset that holds one image under two names would otherwise
put it in the support and the query of one episode), and looks for `<cache_dir>/<key>.npz` where
key = sha1 of (layout, size, options, category, every kept pair's id and file hashes). Only on a
miss are the files decoded (`metaseg.data.images.decode_pair`), resized to size x size
(`metaseg.data.resize`: aspect ratio NOT kept) and saved at their native channel counts. Changing
a file, the size or an option gives a new entry; old entries stay until you delete the folder
(default ~/.cache/metaseg, or $METASEG_CACHE).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaseg.data import images as imagesmod
from metaseg.data.readers import detect_layout, list_pairs
from metaseg.data.resize import conversion_note, resize_image, resize_mask, to_channels
from metaseg.data.types import Pair, TaskArrays
from metaseg.errors import MetasegError, option

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


def _cache_key(layout: str, size: int, category: str | None, options: dict, pairs: list[Pair], hashes: list[str], skip_bad: bool) -> str:
    h = hashlib.sha1()
    head = {"v": CACHE_VERSION, "layout": layout, "size": size, "category": category, "options": options, "skip_bad": skip_bad}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for pair, image_hash in zip(pairs, hashes):
        mask_hash = file_sha1(pair.mask) if pair.mask is not None and pair.mask.is_file() else "-"
        h.update(json.dumps([pair.id, image_hash, mask_hash, pair.meta], sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class Listing:
    """The pairs a task is built from (no pixels decoded): byte-identical images after the first dropped."""

    layout: str
    pairs: list[Pair]
    hashes: list[str]
    duplicates: list[tuple[Pair, Pair]] = field(default_factory=list)  # (dropped, the kept pair it repeats)


def list_task(root: str | Path, layout: str | None = None, category: str | None = None, **reader_options: Any) -> Listing:
    """List and hash the pairs of a dataset; keep the first (by id) of images with the same content hash."""
    layout = layout or detect_layout(root)
    pairs, hashes, duplicates, first = [], [], [], {}
    for pair in list_pairs(root, layout, category=category, **reader_options):
        h = pair_hash(pair)
        if h in first:
            duplicates.append((pair, first[h]))
            continue
        first[h] = pair
        pairs.append(pair)
        hashes.append(h)
    return Listing(layout, pairs, hashes, duplicates)


def _decode_all(pairs: list[Pair], size: int, skip_bad: bool) -> tuple[list[int], list[np.ndarray], np.ndarray]:
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
    return kept, images, np.stack(masks)


def _native_arrays(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """What a cache entry stores: every image at its native channel count (a mixed task in two arrays)."""
    native = np.array([im.shape[0] for im in images], dtype=np.int8)
    if len(set(native.tolist())) == 1:
        return {"images": np.stack(images), "native": native}
    return {"gray": np.stack([im for im in images if im.shape[0] == 1]),
            "colour": np.stack([im for im in images if im.shape[0] != 1]), "native": native}


def _native_of_old_entry(images: np.ndarray) -> np.ndarray:
    """Native channel counts of an entry stored as one array. Exact: the decoder makes any image whose
    channels are all equal grayscale, so a 3-channel row with equal channels was a repeated gray one."""
    if images.shape[1] != 3:
        return np.full(len(images), images.shape[1], dtype=np.int8)
    gray = (images[:, 0] == images[:, 1]).all(axis=(1, 2)) & (images[:, 0] == images[:, 2]).all(axis=(1, 2))
    return np.where(gray, 1, 3).astype(np.int8)


def _assemble(data: Any, channels: int | None) -> tuple[np.ndarray, str]:
    """One (N, C, H, W) array from a cache entry, and what was converted to get it ('' = nothing).

    A task whose images share a channel count stays native (the model converts at its input, see
    metaseg.models.unet.adapt_channels); a mixed task is brought to `channels` (the model's
    in_channels; 3 when the caller has no model) image by image with `to_channels`."""
    native = data["native"] if "native" in data else _native_of_old_entry(data["images"])
    if len(set(native.tolist())) == 1:
        return data["images"], ""
    if "images" in data:  # an entry written before native channels were kept: its gray rows were repeated
        data = {"gray": data["images"][native == 1][:, :1], "colour": data["images"][native != 1]}
    target = int(channels or 3)
    gray, colour = iter(data["gray"]), iter(data["colour"])
    images = [to_channels(next(gray) if c == 1 else next(colour), target) for c in native.tolist()]
    return np.stack(images), conversion_note(native, target)


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
    channels: int | None = None,
    **reader_options: Any,
) -> TaskArrays:
    """A dataset (or one category of it) as validated uint8 arrays of size x size, cached on disk.

    Raises MetasegError naming the file for a missing mask, an unreadable file or a size mismatch;
    with skip_bad=True such pairs are left out with a warning instead. Empty masks are kept.
    `channels` (a model's in_channels) decides the conversion of a task mixing grayscale and colour
    images; the returned task says what was converted (`conversion`) and which duplicates it dropped.
    """
    if int(size) < 8:
        raise MetasegError(f"size={size} is too small (the target square side, e.g. 128)")
    size = int(size)
    listing = list_task(root, layout, category, **reader_options)
    pairs, hashes = listing.pairs, listing.hashes
    key = _cache_key(listing.layout, size, category, reader_options, pairs, hashes, skip_bad)
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = path / f"{key}.npz"
    task_name = name or Path(root).resolve().name + (f":{category}" if category else "")
    stored = None
    if entry.is_file():
        try:
            with np.load(entry, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
                images, conversion = _assemble(stored, channels)
        except (OSError, ValueError, KeyError, StopIteration):
            stored = None  # unreadable entry (e.g. disk full earlier): rebuild it below
    if stored is None:
        kept, decoded, masks = _decode_all(pairs, size, skip_bad)
        stored = {**_native_arrays(decoded), "masks": masks, "kept": np.array(kept, dtype=np.int64)}
        try:
            _save(entry, **stored)
        except OSError as exc:
            raise MetasegError(f"cannot write the cache entry {entry}: {exc} "
                           f"(set {' or '.join(o for o in (option('cache_dir'), '$METASEG_CACHE') if o)})") from None
        images, conversion = _assemble(stored, channels)
    kept = stored["kept"].tolist()
    return TaskArrays(task_name, images, stored["masks"], [pairs[i].id for i in kept], [hashes[i] for i in kept],
                      [_source(pairs[i]) for i in kept], conversion=conversion,
                      duplicates=[(d.id, k.id) for d, k in listing.duplicates])


def _source(pair: Pair) -> str:
    return f"{pair.image}#slice{pair.meta['slice']}" if "slice" in pair.meta else str(pair.image)
