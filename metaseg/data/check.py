"""Validate a dataset folder once and say exactly which file is wrong (`metaseg data check`).

Errors (stop loading): missing masks, unreadable files, image/mask size mismatches.
Findings that loading handles in a documented way: non-binary masks (and the rule used to
binarise them), empty masks (kept), colour/bit-depth conversions, mixed channel counts (and the
conversion a model's in_channels implies), byte-identical images under two names (the first kept).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaseg.data import images as imagesmod
from metaseg.data.cache import list_task
from metaseg.data.readers import list_pairs
from metaseg.data.readers._common import image_files
from metaseg.data.types import Pair


@dataclass
class Problem:
    kind: str  # "missing mask", "unreadable", "size mismatch", "missing file"
    file: str
    message: str


@dataclass
class CheckReport:
    root: str
    layout: str
    detected: bool
    n_pairs: int  # as listed, duplicates included
    decoded: bool
    errors: list[Problem] = field(default_factory=list)
    orphan_masks: list[str] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)
    mask_rules: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    conversions: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    channels: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped image, the kept image it repeats)

    @property
    def usable(self) -> bool:
        return not self.errors

    @property
    def task_channels(self) -> int | None:
        """Channels of the loaded task when the images agree; None for a mixed task (the model decides)."""
        return next(iter(self.channels)) if len(self.channels) == 1 else None

    def conversion(self) -> str:
        """How the images reach a model, given their native channel counts (stated by `data check`)."""
        gray, colour = self.channels.get(1, 0), sum(n for c, n in self.channels.items() if c != 1)
        if gray and colour:
            return (f"mixed: a 3-channel model (in_channels 3) gets the {gray} grayscale images repeated to 3 channels, "
                    f"a 1-channel model the {colour} colour images as luminance")
        if gray:
            return "grayscale: a 3-channel model (in_channels 3) gets each image repeated to 3 channels"
        return "colour: a 1-channel model (in_channels 1) gets each image as luminance" if colour else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "detected": self.detected,
            "pairs": self.n_pairs,
            "decoded": self.decoded,
            "usable": self.usable,
            "errors": [vars(e) for e in self.errors],
            "orphan_masks": self.orphan_masks,
            "empty_masks": self.empty_masks,
            "mask_rules": dict(self.mask_rules),
            "conversions": dict(self.conversions),
            "channels": {str(k): v for k, v in sorted(self.channels.items())},
            "task_channels": self.task_channels,
            "channel_conversion": self.conversion(),
            "duplicates": [{"dropped": d, "kept": k} for d, k in self.duplicates],
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
        }


def _check_pair(pair: Pair, report: CheckReport) -> None:
    try:
        decoded = imagesmod.decode_pair(pair)
    except imagesmod.PairError as exc:
        report.errors.append(Problem(exc.kind, exc.file, str(exc)))
        return
    name = str(pair.mask) + (f" (slice {pair.meta['slice']})" if "slice" in pair.meta else "")
    report.mask_rules[decoded.mask_rule].append(name)
    for note in decoded.notes:
        report.conversions[note].append(str(pair.image))
    if not decoded.mask.any():
        report.empty_masks.append(name)
    report.channels[decoded.channels] += 1
    h, w = decoded.mask.shape
    report.sizes[(w, h)] += 1


def orphan_masks(pairs: list[Pair]) -> list[str]:
    """Files in the mask folders (and their subfolders) that are no pair's mask and belong to no image.

    A file whose stem is an image's stem plus a suffix (`_2ndHO`, `_mask`) is that image's other
    annotation, not an orphan. Mask folders are those holding at least one paired mask.
    """
    masks = {p.mask.resolve() for p in pairs if p.mask is not None}
    images = {p.image.resolve() for p in pairs}
    dirs = sorted({m.parent for m in masks})
    tops = [d for d in dirs if not any(d != o and d.is_relative_to(o) for o in dirs)]
    stems = {p.image.stem.lower() for p in pairs}

    def has_image(stem: str) -> bool:
        stem = stem.lower()
        return stem in stems or any(stem[:i] in stems for i, c in enumerate(stem) if c in "_-.")

    found = (f.resolve() for d in tops for f in image_files(d, recursive=True))
    return sorted(str(f) for f in found if f not in masks and f not in images and not has_image(f.stem))


def check_dataset(root: str | Path, layout: str | None = None, decode: bool = True, **options: Any) -> CheckReport:
    """List the pairs and (with decode=True) decode every file once; `decode=False` only checks the listing.
    Orphans are reported on both sides: images without a mask (errors) and masks without an image;
    byte-identical duplicate images are reported and left out, as loading does."""
    listing = list_task(root, layout, **options)
    pairs, name = listing.pairs, listing.layout
    report = CheckReport(str(Path(root)), name, layout is None, len(pairs) + len(listing.duplicates), decode)
    report.duplicates = [(str(d.image), str(k.image)) for d, k in listing.duplicates]
    everything = pairs + [d for d, _ in listing.duplicates] if "category" not in options else \
        list_pairs(root, name, **{k: v for k, v in options.items() if k != "category"})
    report.orphan_masks = orphan_masks(everything)
    for pair in pairs:
        if pair.mask is None:
            report.errors.append(Problem("missing mask", str(pair.image), f"missing mask for image {pair.image}"))
        elif decode:
            _check_pair(pair, report)
    return report


def _listing(title: str, files: list[str], limit: int) -> list[str]:
    shown = files if limit <= 0 else files[:limit]
    pad = " " * (len(title) - len(title.lstrip()) + 2)
    lines = [f"{title}: {len(files)}"] + [f"{pad}{f}" for f in shown]
    if len(shown) < len(files):
        lines.append(f"{pad}... {len(files) - len(shown)} more (--limit 0 lists all)")
    return lines


def format_report(report: CheckReport, limit: int = 10, size: int | None = None) -> str:
    """Human-readable report; every problem line names its file."""
    lines = [
        f"root: {report.root}",
        f"layout: {report.layout}" + (" (detected)" if report.detected else ""),
        f"pairs: {report.n_pairs}" + (f" ({len(report.duplicates)} byte-identical duplicate image(s) dropped, "
                                      f"{report.n_pairs - len(report.duplicates)} used)" if report.duplicates else ""),
    ]
    if report.duplicates:
        lines += _listing("duplicate images (same bytes as an earlier image; dropped, the first is kept)",
                          [f"{d} = {k}" for d, k in report.duplicates], limit)
    missing = [e.file for e in report.errors if e.kind == "missing mask"]
    lines += _listing("missing masks", missing, 0)
    lines += _listing("masks without an image (not loaded)", report.orphan_masks, limit)
    if report.decoded:
        for kind in ("unreadable", "missing file", "size mismatch"):
            lines += [f"{kind}: {sum(e.kind == kind for e in report.errors)}"]
            lines += [f"  {e.message}" for e in report.errors if e.kind == kind]
        chans = ", ".join(f"{n} with {c} channel{'s' if c > 1 else ''}" for c, n in sorted(report.channels.items()))
        lines.append(f"images: {chans or 'none decoded'}")
        if report.conversion():
            lines.append(f"  channel conversion: {report.conversion()}")
        for note, files in sorted(report.conversions.items()):
            lines += _listing(f"  converted ({note})", files, limit)
        lines.append("masks (how they are binarised to {0,1}):")
        for rule, files in sorted(report.mask_rules.items(), key=lambda kv: -len(kv[1])):
            exact = rule.startswith("binary") or rule.startswith("label ==")
            lines += _listing(f"  {rule}", files, 0 if exact else limit) if not exact else [f"  {rule}: {len(files)}"]
        lines += _listing("empty masks (kept; they teach 'no lesion')", report.empty_masks, limit)
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(4))
        more = f", ... {len(report.sizes) - 4} more sizes" if len(report.sizes) > 4 else ""
        lines.append(f"image sizes: {sizes}{more}")
        if size:
            lines.append(f"cache: resized to {size}x{size} (aspect not kept), task channels: "
                         f"{report.task_channels or 'mixed (native channels kept; the model in_channels decides)'}")
    else:
        lines.append("files not decoded (--fast): only the listing and missing masks were checked")
    verdict = "usable" if report.usable else f"NOT usable: {len(report.errors)} problem(s) stop loading"
    lines.append(f"status: {verdict}")
    return "\n".join(lines)
