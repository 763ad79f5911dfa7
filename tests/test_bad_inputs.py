"""Bad-input corpus: each case gets a one-line error naming the file, or a documented handling.

Each case is a tiny generic dataset (images/ + masks/) built in tmp_path with one odd pair.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaseg.cli import main
from metaseg.data.cache import load_task
from metaseg.data.images import read_image, read_mask
from metaseg.errors import MetasegError


def check(capsys, root: Path, *extra: str) -> tuple[int, str, str]:
    rc = main(["data", "check", str(root), "--limit", "0", *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return rc, out.out, out.err


def test_missing_mask(capsys, make_pair_folder, tmp_path):
    root = make_pair_folder(n=3)
    (root / "masks" / "case1.png").unlink()
    rc, out, _ = check(capsys, root)
    assert rc == 1
    assert f"missing masks: 1\n  {root.resolve() / 'images' / 'case1.png'}" in out
    with pytest.raises(MetasegError, match=r"missing mask for image .*images/case1\.png"):
        load_task(root, cache_dir=tmp_path / "c", size=16)
    with pytest.warns(UserWarning, match="case1.png"):
        task = load_task(root, cache_dir=tmp_path / "c", size=16, skip_bad=True)
    assert task.ids == ["case0", "case2"]


def test_size_mismatch(capsys, make_pair_folder, tmp_path):
    root = make_pair_folder(n=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case0.png")
    rc, out, _ = check(capsys, root)
    assert rc == 1
    assert "size mismatch: 1" in out and "masks/case0.png is 10x10" in out and "images/case0.png is 24x20" in out
    with pytest.raises(MetasegError, match="size mismatch: image .*case0.png is 24x20 but mask .*case0.png is 10x10"):
        load_task(root, cache_dir=tmp_path / "c", size=16)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(capsys, make_pair_folder, tmp_path, damage):
    root = make_pair_folder(n=2)
    bad = root / "images" / "case1.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    rc, out, _ = check(capsys, root)
    assert rc == 1 and "unreadable: 1" in out and f"cannot read {bad.resolve()}" in out
    with pytest.raises(MetasegError, match=r"cannot read .*case1\.png"):
        load_task(root, cache_dir=tmp_path / "c", size=16)


def test_cli_error_is_one_line(capsys, tmp_path):
    for argv in (["data", "check", str(tmp_path / "absent")], ["data", "check", str(tmp_path), "--layout", "nope"]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("metaseg: error: ")


def test_empty_mask_is_kept_and_reported(capsys, make_pair_folder, tmp_path):
    root = make_pair_folder(n=2)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(root / "masks" / "case0.png")
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "empty masks (kept; they teach 'no lesion'): 1" in out and "masks/case0.png" in out
    task = load_task(root, cache_dir=tmp_path / "c", size=16)
    assert task.masks[0].sum() == 0 and task.masks[1].sum() > 0


def test_non_binary_mask_thresholded_at_128(capsys, make_pair_folder, tmp_path):
    root = make_pair_folder(n=2)
    gray = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (20, 1))  # interpolated edge values
    Image.fromarray(gray).save(root / "masks" / "case0.png")
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "non-binary: foreground = value >= 128: 1" in out and "masks/case0.png" in out
    mask, rule = read_mask(root / "masks" / "case0.png")
    assert np.array_equal(mask, (gray >= 128).astype(np.uint8))


def test_jpeg_mask_artefacts_thresholded(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[5:21, 7:26] = 255  # not aligned to JPEG's 8x8 blocks, so compression leaves artefacts
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=60)
    got, rule = read_mask(tmp_path / "m.jpg")
    assert "value >= 128" in rule and (got == (mask > 0)).mean() > 0.97


def test_label_maps_and_one_bit_masks_exact(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3], labels[5:7] = 1, 2
    Image.fromarray(labels).save(tmp_path / "labels.png")
    got, rule = read_mask(tmp_path / "labels.png")
    assert rule.startswith("label map") and np.array_equal(got, (labels > 0).astype(np.uint8))
    Image.fromarray(labels == 1).save(tmp_path / "bits.png")  # mode '1' (like CHASE_DB1)
    got, rule = read_mask(tmp_path / "bits.png")
    assert rule == "binary (1-bit)" and np.array_equal(got, (labels == 1).astype(np.uint8))
    pal = Image.fromarray((labels == 2).astype(np.uint8), mode="L").convert("P")  # palette indices 0/1
    pal.save(tmp_path / "pal.gif")
    got, rule = read_mask(tmp_path / "pal.gif")
    assert np.array_equal(got, (labels == 2).astype(np.uint8))


def test_16bit_image_rescaled(capsys, make_pair_folder, tmp_path):
    root = make_pair_folder(n=2)
    deep = (np.arange(20 * 24).reshape(20, 24) * 100 + 1000).astype(np.uint16)  # 1000 .. 48900
    Image.fromarray(deep).save(root / "images" / "case0.png")
    image, notes = read_image(root / "images" / "case0.png")
    assert image.dtype == np.uint8 and image.shape == (20, 24, 1)
    assert image.min() == 0 and image.max() == 255 and any("rescaled to 8-bit" in n for n in notes)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "rescaled to 8-bit (min-max)): 1" in out and "images/case0.png" in out
    assert ("channel conversion: mixed: a 3-channel model (in_channels 3) gets the 1 grayscale images repeated "
            "to 3 channels, a 1-channel model the 1 colour images as luminance") in out


def test_mixed_channels_cached_native_and_the_model_decides(make_pair_folder, tmp_path):
    """The cache keeps each image's own channels; a model's in_channels picks the conversion, stated on the task."""
    root = make_pair_folder(n=2)
    gray = np.random.default_rng(3).integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(gray).save(root / "images" / "case0.png")
    rgb = task3 = load_task(root, cache_dir=tmp_path / "c", size=16, channels=3)
    assert rgb.images.shape == (2, 3, 16, 16) and (rgb.images[0, 0] == rgb.images[0, 1]).all()
    assert rgb.conversion == "1 of 2 images are grayscale and were repeated to 3 channels"
    one = load_task(root, cache_dir=tmp_path / "c", size=16, channels=1)  # same cache entry, other conversion
    assert one.images.shape == (2, 1, 16, 16) and one.conversion.startswith("1 of 2 images are colour")
    assert np.array_equal(one.images[0, 0], task3.images[0, 0])  # the grayscale image itself is untouched
    luma = np.rint(task3.images[1].astype(float).transpose(1, 2, 0) @ np.array([0.299, 0.587, 0.114]))
    assert np.abs(one.images[1, 0].astype(int) - luma).max() == 0
    [entry] = list((tmp_path / "c").glob("*.npz"))
    with np.load(entry) as data:  # an entry written before native channels were kept: gray rows repeated
        np.savez(entry, images=task3.images, masks=data["masks"], kept=data["kept"])
    again = load_task(root, cache_dir=tmp_path / "c", size=16, channels=1)
    assert np.array_equal(again.images, one.images) and again.conversion == one.conversion


def test_rgba_image_drops_alpha(make_pair_folder):
    root = make_pair_folder(n=1)
    rgba = np.random.default_rng(0).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "images" / "case0.png")
    image, notes = read_image(root / "images" / "case0.png")
    assert np.array_equal(image, rgba[..., :3]) and "alpha channel dropped" in notes


def test_grayscale_stays_one_channel(make_pair_folder, tmp_path):
    root = make_pair_folder(n=2)
    for i in range(2):
        gray = np.random.default_rng(i).integers(0, 256, (20, 24), dtype=np.uint8)
        Image.fromarray(np.stack([gray] * 3, -1)).save(root / "images" / f"case{i}.png")  # RGB file, equal channels
    task = load_task(root, cache_dir=tmp_path / "c", size=16)
    assert task.channels == 1


def test_json_report_names_files(capsys, make_pair_folder):
    root = make_pair_folder(n=2)
    (root / "masks" / "case0.png").unlink()
    rc, out, _ = check(capsys, root, "--json")
    report = json.loads(out)
    assert rc == 1 and report["usable"] is False
    assert report["errors"] == [
        {"kind": "missing mask", "file": str(root.resolve() / "images" / "case0.png"),
         "message": f"missing mask for image {root.resolve() / 'images' / 'case0.png'}"}
    ]


def test_orphans_reported_on_both_sides(capsys, make_pair_folder):
    """98 pairs + 52 mask files without an image + 2 images without a mask: every orphan is counted and named."""
    root = make_pair_folder(n=100, size=(8, 8))
    for i in (98, 99):  # two images lose their mask
        (root / "masks" / f"case{i}.png").unlink()
    mask = np.zeros((8, 8), np.uint8)
    (root / "masks" / "site_b").mkdir()  # orphans in a subfolder the reader follows are found too
    for i in range(52):
        folder = root / "masks" / ("site_b" if i % 2 else "")
        Image.fromarray(mask).save(folder / f"lost{i}_mask.png")
    Image.fromarray(mask).save(root / "masks" / "case3_2nd_observer.png")  # another annotation of case3: not an orphan
    rc, out, _ = check(capsys, root, "--fast")
    assert rc == 1 and "pairs: 100" in out and "missing masks: 2" in out
    assert "masks without an image (not loaded): 52" in out
    assert str(root.resolve() / "masks" / "site_b" / "lost1_mask.png") in out and "case3_2nd" not in out
    rc, out, _ = check(capsys, root, "--json")
    report = json.loads(out)
    assert len(report["orphan_masks"]) == 52 and all("lost" in f for f in report["orphan_masks"])
    (root / "masks" / "case98.png").write_bytes((root / "masks" / "case0.png").read_bytes())
    (root / "masks" / "case99.png").write_bytes((root / "masks" / "case0.png").read_bytes())
    rc, out, _ = check(capsys, root, "--fast")  # orphan masks alone do not stop loading (they are ignored)
    assert rc == 0 and "masks without an image (not loaded): 52" in out and "status: usable" in out
