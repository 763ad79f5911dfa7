"""Medical Segmentation Decathlon (imagesTr/*.nii.gz, labelsTr/*.nii.gz, dataset.json) as 2D slices.

Each slice along `axis` (of the volume reoriented to the closest canonical RAS+ orientation, so
axis 2 = axial) that contains `label` becomes one pair with id `<case>_z<k>` (x/y for other axes);
`empty_fraction` also keeps a seeded share of the slices without it (empty masks = presence labels).
Intensities become uint8 by the modality that dataset.json names for `channel`: CT -> a fixed
Hounsfield window (default -160..240, soft tissue), anything else (MR...) -> the volume's own
0.5-99.5 percentile range. Also reads nnU-Net v2 names (`case_0000.nii.gz` + `case.nii.gz`).
"""
from __future__ import annotations

import json
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from metaseg.data.types import Decoded, Pair, PairError
from metaseg.errors import MetasegError

AXIS_NAMES = "xyz"


def _modality(root: Path, channel: int) -> str:
    try:
        info = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise MetasegError(f"cannot read {root / 'dataset.json'}: {exc}") from None
    names = info.get("modality") or info.get("channel_names") or {}
    if str(channel) not in names:
        raise MetasegError(f"{root / 'dataset.json'} names no modality for channel {channel} (has {sorted(names)})")
    return str(names[str(channel)])


