"""Cache: validated once, keyed by content + size + options; a second load decodes nothing."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from metaseg.data import images
from metaseg.data.cache import load_task


def _no_decoding(monkeypatch):
    def fail(pair):
        raise AssertionError(f"decoded {pair.image} although it is cached")

    monkeypatch.setattr(images, "decode_pair", fail)


def test_second_load_reads_cache_only(make_pair_folder, tmp_path, monkeypatch):
    root = make_pair_folder(n=3)
    first = load_task(root, size=16, cache_dir=tmp_path / "c")
    assert first.images.shape == (3, 3, 16, 16) and first.images.dtype == np.uint8
    assert first.masks.shape == (3, 16, 16) and set(np.unique(first.masks)) == {0, 1}
    assert first.hashes[0] == hashlib.sha1((root / "images" / "case0.png").read_bytes()).hexdigest()
    assert first.sources[0] == str((root / "images" / "case0.png").resolve()) and first.name == "ds"
    _no_decoding(monkeypatch)
    second = load_task(root, size=16, cache_dir=tmp_path / "c", name="renamed")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.masks, second.masks)
    assert (first.ids, first.hashes, second.name) == (second.ids, second.hashes, "renamed")


def test_size_and_content_give_new_entries(make_pair_folder, tmp_path, monkeypatch):
    root = make_pair_folder(n=2)
    cache = tmp_path / "c"
    load_task(root, size=16, cache_dir=cache)
    assert load_task(root, size=24, cache_dir=cache).images.shape[-1] == 24
    assert len(list(cache.glob("*.npz"))) == 2
    Image.fromarray(np.full((20, 24, 3), 7, np.uint8)).save(root / "images" / "case1.png")
    changed = load_task(root, size=16, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 3 and changed.images[1].max() == 7
    _no_decoding(monkeypatch)
    with pytest.raises(AssertionError, match="decoded"):
        load_task(root, size=32, cache_dir=cache)


def test_default_cache_dir_from_env(make_pair_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "envcache"))
    load_task(make_pair_folder(n=1), size=16)
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


def test_resize_keeps_masks_binary_and_images_area_averaged(tmp_path, make_pair_folder):
    root = make_pair_folder(n=1, size=(32, 32))
    check = np.zeros((32, 32, 3), np.uint8)
    check[::2] = 255  # alternate rows: area averaging gives a uniform mid gray, nearest would not
    Image.fromarray(check).save(root / "images" / "case0.png")
    task = load_task(root, size=16, cache_dir=tmp_path / "c")
    assert np.abs(task.images.astype(int) - 128).max() <= 1
    assert set(np.unique(task.masks)) <= {0, 1}


def test_category_is_part_of_key_and_name(tmp_path):
    """ISIC-style folder with a class CSV: each category is its own task and cache entry."""
    data = tmp_path / "ISIC-2017_Training_Data"
    gt = tmp_path / "ISIC-2017_Training_Part1_GroundTruth"
    data.mkdir()
    gt.mkdir()
    rows = ["image_id,melanoma,seborrheic_keratosis"]
    for i, (mel, sk) in enumerate([(1, 0), (0, 1), (0, 0), (1, 0)]):
        Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(data / f"ISIC_{i:07d}.jpg")
        Image.fromarray(np.full((12, 12, 3), 9, np.uint8)).save(data / f"ISIC_{i:07d}_superpixels.png")
        Image.fromarray(np.eye(12, dtype=np.uint8) * 255).save(gt / f"ISIC_{i:07d}_segmentation.png")
        rows.append(f"ISIC_{i:07d},{mel}.0,{sk}.0")
    (tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    mel = load_task(tmp_path, category="melanoma", size=8, cache_dir=tmp_path / "c")
    non = load_task(tmp_path, category="non-melanoma", size=8, cache_dir=tmp_path / "c")
    sk = load_task(tmp_path, category="seborrheic_keratosis", size=8, cache_dir=tmp_path / "c")
    assert mel.ids == ["ISIC_0000000", "ISIC_0000003"] and mel.name.endswith(":melanoma")
    assert non.ids == ["ISIC_0000001", "ISIC_0000002"] and sk.ids == ["ISIC_0000001"]
    assert len(list((tmp_path / "c").glob("*.npz"))) == 3
