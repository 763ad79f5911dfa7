"""Built-in procedural segmentation tasks: lesion-, vessel-, membrane- and organ-like images.

Each *family* is one task. Families differ in what makes the foreground the foreground
(brighter vs darker than the background, texture only, hue only, thin curvilinear shape,
ring shape, colour among same-brightness distractors...), so that a model fitted to one
family does not trivially solve another and learning to adapt quickly is worth something.

Determinism: image ``i`` of ``make_synthetic_task(family, seed=s, size=z)`` is drawn from its
own ``numpy.random.Generator`` seeded by ``(s, crc32(family), i)``, so it does not depend on
``n`` (the first 16 images of n=64 equal n=16) nor on the machine; shapes are defined in
normalised [0, 1] coordinates so one family looks alike at every size. Only numpy
(float64) and skimage.draw are used; no platform RNGs or thread-dependent reductions.

Generation loops over images (a few numpy ops each, ~0.2 ms at 64 px): simpler than
batching shapes with different vertex counts and still far below a second for 64 images.
"""
from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

import numpy as np
from skimage.draw import polygon as draw_polygon
from skimage.transform import resize

from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError

Image = np.ndarray  # float64 (3, H, W) in [0, 1]
Mask = np.ndarray  # bool (H, W)
Grid = tuple[np.ndarray, np.ndarray]  # normalised pixel-centre coordinates (yy, xx), each (H, W)


# ----------------------------------------------------------------------------- building blocks
def _grid(size: int) -> Grid:
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency random field in [0, 1] (H, W): a coarse random grid, bilinearly upsampled."""
    coarse = rng.random((cells, cells))
    return resize(coarse, (size, size), order=1, mode="edge", anti_aliasing=False)


def _fill(size: int, rgb) -> Image:
    return np.broadcast_to(np.asarray(rgb, dtype=np.float64)[:, None, None], (3, size, size)).copy()


def _paint(image: Image, mask: Mask, rgb, alpha: float | np.ndarray = 1.0) -> None:
    """Blend colour `rgb` into `image` where `mask` (in place)."""
    colour = np.asarray(rgb, dtype=np.float64)[:, None]
    image[:, mask] = (1 - alpha) * image[:, mask] + alpha * colour


def _blob(rng: np.random.Generator, g: Grid, cy: float, cx: float, radius: float, wobble: float) -> Mask:
    """Star-shaped blob: radius modulated by a few random harmonics of the polar angle."""
    yy, xx = g
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    r = np.full_like(theta, radius)
    for k in (2, 3, 5):
        r += radius * wobble * rng.uniform(-1, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) < r


def _ellipse(g: Grid, cy: float, cx: float, ry: float, rx: float, angle: float) -> Mask:
    yy, xx = g
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / rx) ** 2 + (v / ry) ** 2 < 1.0


def _centre(rng: np.random.Generator, margin: float) -> tuple[float, float]:
    return float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin))


def _noise(rng: np.random.Generator, image: Image, sigma: float, grey: bool = False) -> Image:
    shape = (1,) + image.shape[1:] if grey else image.shape
    return np.clip(image + rng.normal(0.0, sigma, shape), 0.0, 1.0)


# ----------------------------------------------------------------------------- families
def _bright_ellipse(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Endoscopy-like: a brighter, pinker elliptic polyp on a dark, unevenly lit red mucosa."""
    g = _grid(size)
    light = 0.55 + 0.45 * _smooth_field(rng, size)
    img = _fill(size, (0.45, 0.16, 0.12)) * light
    cy, cx = _centre(rng, 0.3)
    mask = _ellipse(g, cy, cx, rng.uniform(0.1, 0.22), rng.uniform(0.1, 0.22), rng.uniform(0, np.pi))
    _paint(img, mask, (0.95, 0.6, 0.55), alpha=0.85)
    return _noise(rng, img, 0.04), mask


