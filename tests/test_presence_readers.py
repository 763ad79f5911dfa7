"""Readers that give image-level (presence) labels: BUSI's class folders and MSD's empty slices."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaseg.cli import main
from metaseg.data.cache import load_task
from metaseg.data.images import decode_pair
from metaseg.data.readers import detect_layout, list_pairs
from metaseg.errors import MetasegError
from tests.test_readers import _write_msd


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(path)


def _write_busi(root: Path) -> Path:
    """benign (1) with two lesion files, benign (2), malignant (1), normal (1) (empty mask, RGB like the release)."""
    base = root / "Dataset_BUSI_with_GT"
    rng = np.random.default_rng(0)
    for name in ("benign (1)", "benign (2)", "malignant (1)", "normal (1)"):
        cls = name.split(" ")[0]
        _png(base / cls / f"{name}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        mask = np.zeros((20, 30), np.uint8)
        if cls != "normal":
            mask[2:6, 3:9] = 255
        _png(base / cls / f"{name}_mask.png", mask, "1" if cls != "normal" else "RGB")
    second = np.zeros((20, 30), np.uint8)
    second[12:18, 20:28] = 255
    _png(base / "benign" / "benign (1)_mask_1.png", second, "1")
    return root


def test_busi_official_layout_unions_masks_and_labels_classes(tmp_path, capsys):
    root = _write_busi(tmp_path / "BUSI")
    assert detect_layout(root) == "busi" and detect_layout(root / "Dataset_BUSI_with_GT") == "busi"
    pairs = {p.id: p for p in list_pairs(root)}
    assert sorted(pairs) == ["benign/benign (1)", "benign/benign (2)", "malignant/malignant (1)", "normal/normal (1)"]
    assert pairs["benign/benign (1)"].mask.name == "benign (1)_mask.png"  # _mask_1 is not an image of its own
    decoded = decode_pair(pairs["benign/benign (1)"])
    assert decoded.mask[2:6, 3:9].all() and decoded.mask[12:18, 20:28].all()  # the union of both files
    assert decoded.mask.sum() == 4 * 6 + 6 * 8
    assert not decode_pair(pairs["normal/normal (1)"]).mask.any()
    assert [p.id for p in list_pairs(root, category="normal")] == ["normal/normal (1)"]
    assert len(list_pairs(root, category="non-normal")) == 3
    task = load_task(root, size=16, cache_dir=tmp_path / "cache")
    assert task.masks.any(axis=(1, 2)).tolist() == [True, True, True, False]
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "busi" and report["pairs"] == 4 and len(report["empty_masks"]) == 1


def test_busi_mismatched_extra_mask_names_the_file(tmp_path):
    root = _write_busi(tmp_path / "BUSI")
    _png(root / "Dataset_BUSI_with_GT" / "benign" / "benign (1)_mask_1.png", np.zeros((5, 5), np.uint8))
    pair = next(p for p in list_pairs(root) if p.id == "benign/benign (1)")
    with pytest.raises(MetasegError, match=r"benign \(1\)_mask_1\.png"):
        decode_pair(pair)


@pytest.mark.realdata
def test_real_busi_counts_match_manifest(shared_datasets, capsys):
    root = shared_datasets / "BUSI"
    if not root.is_dir():
        pytest.skip(f"BUSI not found at {root}")
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "busi" and report["detected"]
    assert report["pairs"] == 780 and report["errors"] == []
    assert len(report["empty_masks"]) == 133 and all("/normal/" in m for m in report["empty_masks"])
    assert sum(len(files) for rule, files in report["mask_rules"].items() if "union" in rule) == 17  # 18 extra files, 17 images
    classes = [p.meta["class"] for p in list_pairs(root)]
    assert (classes.count("benign"), classes.count("malignant"), classes.count("normal")) == (437, 210, 133)


def test_msd_keeps_a_seeded_fraction_of_empty_slices(tmp_path):
    _write_msd(tmp_path)  # tiny_001: label in z=2,3 of 5; tiny_002: z=1 of 5 -> 3 + 4 label-free slices
    assert len(list_pairs(tmp_path)) == 3
    half = [p.id for p in list_pairs(tmp_path, empty_fraction=0.5)]
    assert len(half) == 3 + 2 + 2 and half == [p.id for p in list_pairs(tmp_path, empty_fraction="0.5")]  # seeded
    assert {"tiny_001_z2", "tiny_001_z3", "tiny_002_z1"} <= set(half)
    other = {tuple(p.id for p in list_pairs(tmp_path, empty_fraction=0.5, empty_seed=s)) for s in range(6)}
    assert len(other) > 1  # the seed picks which empty slices
    assert len(list_pairs(tmp_path, empty_fraction=1.0)) == 10
    task = load_task(tmp_path, size=8, cache_dir=tmp_path / "cache", empty_fraction=1.0)
    assert int((~task.masks.any(axis=(1, 2))).sum()) == 7  # every label-free slice, with an empty mask
    with pytest.raises(MetasegError, match="empty_fraction"):
        list_pairs(tmp_path, empty_fraction=1.5)


def test_msd_label_union(tmp_path):
    _write_msd(tmp_path)
    pair = next(p for p in list_pairs(tmp_path, label="1,2") if p.id == "tiny_001_z2")
    both = decode_pair(pair).mask
    only_one = decode_pair(next(p for p in list_pairs(tmp_path, label=1) if p.id == "tiny_001_z2")).mask
    assert both.sum() > only_one.sum() and (both >= only_one).all()
    with pytest.raises(MetasegError, match="option label"):
        list_pairs(tmp_path, label="one")
