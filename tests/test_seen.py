"""Leakage across commands: a checkpoint records the images it was meta-trained and meta-validated
on; `evaluate` refuses them (one line naming how many and one file) unless --allow-seen, `adapt`
flags them in predictions.csv and its summary."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaseg.cli import main as cli_main
from metaseg.data.fingerprints import Fingerprints
from metaseg.data.fingerprints import CROPS
from tests.test_adapt import SIZES
from tests.test_fingerprints import scene
from tests.test_training import run_tiny


def make_dataset(root: Path, sizes: list[tuple[int, int]], seed: int) -> Path:
    """A generic folder of photo-like images (distinct at thumbnail scale, unlike blobs on noise) + masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (w, h) in enumerate(sizes):
        image = scene(1000 * seed + i, h, w)
        Image.fromarray(image).save(root / "images" / f"img{seed}_{i}.png")
        Image.fromarray(((image[..., 0] > image[..., 0].mean()) * 255).astype(np.uint8)).save(
            root / "masks" / f"img{seed}_{i}_mask.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, its meta-training folder): two outer steps on a 12-image folder task."""
    tmp = tmp_path_factory.mktemp("seen")
    folder = make_dataset(tmp / "train_folder", SIZES * 2, seed=1)
    data = {"train_tasks": [{"name": "folder", "root": str(folder)}, {"root": "synthetic:dark_blob"}]}
    result = run_tiny(tmp, "--trainer.max_steps", "2", "--run_test", "false", data=data)
    return Path(result["last"]), folder


def copy_pairs(source: Path, target: Path, stems: list[str]) -> None:
    for stem in stems:
        shutil.copy(source / "images" / f"{stem}.png", target / "images" / f"{stem}.png")
        shutil.copy(source / "masks" / f"{stem}_mask.png", target / "masks" / f"{stem}_mask.png")


def test_checkpoint_records_every_training_image(trained: tuple[Path, Path]) -> None:
    ckpt, _ = trained
    record = torch.load(ckpt, map_location="cpu", weights_only=True)["metaseg"]["seen"]
    prints = Fingerprints.from_record(record)
    # 12 folder images + 12 dark_blob (train) + 12 rings (meta-val); the meta-test task is not recorded
    assert record["images"] == len(prints.exact) == 36 and len(prints.perceptual) <= 36 * len(CROPS)
    assert np.all(np.diff(prints.exact.astype(object)) > 0)  # sorted, unique: searchable without a set


def test_evaluate_refuses_seen_images_unless_allowed(trained: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    ckpt, folder = trained
    held_out = make_dataset(tmp_path / "mixed", SIZES, seed=7)
    copy_pairs(folder, held_out, ["img1_0", "img1_3", "img1_8"])  # 3 of the 9 images were meta-trained on
    args = ["evaluate", "--checkpoint", str(ckpt), "--dataset", str(held_out), "--shots", "1", "--episodes", "2",
            "--queries", "8", "--steps", "1", "--seed", "0"]
    assert cli_main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of 9 images were used in this checkpoint's meta-training" in err[0], err
    assert "3 exact copies" in err[0] and "img1_" in err[0] and "--allow-seen" in err[0]
    assert not (tmp_path / "refused" / "summary.md").exists()

    assert cli_main([*args, "--out", str(tmp_path / "allowed"), "--allow-seen"]) == 0
    summary = (tmp_path / "allowed" / "summary.md").read_text()
    with open(tmp_path / "allowed" / "images.csv") as fh:
        queries = [r["query_id"] for r in csv.DictReader(fh)]
    seen = sum(q.startswith("img1_") for q in queries)
    assert 0 < seen < len(queries) == 16
    assert f"query images seen in the checkpoint's meta-training or meta-validation: {seen} of 16 scored" in summary


def test_evaluate_counts_a_resized_jpeg_copy_as_a_near_duplicate(trained: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    ckpt, folder = trained
    held_out = make_dataset(tmp_path / "mixed", SIZES, seed=7)
    image = Image.open(folder / "images" / "img1_2.png")
    image.resize((image.width * 3 // 2, image.height * 3 // 2), Image.Resampling.BICUBIC).save(
        held_out / "images" / "copy.jpg", quality=60)
    shutil.copy(folder / "masks" / "img1_2_mask.png", held_out / "masks" / "copy.png")
    Image.open(held_out / "masks" / "copy.png").resize((image.width * 3 // 2, image.height * 3 // 2)).save(
        held_out / "masks" / "copy.png")
    code = cli_main(["evaluate", "--checkpoint", str(ckpt), "--dataset", str(held_out), "--shots", "1",
                     "--episodes", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 7 images" in err and "0 exact copies, 1 near-duplicates" in err and "copy.jpg" in err


def test_adapt_flags_seen_images(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, folder = trained
    images = make_dataset(tmp_path / "images", SIZES[:3], seed=9)
    copy_pairs(folder, images, ["img1_4"])
    out = tmp_path / "out"
    assert cli_main(["adapt", "--checkpoint", str(ckpt), "--support", str(folder), "--images", str(images),
                     "--shots", "2", "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "predictions.csv") as fh:
        rows = {r["id"]: r["seen_in_training"] for r in csv.DictReader(fh)}
    assert rows == {"img1_4": "exact", "img9_0": "", "img9_1": "", "img9_2": ""}
    assert "1 of 4 images were used in this checkpoint's meta-training or meta-validation (1 exact copies" in printed
