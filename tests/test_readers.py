"""Readers: real datasets list the MANIFEST pair counts and are auto-detected; tiny official layouts load."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaseg.cli import main
from metaseg.data.cache import load_task
from metaseg.data.readers import LAYOUTS, detect_layout, list_pairs
from metaseg.errors import MetasegError

# dataset folder in ../shared/datasets -> the layout auto-detection must pick
EXPECTED_LAYOUT = {
    "Kvasir-SEG": "kvasir",
    "CVC-ClinicDB": "cvc-clinicdb",
    "ISIC-2017-256sq": "isic",
    "DRIVE": "drive",
    "CHASEDB1": "chasedb1",
    "membrane": "membrane",
    "CXR-Lungs-Shenzhen-Montgomery": "cxr-lungs",
}
SMALL = ("CHASEDB1", "DRIVE", "membrane")  # decoded fully in tests; the others are only listed


def manifest_counts(root: Path) -> dict[str, int]:
    """Pair counts from the table in MANIFEST.md (| `dir` | dataset | group | pairs | size |)."""
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\|[^|]*\| (\d+) \|", (root / "MANIFEST.md").read_text(), re.M)
    return {name: int(n) for name, n in rows}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(EXPECTED_LAYOUT))
def test_real_dataset_counts_and_detection(shared_datasets, capsys, name):
    expected = manifest_counts(shared_datasets)[name]
    root = shared_datasets / name
    argv = ["data", "check", str(root), "--json"] + ([] if name in SMALL else ["--fast"])
    rc, out, err = run_cli(capsys, *argv)
    report = json.loads(out)
    assert (rc, err) == (0, "")
    assert report["layout"] == EXPECTED_LAYOUT[name] and report["detected"]
    assert report["pairs"] == expected
    assert report["errors"] == []
    if name in SMALL:
        assert sum(report["channels"].values()) == expected
        assert report["empty_masks"] == []


@pytest.mark.realdata
def test_real_grayscale_datasets_stay_one_channel(shared_datasets):
    for name in ("membrane", "CXR-Lungs-Shenzhen-Montgomery"):
        pair = list_pairs(shared_datasets / name)[0]
        from metaseg.data.images import decode_pair

        assert decode_pair(pair).channels == 1, name


@pytest.mark.realdata
def test_membrane_is_foreground(shared_datasets):
    """ISBI 2012 stores membrane as 0; after loading, the (thin) membrane is the minority foreground."""
    from metaseg.data.images import decode_pair

    decoded = decode_pair(list_pairs(shared_datasets / "membrane")[0])
    raw = np.asarray(Image.open(list_pairs(shared_datasets / "membrane")[0].mask))
    assert np.array_equal(decoded.mask, (raw == 0).astype(np.uint8))
    assert 0.05 < decoded.mask.mean() < 0.5


@pytest.mark.realdata
def test_isic_categories_follow_class_csv(shared_datasets):
    root = shared_datasets / "ISIC-2017-256sq"
    melanoma_ids = set()
    for table in root.glob("*_Classes.csv"):
        with open(table) as fh:
            melanoma_ids |= {r["image_id"] for r in csv.DictReader(fh) if float(r["melanoma"]) == 1}
    mel = list_pairs(root, category="melanoma")
    non = list_pairs(root, category="non-melanoma")
    assert {p.id for p in mel} == melanoma_ids
    assert len(mel) + len(non) == 2150 and not {p.id for p in non} & melanoma_ids
    assert {p.meta["class"] for p in mel} == {"melanoma"} and {p.meta["class"] for p in non} == {"non-melanoma"}
    with pytest.raises(MetasegError, match="categories: melanoma"):
        list_pairs(root, category="nevus")
    assert len(list_pairs(root, split="Validation")) == 150


def _bmp(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_ph2_official_layout_loads(tmp_path):
    base = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    rng = np.random.default_rng(0)
    for n in ("IMD002", "IMD003", "IMD004"):
        _bmp(base / n / f"{n}_Dermoscopic_Image" / f"{n}.bmp", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
        lesion = np.zeros((30, 40), np.uint8)
        lesion[5:20, 10:30] = 255
        _bmp(base / n / f"{n}_lesion" / f"{n}_lesion.bmp", lesion)
        _bmp(base / n / f"{n}_roi" / f"{n}_R1_Label1.bmp", lesion)  # ignored extra folder of the release
    assert detect_layout(tmp_path) == "ph2"
    pairs = list_pairs(tmp_path)
    assert [p.id for p in pairs] == ["IMD002", "IMD003", "IMD004"]
    task = load_task(tmp_path, size=16, cache_dir=tmp_path / "cache")
    assert task.images.shape == (3, 3, 16, 16) and task.masks.shape == (3, 16, 16)
    assert set(np.unique(task.masks)) == {0, 1}


def _write_msd(root: Path, modality: str = "CT") -> None:
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "Tiny", "modality": {"0": modality}, "labels": {"0": "bg", "1": "organ", "2": "tumour"}}))
    rng = np.random.default_rng(0)
    for case, slices in (("tiny_001", (2, 3)), ("tiny_002", (1,))):
        vol = rng.normal(40, 200, (12, 10, 5)).astype(np.int16)
        lab = np.zeros((12, 10, 5), np.uint8)
        for k in slices:
            lab[3:8, 2:6, k] = 1
        lab[4:6, 3:5, slices[0]] = 2
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    (root / "imagesTr" / "._tiny_001.nii.gz").write_bytes(b"macOS resource fork")  # shipped in MSD tars


def test_msd_slices_with_label(tmp_path):
    _write_msd(tmp_path)
    assert detect_layout(tmp_path) == "msd"
    pairs = list_pairs(tmp_path)
    assert [p.id for p in pairs] == ["tiny_001_z2", "tiny_001_z3", "tiny_002_z1"]
    assert len(list_pairs(tmp_path, all_slices=True)) == 10
    assert [p.id for p in list_pairs(tmp_path, label=2)] == ["tiny_001_z2", "tiny_002_z1"]
    task = load_task(tmp_path, size=8, cache_dir=tmp_path / "cache")
    assert task.images.shape == (3, 1, 8, 8) and task.images.dtype == np.uint8
    assert task.masks.any(axis=(1, 2)).all()
    assert len(set(task.hashes)) == 3  # slices of one volume hash differently (volume hash + slice)


def test_msd_mr_uses_percentiles(tmp_path):
    _write_msd(tmp_path, modality="MRI")
    from metaseg.data.images import decode_pair

    import nibabel as nib

    decoded = decode_pair(list_pairs(tmp_path)[0])  # tiny_001, slice z=2
    vol = np.asarray(nib.load(tmp_path / "imagesTr" / "tiny_001.nii.gz").dataobj).astype(np.float32)
    lo, hi = np.percentile(vol, (0.5, 99.5))  # over the whole volume, so all slices share one scale
    expected = np.round(np.clip((vol[:, :, 2].T - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert "percentile" in decoded.notes[0]
    assert np.array_equal(decoded.image[..., 0], expected)


@pytest.mark.parametrize("suffix", ["", "_mask", "_segmentation", "_Segmentation", "_gt", "_label"])
def test_generic_pairs_by_stem_with_suffixes(make_pair_folder, suffix):
    root = make_pair_folder(n=3, mask_suffix=suffix)
    assert detect_layout(root) == "generic"
    pairs = list_pairs(root)
    assert [p.id for p in pairs] == ["case0", "case1", "case2"]
    assert all(p.mask is not None and p.mask.stem == p.id + suffix for p in pairs)


def test_generic_differing_extensions_and_subfolders(make_pair_folder):
    root = make_pair_folder(n=2)
    img = Image.open(root / "images" / "case0.png")
    (root / "images" / "site_b").mkdir()
    img.save(root / "images" / "site_b" / "x1.jpg")
    (root / "masks" / "site_b").mkdir()
    Image.open(root / "masks" / "case0.png").save(root / "masks" / "site_b" / "x1_mask.bmp")
    pairs = {p.id: p for p in list_pairs(root)}
    assert sorted(pairs) == ["case0", "case1", "site_b/x1"]
    assert pairs["site_b/x1"].mask.name == "x1_mask.bmp"


def test_generic_options_name_folders_and_suffix(tmp_path, make_pair_folder):
    root = make_pair_folder(n=2, name="own", mask_suffix="_anno")
    (root / "images").rename(root / "scans")
    (root / "masks").rename(root / "outlines")
    with pytest.raises(MetasegError, match="known layouts"):
        detect_layout(root)
    pairs = list_pairs(root, "generic", images_dir="scans", masks_dir="outlines", mask_suffix="_anno")
    assert len(pairs) == 2 and all(p.mask for p in pairs)
    with pytest.raises(MetasegError, match="images_dir: folder not found"):
        list_pairs(root, "generic", images_dir="nope", masks_dir="outlines")


def test_generic_flat_folder(tmp_path, make_pair_folder):
    root = make_pair_folder(n=2, mask_suffix="_mask")
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list((root / "images").iterdir()) + list((root / "masks").iterdir()):
        f.rename(flat / f.name)
    pairs = list_pairs(flat, "generic", images_dir=".", masks_dir=".")
    assert [(p.id, p.mask.name) for p in pairs] == [("case0", "case0_mask.png"), ("case1", "case1_mask.png")]


def test_unknown_layout_and_option_are_one_line_errors(make_pair_folder):
    root = make_pair_folder(n=1)
    with pytest.raises(MetasegError, match="known layouts: msd, ph2"):
        list_pairs(root, "nope")
    with pytest.raises(MetasegError, match="unknown option 'split' for layout 'generic'"):
        list_pairs(root, "generic", split="x")


def test_cvc_official_tiff_read_with_tifffile_when_pillow_fails(tmp_path, monkeypatch):
    """The official CVC-ClinicDB frame TIFFs have a header Pillow rejects; tifffile reads them."""
    import tifffile

    from metaseg.data import images

    rng = np.random.default_rng(1)
    (tmp_path / "Original").mkdir()
    (tmp_path / "Ground Truth").mkdir()
    frame = rng.integers(0, 256, (3, 18, 24), dtype=np.uint8)  # planar (C, H, W) as some TIFF writers store it
    tifffile.imwrite(tmp_path / "Original" / "1.tif", frame, planarconfig="separate", photometric="rgb")
    gt = np.zeros((18, 24), np.uint8)
    gt[4:10, 5:15] = 255
    tifffile.imwrite(tmp_path / "Ground Truth" / "1.tif", gt)
    real_open = images._open_pil

    def pillow_rejects_tiff(path):
        if path.suffix == ".tif":
            raise images.PairError("unreadable", path, "cannot identify image file")
        return real_open(path)

    monkeypatch.setattr(images, "_open_pil", pillow_rejects_tiff)
    assert detect_layout(tmp_path) == "cvc-clinicdb"
    decoded = images.decode_pair(list_pairs(tmp_path)[0])
    assert np.array_equal(decoded.image, np.moveaxis(frame, 0, -1))
    assert decoded.mask.sum() == 60


def test_every_layout_has_description_and_detector():
    assert list(LAYOUTS)[-1] == "generic"  # fallback is tried last
    assert all(l.description and callable(l.detect) for l in LAYOUTS.values())


def test_isic_class_table_formats(tmp_path):
    """ISIC 2016 (no header, label strings) and ISIC 2018 Task 3 (one-hot columns) class tables."""
    from metaseg.data.readers.isic import read_class_tables

    (tmp_path / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").write_text("ISIC_0000000,benign\nISIC_0000001,malignant\n")
    (tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("image,MEL,NV,BCC\nISIC_0000002,0.0,1.0,0.0\n")
    (tmp_path / "unrelated.csv").write_text("name,value\nfoo,1\n")
    labels, _ = read_class_tables(sorted(tmp_path.glob("*.csv")))
    assert labels == {"ISIC_0000000": ("benign",), "ISIC_0000001": ("malignant",), "ISIC_0000002": ("nv",)}