def foreground_labels(root: Path) -> dict[int, str]:
    """The non-background labels that dataset.json names ({1: 'Anterior', 2: 'Posterior'} for Task04);
    empty when dataset.json has no "labels" table."""
    try:
        info = json.loads((Path(root) / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise MetasegError(f"cannot read {Path(root) / 'dataset.json'}: {exc}") from None
    labels = info.get("labels") or {}
    if not isinstance(labels, dict):
        return {}
    out = {}
    for key, name in labels.items():  # MSD: {"1": "Anterior"}; nnU-Net v2: {"Anterior": 1}
        value, text = (key, name) if str(key).lstrip("-").isdigit() else (name, key)
        try:
            if int(value) != 0:
                out[int(value)] = str(text)
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def _case_name(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


@lru_cache(maxsize=4)
def _load_volume(path: str) -> np.ndarray:
    """Whole volume in canonical orientation (cached: consecutive slices come from the same file)."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(path))
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise MetasegError(f"cannot read volume {path}: {exc}") from None


@lru_cache(maxsize=2)
def _volume_uint8(path: str, channel: int, modality: str, window: tuple[float, float]) -> np.ndarray:
    vol = _load_volume(path)
    if vol.ndim == 4:
        vol = vol[..., channel]
    vol = vol.astype(np.float32)
    lo, hi = window if modality.upper() == "CT" else np.percentile(vol, (0.5, 99.5))
    if hi <= lo:
        return np.zeros(vol.shape, np.uint8)
    return np.round(np.clip((vol - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _slice(vol: np.ndarray, axis: int, k: int) -> np.ndarray:
    return np.ascontiguousarray(np.take(vol, k, axis=axis).T)  # rows = the later axis, as viewers show it


def _labels(label: int | str | tuple) -> tuple[int, ...]:
    """`1`, `"1,2"` or `(1, 2)` -> (1, 2): the label values that together are the foreground."""
    values = label.replace("+", ",").split(",") if isinstance(label, str) else label if isinstance(label, (tuple, list)) else [label]
    try:
        return tuple(sorted({int(v) for v in values}))
    except (TypeError, ValueError):
        raise MetasegError(f"option label={label!r} for layout 'msd' must be an integer or a list like 1,2") from None


def _kept_empty(empty: np.ndarray, fraction: float, seed: int, case: str) -> list[int]:
    """A seeded `fraction` of a volume's slices without the label (the same slices on every machine)."""
    n = int(round(fraction * len(empty)))
    rng = np.random.default_rng([int(seed), zlib.crc32(case.encode())])
    return sorted(int(k) for k in rng.choice(empty, n, replace=False)) if n else []


def msd(
    root: Path,
    label: int | str = 1,
    axis: int = 2,
    all_slices: bool = False,
    empty_fraction: float = 0.0,
    empty_seed: int = 0,
    channel: int = 0,
    ct_window: tuple[float, float] = (-160.0, 240.0),
) -> list[Pair]:
    """label: label value(s) that are foreground (1, or 1,2 for their union); axis: slicing axis
    (2 = axial); all_slices: keep every slice; empty_fraction: keep this seeded fraction (0..1) of
    the slices without the label (empty masks: presence labels), empty_seed: which ones;
    channel: modality index of 4D images; ct_window: HU range mapped to 0..255."""
    labels_fg, axis, channel = _labels(label), int(axis), int(channel)
    empty_fraction = float(empty_fraction)
    if not 0.0 <= empty_fraction <= 1.0:
        raise MetasegError(f"option empty_fraction={empty_fraction} for layout 'msd' must be between 0 and 1")
    if axis not in (0, 1, 2):
        raise MetasegError(f"option axis={axis} for layout 'msd' must be 0, 1 or 2")
    if isinstance(ct_window, str):  # from the command line: "-160,240"
        ct_window = ct_window.strip("()[] ").split(",")
    window = tuple(float(v) for v in ct_window)
    if len(window) != 2 or window[1] <= window[0]:
        raise MetasegError(f"option ct_window={ct_window!r} for layout 'msd' must be two numbers low,high")
    modality = _modality(root, channel)
    pairs = []
    for image in sorted(p for p in (root / "imagesTr").glob("*.nii*") if not p.name.startswith(".")):
        case = _case_name(image)
        stem = case[:-5] if case[-5:-4] == "_" and case[-4:].isdigit() else case
        mask = next((m for m in (root / "labelsTr" / f"{stem}.nii.gz", root / "labelsTr" / f"{stem}.nii") if m.is_file()), None)
        meta = {"volume": True, "axis": axis, "label": labels_fg[0] if len(labels_fg) == 1 else list(labels_fg), "channel": channel, "modality": modality, "ct_window": window}
        if mask is None:
            pairs.append(Pair(stem, image, None, meta))
            continue
        labels = _load_volume(str(mask))
        other = tuple(a for a in range(3) if a != axis)
        present = np.isin(labels, labels_fg).any(axis=other)
        if all_slices:
            slices = range(labels.shape[axis])
        else:
            slices = sorted(np.flatnonzero(present).tolist() + _kept_empty(np.flatnonzero(~present), empty_fraction, empty_seed, stem))
        pairs += [Pair(f"{stem}_{AXIS_NAMES[axis]}{k}", image, mask, {**meta, "slice": int(k)}) for k in slices]
    return pairs


def decode_slice(pair: Pair):
    """One slice as a `Decoded` pair (image (H, W, 1) uint8, mask {0, 1})."""
    if pair.mask is None:
        raise PairError("missing mask", pair.image, f"missing label volume for {pair.image}")
    m = pair.meta
    vol = _volume_uint8(str(pair.image), m["channel"], m["modality"], tuple(m["ct_window"]))
    labels = _load_volume(str(pair.mask))
    if vol.shape[:3] != labels.shape[:3]:
        raise PairError("size mismatch", pair.mask, f"size mismatch: volume {pair.image} is {vol.shape[:3]} but labels {pair.mask} are {labels.shape[:3]}")
    image = _slice(vol, m["axis"], m["slice"])[..., None]
    wanted = m["label"] if isinstance(m["label"], list) else [m["label"]]
    mask = np.isin(_slice(labels, m["axis"], m["slice"]), wanted).astype(np.uint8)
    rule = f"label == {m['label']}" if len(wanted) == 1 else f"label in {wanted}"
    how = f"CT window {m['ct_window'][0]:g}..{m['ct_window'][1]:g} HU" if m["modality"].upper() == "CT" else f"{m['modality']}: 0.5-99.5 percentile"
    return Decoded(image, mask, rule, (how,))


def detect_msd(root: Path) -> bool:
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()
