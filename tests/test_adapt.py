"""`metaseg adapt` end to end on tiny generic-layout folders: masks at each image's original size,
overlays, per-image scores where ground truth exists, support images flagged, no silent overwrite."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaseg.jobs.adapt import run_adapt
from metaseg.cli import main as cli_main
from metaseg.errors import MetasegError
from tests.test_training import run_tiny

SIZES = [(40, 30), (52, 64), (33, 33), (48, 36), (60, 44), (36, 50)]  # (width, height), all different


def blob_pair(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse on a noisy dark background (learnable from a few shots)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    mask = ((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2 < 1
    image = rng.normal(60, 15, (h, w, 3))
    image[mask] += 120
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def make_dataset(root: Path, sizes: list[tuple[int, int]], seed: int, with_masks: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    if with_masks:
        (root / "masks").mkdir()
    for i, (w, h) in enumerate(sizes):
        image, mask = blob_pair(rng, w, h)
        Image.fromarray(image).save(root / "images" / f"img{seed}_{i}.png")
        if with_masks:
            Image.fromarray(mask).save(root / "masks" / f"img{seed}_{i}_mask.png")
    return root


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("adapt_ckpt")
    return Path(run_tiny(tmp, "--trainer.max_steps", "2", "--run_test", "false")["last"])


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv") as fh:
        return list(csv.DictReader(fh))


def test_adapt_writes_original_size_masks_overlays_and_scores(tmp_path: Path, tiny_ckpt: Path) -> None:
    support = make_dataset(tmp_path / "support", SIZES[:4], seed=1)
    images = make_dataset(tmp_path / "images", SIZES, seed=2)
    out = tmp_path / "out"
    summary = run_adapt(str(tiny_ckpt), support, images, out, shots=3, steps=2, seed=0, echo=lambda s: None)
    rows = read_rows(out)
    assert len(rows) == len(SIZES) and summary["scored"] == len(SIZES)
    for row, (w, h) in zip(sorted(rows, key=lambda r: r["id"]), SIZES):
        mask = np.asarray(Image.open(row["mask"]))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(row["overlay"]).size == (w, h)
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["iou"]) <= float(row["dice"]) + 1e-9
        assert row["in_support"] == "False"
    assert 0.0 <= summary["dice"] <= 1.0 and summary["dice_ci95"] >= 0.0


def test_plain_image_folder_and_support_images_are_not_scored(tmp_path: Path, tiny_ckpt: Path) -> None:
    support = make_dataset(tmp_path / "support", SIZES[:4], seed=1)
    # a plain folder: no ground truth, nothing scored
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in (support / "images").iterdir():
        Image.open(p).save(plain / p.name)
    summary = run_adapt(str(tiny_ckpt), support, plain, tmp_path / "o1", shots=2, steps=1, echo=lambda s: None)
    rows = read_rows(tmp_path / "o1")
    assert len(rows) == 4 and summary["scored"] == 0 and all(r["dice"] == "" for r in rows)
    # the support folder itself as --images: the 2 support images are flagged and not scored
    summary = run_adapt(str(tiny_ckpt), support, support, tmp_path / "o2", shots=2, steps=1, echo=lambda s: None)
    rows = read_rows(tmp_path / "o2")
    flagged = [r for r in rows if r["in_support"] == "True"]
    assert len(flagged) == 2 and summary["in_support"] == 2 and summary["scored"] == 2
    assert all(r["in_support"] == "True" for r in rows if r["in_support"] == "True")


def test_refuses_non_empty_out_without_overwrite(tmp_path: Path, tiny_ckpt: Path) -> None:
    support = make_dataset(tmp_path / "support", SIZES[:3], seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    with pytest.raises(MetasegError, match="--overwrite"):
        run_adapt(str(tiny_ckpt), support, support / "images", out, shots=2, steps=1, echo=lambda s: None)
    run_adapt(str(tiny_ckpt), support, support / "images", out, shots=2, steps=1, overwrite=True, echo=lambda s: None)
    assert (out / "mine.txt").read_text() == "user file"  # only adapt's own outputs are replaced
    assert len(list((out / "masks").iterdir())) == 3


def test_too_few_support_pairs(tmp_path: Path, tiny_ckpt: Path) -> None:
    support = make_dataset(tmp_path / "support", SIZES[:2], seed=1)
    with pytest.raises(MetasegError, match="fewer than --shots 5"):
        run_adapt(str(tiny_ckpt), support, support, tmp_path / "o", shots=5, echo=lambda s: None)


def test_cli_scratch_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No --checkpoint: a randomly initialised U-Net fine-tuned on the K shots."""
    support = make_dataset(tmp_path / "support", SIZES[:3], seed=1)
    images = make_dataset(tmp_path / "images", SIZES[3:], seed=2)
    code = cli_main(["adapt", "--support", str(support), "--images", str(images), "--out", str(tmp_path / "o"),
                     "--shots", "2", "--steps", "3", "--size", "32"])
    printed = capsys.readouterr().out
    assert code == 0 and "scratch" in printed and "95% CI" in printed
    assert len(read_rows(tmp_path / "o")) == 3
    code = cli_main(["adapt", "--support", str(support), "--images", str(images), "--out", str(tmp_path / "o"),
                     "--shots", "2", "--steps", "1", "--size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