def _dark_blob(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Dermoscopy-like: an irregular dark-brown lesion on bright skin, with soft hair-free texture."""
    g = _grid(size)
    img = _fill(size, (0.92, 0.76, 0.66)) * (0.9 + 0.1 * _smooth_field(rng, size, 6))
    cy, cx = _centre(rng, 0.35)
    mask = _blob(rng, g, cy, cx, rng.uniform(0.14, 0.26), wobble=0.6)
    shade = 0.6 + 0.4 * _smooth_field(rng, size, 8)[mask]
    _paint(img, mask, (0.35, 0.2, 0.12), alpha=shade)
    return _noise(rng, img, 0.03), mask


def _textured_polygon(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Texture-only foreground: a striped polygon with the same mean grey level as the noisy background."""
    yy, xx = _grid(size)
    img = _fill(size, (0.5, 0.5, 0.5))
    cy, cx = _centre(rng, 0.35)
    n_vertices = int(rng.integers(3, 8))
    # evenly spread angles with jitter: never a degenerate sliver
    angles = (np.arange(n_vertices) + rng.uniform(-0.3, 0.3, n_vertices)) * (2 * np.pi / n_vertices) + rng.uniform(0, 2 * np.pi)
    radii = rng.uniform(0.12, 0.3, n_vertices)
    rows = (cy + radii * np.sin(angles)) * size
    cols = (cx + radii * np.cos(angles)) * size
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = draw_polygon(rows, cols, shape=mask.shape)
    mask[rr, cc] = True
    freq, phase, angle = rng.uniform(18, 30), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = 0.5 + 0.3 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    img[:, mask] = stripes[mask]
    return _noise(rng, img, 0.12, grey=True), mask


def _vessels(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Fundus-like: thin dark curvilinear 'vessels' (sinusoidal curves) on an orange, vignetted disc."""
    yy, xx = _grid(size)
    img = _fill(size, (0.85, 0.45, 0.2)) * (1.0 - 0.5 * np.hypot(yy - 0.5, xx - 0.5))
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(3, 6))):
        width = rng.uniform(0.012, 0.025)
        amp, freq, phase, offset = rng.uniform(0.05, 0.2), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.85)
        along, across = (xx, yy) if rng.random() < 0.5 else (yy, xx)
        mask |= np.abs(across - (offset + amp * np.sin(2 * np.pi * freq * along + phase))) < width
    _paint(img, mask, (0.35, 0.08, 0.05), alpha=0.8)
    return _noise(rng, img, 0.03), mask


def _rings(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Ring-shaped foreground: a bright annulus whose interior looks exactly like the blue background."""
    yy, xx = _grid(size)
    img = _fill(size, (0.15, 0.25, 0.5)) * (0.8 + 0.2 * _smooth_field(rng, size))
    cy, cx = _centre(rng, 0.32)
    outer = rng.uniform(0.14, 0.26)
    inner = outer * rng.uniform(0.45, 0.7)
    d = np.hypot(yy - cy, xx - cx)
    mask = (d < outer) & (d > inner)
    _paint(img, mask, (0.6, 0.8, 0.95), alpha=0.8)
    return _noise(rng, img, 0.05), mask


def _faint_spot(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Low-contrast grey disc drowned in strong grey noise (ultrasound-like speckle)."""
    yy, xx = _grid(size)
    img = _fill(size, (0.4, 0.4, 0.4))
    cy, cx = _centre(rng, 0.25)
    mask = np.hypot(yy - cy, xx - cx) < rng.uniform(0.08, 0.16)
    img[:, mask] += 0.18
    return _noise(rng, img, 0.15, grey=True), mask


def _colour_spots(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Several small spots: the green ones are foreground, equally bright magenta ones are distractors."""
    yy, xx = _grid(size)
    img = _fill(size, (0.25, 0.25, 0.25))
    mask = np.zeros((size, size), dtype=bool)
    n_fg, n_bg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    for k in range(n_fg + n_bg):
        cy, cx = _centre(rng, 0.1)
        spot = np.hypot(yy - cy, xx - cx) < rng.uniform(0.05, 0.09)
        if k < n_fg:
            _paint(img, spot, (0.3, 0.75, 0.3))
            mask |= spot
        else:
            _paint(img, spot & ~mask, (0.7, 0.3, 0.7))
    return _noise(rng, img, 0.04), mask


def _membrane(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """EM-like: dark cell boundaries (edges of a random Voronoi tessellation) between textured grey cells."""
    yy, xx = _grid(size)
    n_cells = int(rng.integers(8, 16))
    seeds = rng.random((n_cells, 2))
    dist2 = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    nearest = np.argpartition(dist2, 1, axis=0)[:2]  # (2, H, W) indices of the two closest seeds
    d_a, d_b = np.take_along_axis(dist2, nearest, axis=0)
    seed_gap = np.linalg.norm(seeds[nearest[0]] - seeds[nearest[1]], axis=-1)
    # exact distance from each pixel to the bisector between its two closest seeds = to the cell wall
    wall_distance = (d_b - d_a) / (2.0 * np.maximum(seed_gap, 1e-9))
    mask = wall_distance < rng.uniform(0.01, 0.018)
    cell_tone = rng.uniform(0.55, 0.8, n_cells)[nearest[0]]
    img = np.broadcast_to(cell_tone, (3, size, size)).copy()
    img[:, mask] = 0.15
    return _noise(rng, img, 0.08, grey=True), mask


def _lungs(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Chest-X-ray-like: two large dark, slightly tilted lung fields in an unevenly lit grey thorax."""
    yy, xx = _grid(size)
    img = np.broadcast_to(0.55 + 0.3 * np.abs(xx - 0.5) + 0.1 * _smooth_field(rng, size), (3, size, size)).copy()
    cy, sep = rng.uniform(0.45, 0.55), rng.uniform(0.18, 0.24)
    ry, rx, tilt = rng.uniform(0.25, 0.33), rng.uniform(0.1, 0.15), rng.uniform(0.05, 0.2)
    mask = _ellipse((yy, xx), cy, 0.5 - sep, ry, rx, -tilt) | _ellipse((yy, xx), cy, 0.5 + sep, ry, rx, tilt)
    img[:, mask] = 0.2 + 0.1 * img[:, mask]
    return _noise(rng, img, 0.04, grey=True), mask


def _hue_blob(rng: np.random.Generator, size: int) -> tuple[Image, Mask]:
    """Hue-only contrast: a blob with the same luminance as the background but a different hue."""
    g = _grid(size)
    img = _fill(size, (0.6, 0.45, 0.45))
    cy, cx = _centre(rng, 0.3)
    mask = _blob(rng, g, cy, cx, rng.uniform(0.12, 0.24), wobble=0.4)
    # (0.6, 0.45, 0.45) and (0.4, 0.52, 0.56) have (nearly) equal Rec.601 luma 0.494
    _paint(img, mask, (0.4, 0.55, 0.6))
    return _noise(rng, img, 0.05, grey=True), mask


_FAMILY_FUNCS: dict[str, Callable[[np.random.Generator, int], tuple[Image, Mask]]] = {
    "bright_ellipse": _bright_ellipse,
    "dark_blob": _dark_blob,
    "textured_polygon": _textured_polygon,
    "vessels": _vessels,
    "rings": _rings,
    "faint_spot": _faint_spot,
    "colour_spots": _colour_spots,
    "membrane": _membrane,
    "lungs": _lungs,
    "hue_blob": _hue_blob,
}

FAMILIES: tuple[str, ...] = tuple(_FAMILY_FUNCS)


def make_synthetic_task(family: str, n: int = 64, size: int = 64, seed: int = 0) -> TaskArrays:
    """Generate `n` (image, mask) pairs of one family: uint8 images (n, 3, size, size), masks (n, size, size) in {0,1}.

    Deterministic in (family, seed, size) per image index, identical on every machine.
    """
    if family not in _FAMILY_FUNCS:
        raise MetasegError(f"unknown synthetic family {family!r}; known: {', '.join(FAMILIES)}")
    if n < 1 or size < 8:
        raise MetasegError(f"synthetic task {family!r} needs n >= 1 and size >= 8 (got n={n}, size={size})")
    if seed < 0:
        raise MetasegError(f"synthetic task {family!r}: seed must be >= 0 (got {seed})")
    draw = _FAMILY_FUNCS[family]
    family_key = zlib.crc32(family.encode())
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, family_key, i])
        image, mask = draw(rng, size)
        images[i] = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        masks[i] = mask
    ids = [f"{family}_{seed}_{i:04d}" for i in range(n)]
    hashes = [hashlib.sha1(images[i].tobytes()).hexdigest() for i in range(n)]
    sources = [f"synthetic:{family}#{i}" for i in range(n)]
    return TaskArrays(name=family, images=images, masks=masks, ids=ids, hashes=hashes, sources=sources)
