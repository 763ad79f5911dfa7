"""Small file-listing helpers shared by the layout readers (pairing by file stem)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from metaseg.data.types import Pair

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".webp"}


def is_visible_image(path: Path) -> bool:
    """An image file that is not hidden (skips macOS '._*' resource forks and dot files)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: Path, recursive: bool = False, pattern: str = "*") -> list[Path]:
    """Sorted image files in `folder` (optionally in its subfolders too)."""
    if not folder.is_dir():
        return []
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(p for p in found if is_visible_image(p))


def rel_stem(path: Path, base: Path) -> str:
    """Path relative to `base` without its extension, '/'-separated: the stable id of an example."""
    return path.relative_to(base).with_suffix("").as_posix()


def stem_index(files: Iterable[Path], base: Path) -> dict[str, Path]:
    """Relative stem -> file, plus a lower-case alias of each stem; the first file (sorted) wins a tie."""
    index: dict[str, Path] = {}
    for path in sorted(files):
        stem = rel_stem(path, base)
        index.setdefault(stem, path)
        index.setdefault(stem.lower(), path)
    return index


def find_child_dir(root: Path, names: Sequence[str]) -> Path | None:
    """First child folder of `root` whose name equals one of `names` (case-insensitive, in `names` order)."""
    if not root.is_dir():
        return None
    children = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    for name in names:
        if name.lower() in children:
            return children[name.lower()]
    return None


def pair_by_stem(
    images: Iterable[Path],
    image_base: Path,
    masks: dict[str, Path],
    mask_stems: Callable[[str], Sequence[str]],
    meta: dict | None = None,
) -> list[Pair]:
    """Pair each image with the first candidate mask stem found in `masks` (None when there is none)."""
    pairs = []
    for image in images:
        pid = rel_stem(image, image_base)
        mask = next((masks.get(s, masks.get(s.lower())) for s in mask_stems(pid) if s in masks or s.lower() in masks), None)
        pairs.append(Pair(pid, image, mask, dict(meta or {})))
    return pairs


def same_stem(stem: str) -> list[str]:
    return [stem]
