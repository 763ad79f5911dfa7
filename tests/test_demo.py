"""`python -m metaseg.jobs.demo`, shrunk to seconds: the whole path runs (meta-train through the CLI,
best-on-validation checkpoint, held-out task, baselines, overlays) and the output folder rules hold.
The full demo's numbers and wall time are in docs/training.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaseg.jobs.demo import MARKER, main

TINY = ["--episodes", "1", "--long-steps", "3", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.enable_progress_bar", "false", "--data.image_size", "32", "--data.val_episodes", "1",
        "--data.synthetic_n", "16", "--model.learner.inner_steps", "1"]


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    for row in ("meta-learned init, no adaptation", "meta-learned init + 1 steps", "scratch (random init) + 1 steps",
                "meta-learned init + 3 steps", "scratch (random init) + 3 steps"):
        assert row in printed
    assert "colour_spots" in printed and "wall time" in printed
    assert (out / MARKER).is_file() and Image.open(out / "comparison.png").size[0] > 100
    overlays = sorted((out / "overlays").iterdir())
    assert len(overlays) == 5 and all(len(list(d.glob("*.png"))) == 10 for d in overlays)
    pixels = np.asarray(Image.open(next(overlays[0].glob("*.png"))).convert("RGB"))
    assert pixels.shape[:2] == (256, 256)  # 32 px upscaled x8 (nearest): each network pixel an 8x8 block
    outline = (pixels == (0, 255, 0)).all(-1)
    blocks = pixels.reshape(32, 8, 32, 8, 3).transpose(0, 2, 1, 3, 4).reshape(32, 32, 64, 3)
    plain = ~outline.reshape(32, 8, 32, 8).any((1, 3))  # blocks the thin ground-truth outline does not cross
    assert plain.sum() > 512 and (blocks[plain] == blocks[plain][:, :1]).all()
    # the demo replaces a folder it wrote itself
    assert main(["--out", str(out), *TINY]) == 0


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
