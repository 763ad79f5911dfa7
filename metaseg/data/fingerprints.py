"""Image fingerprints for leakage checks: exact content hashes and a perceptual (DCT) hash.

An exact hash (64 bits derived from the image file's sha1) proves that an image was used; it misses a
dataset redistributed at another size or JPEG quality (ISIC-2017 exists both squashed to 256x256
and at its true aspect). The perceptual hash catches those: the image is averaged down to a
32x32 grayscale thumbnail (aspect not kept, so a squashed copy gives the same thumbnail), its 2D
DCT is taken, and the 8x8 lowest frequencies become 64 bits (1 = above their median). Two images
whose hashes differ in at most `NEAR_BITS` bits are near-duplicates; training images are also
hashed after centred crops of 2, 4 and 6% per side, so that a cropped copy is found too.
Everything is vectorised over a batch of images (an area-resize matrix product, one
`scipy.fft.dctn`, XOR + popcount).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.fft import dctn

THUMB = 32  # thumbnail side
LOW = 8  # LOW x LOW lowest DCT frequencies -> 64 bits
NEAR_BITS = 4  # Hamming distance at or below which two images are near-duplicates (docs/adapt-evaluate.md)
WORDS = LOW * LOW // 64  # uint64 words per hash
BITS = LOW * LOW
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
CROPS = (0.0, 0.02, 0.04, 0.06)  # centred crops (fraction per side) hashed for every training image
HASH_NAME = f"dct{THUMB}x{LOW}-median-crops{len(CROPS)}-v1"  # stored in checkpoints: a record from another hash is not compared
_CHUNK = 256  # images per vectorised step (bounds memory at 128 px and above)


def hash64(content_hashes: Iterable[str]) -> np.ndarray:
    """metaseg's content hashes (sha1 hex, '#slice' suffix for volumes) as uint64 (first 64 bits of a sha1)."""
    return np.array([int(hashlib.sha1(h.encode()).hexdigest()[:16], 16) for h in content_hashes], dtype=np.uint64)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an exact box (area) resize: output i averages input [i, i+1) * n_in / n_out."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _gray(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, H, W) float32 luma (C = 1 is taken as it is)."""
    images = images.astype(np.float32)
    return images[:, 0] if images.shape[1] == 1 else np.einsum("nchw,c->nhw", images[:, :3], LUMA)


def _bits(thumbs: np.ndarray) -> np.ndarray:
    """(N, THUMB, THUMB) -> (N, WORDS) uint64: the LOW x LOW lowest DCT coefficients above their median
    (DC, the mean brightness, left out: its bit is always 0)."""
    low = dctn(thumbs, type=2, axes=(1, 2), norm="ortho")[:, :LOW, :LOW].reshape(len(thumbs), LOW * LOW)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    bits[:, 0] = False
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """(N, WORDS) uint64 DCT hash of each image of a (N, C, H, W) uint8 batch (a task's arrays)."""
    n, _, h, w = images.shape
    rows, cols = _area_matrix(h, THUMB), _area_matrix(w, THUMB)
    out = np.empty((n, WORDS), np.uint64)
    for start in range(0, n, _CHUNK):
        gray = _gray(images[start:start + _CHUNK])
        out[start:start + len(gray)] = _bits(np.einsum("oh,nhw,pw->nop", rows, gray, cols, optimize=True))
    return out


def reference_hashes(images: np.ndarray) -> np.ndarray:
    """(len(CROPS) * N, WORDS): the hashes of a batch of training images and of their centred crops
    (crop-major: row r belongs to image r % N), so that a query cropped by up to ~7% per side still
    lies within NEAR_BITS of one of them."""
    _, _, h, w = images.shape
    parts = []
    for f in CROPS:
        dy, dx = round(f * h), round(f * w)
        parts.append(perceptual_hashes(images[:, :, dy:h - dy or None, dx:w - dx or None]))
    return np.concatenate(parts)


def perceptual_hash(image_hwc: np.ndarray) -> np.ndarray:
    """The (WORDS,) DCT hash of one (H, W, C) uint8 image at its original size (e.g. a file `adapt` segments)."""
    return perceptual_hashes(np.moveaxis(image_hwc, 2, 0)[None])[0]


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has it built in; older numpy counts bytes)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[values.view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1)


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For every (WORDS,) query hash: (smallest Hamming distance to any reference hash, index of that
    reference). With no references the distance is BITS + 1 (more than any two hashes can differ)."""
    queries = np.asarray(queries, np.uint64).reshape(-1, WORDS)
    references = np.asarray(references, np.uint64).reshape(-1, WORDS)
    best = np.full(len(queries), BITS + 1, np.int64)
    where = np.full(len(queries), -1, np.int64)
    if len(references) == 0:
        return best, where
    for start in range(0, len(queries), chunk):
        dist = popcount(queries[start:start + chunk, None, :] ^ references[None, :, :]).sum(axis=-1, dtype=np.int64)
        where[start:start + chunk] = dist.argmin(axis=1)
        best[start:start + chunk] = dist.min(axis=1)
    return best, where


@dataclass
class Fingerprints:
    """The images a checkpoint was meta-trained or meta-validated on: sorted unique exact and perceptual hashes."""

    exact: np.ndarray
    perceptual: np.ndarray

    @classmethod
    def of(cls, exact: Iterable[np.ndarray], perceptual: Iterable[np.ndarray]) -> "Fingerprints":
        exact = [np.asarray(e, np.uint64).reshape(-1) for e in exact]
        perceptual = [np.asarray(p, np.uint64).reshape(-1, WORDS) for p in perceptual]
        return cls(np.unique(np.concatenate(exact or [np.zeros(0, np.uint64)])),
                   np.unique(np.concatenate(perceptual or [np.zeros((0, WORDS), np.uint64)]), axis=0))

    def to_record(self) -> dict:
        """Plain tensors for a checkpoint (torch.load(weights_only=True) reads int64 tensors, not numpy)."""
        import torch

        return {"hash": HASH_NAME, "near_bits": NEAR_BITS, "images": len(self.exact),
                "exact": torch.from_numpy(self.exact.view(np.int64).copy()),
                "perceptual": torch.from_numpy(self.perceptual.view(np.int64).copy())}

    @classmethod
    def from_record(cls, record: dict) -> "Fingerprints | None":
        """The checkpoint's record, or None when it was written with another perceptual hash (or none)."""
        if not isinstance(record, dict) or record.get("hash") != HASH_NAME:
            return None
        return cls(record["exact"].numpy().view(np.uint64), record["perceptual"].numpy().view(np.uint64).reshape(-1, WORDS))

    def __len__(self) -> int:
        return len(self.exact)

    def match(self, exact: np.ndarray, perceptual: np.ndarray, near_bits: int = NEAR_BITS) -> tuple[np.ndarray, np.ndarray]:
        """(is an exact copy, is a near-duplicate and not an exact copy) for each query image."""
        exact = np.asarray(exact, np.uint64)
        pos = np.searchsorted(self.exact, exact).clip(0, max(len(self.exact) - 1, 0))
        same = (self.exact[pos] == exact) if len(self.exact) else np.zeros(len(exact), bool)
        distance, _ = nearest(perceptual, self.perceptual)
        return same, (distance <= near_bits) & ~same


def task_fingerprints(tasks: Sequence) -> Fingerprints:
    """Fingerprints of every image of some TaskArrays (e.g. meta-train + meta-val)."""
    return Fingerprints.of([hash64(t.hashes) for t in tasks], [reference_hashes(t.images) for t in tasks])
