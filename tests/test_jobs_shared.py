"""The steps the jobs share, each in one place (issue 10): building a method, scoring an episode,
the output folder, duplicate images, the channel conversion, --device and --queries."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from metaseg.cli import main
from metaseg.data.synthetic import make_synthetic_task
from metaseg.errors import MetasegError
from metaseg.jobs.evaluate import run_evaluate
from metaseg.jobs.methods import build_method, resolve_device
from metaseg.outputs import OutputFolder


def quiet(_: str) -> None:
    pass


def test_identical_images_under_two_names_no_longer_abort_an_evaluation(make_pair_folder, tmp_path, capsys):
    """4 files, 2 of them byte-identical: 1 shot + 3 queries would put both copies in every episode."""
    root = make_pair_folder(n=3)
    shutil.copy(root / "images" / "case1.png", root / "images" / "copy_of_1.png")
    shutil.copy(root / "masks" / "case1.png", root / "masks" / "copy_of_1.png")
    lines: list[str] = []
    rows = run_evaluate(None, str(root), tmp_path / "out", shots=[1], episodes=3, queries=3, method="support_prior",
                        cache_dir=str(tmp_path / "c"), echo=lines.append)
    assert rows[0]["images"] == 3 * 2  # 3 distinct images: 1 shot + 2 queries per episode
    assert any("1 byte-identical duplicate image(s) left out (e.g. copy_of_1 = case1)" in line for line in lines)
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "pairs: 4 (1 byte-identical duplicate image(s) dropped, 3 used)" in out
    assert f"{root.resolve() / 'images' / 'copy_of_1.png'} = {root.resolve() / 'images' / 'case1.png'}" in out


def test_build_method_says_the_steps_it_will_run() -> None:
    assert build_method(None, "support_prior").steps is None  # no network is adapted
    assert build_method(None, "scratch").steps == 100
    scratch = build_method(None, "scratch", steps=3)
    assert scratch.steps == 3 and scratch.learner.inner_steps == 3 and scratch.image_size == 128
    assert scratch.in_channels == 3 and scratch.checkpoint is None


def test_summary_prints_the_adaptation_steps_used_and_none_for_the_prior(tmp_path) -> None:
    common = dict(shots=[1], episodes=1, queries=2, size=16)
    run_evaluate(None, "synthetic:rings", tmp_path / "s", method="scratch", steps=2, echo=quiet, **common)
    assert "adaptation steps: 2" in (tmp_path / "s" / "summary.md").read_text()
    lines: list[str] = []
    run_evaluate(None, "synthetic:rings", tmp_path / "p", method="support_prior", echo=lines.append, **common)
    assert "adaptation" not in (tmp_path / "p" / "summary.md").read_text()
    assert not any("adaptation" in line for line in lines)


def test_scoring_is_shared_and_chunking_does_not_change_scores() -> None:
    from metaseg.data.episodes import EpisodeSampler
    from metaseg.losses import bce_dice_loss
    from metaseg.meta import create_learner
    from metaseg.meta.scoring import score_episode
    from metaseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", encoder_depth=2, decoder_channels=[16, 8]).eval()
    learner = create_learner("fomaml", inner_steps=1)
    episode = EpisodeSampler([make_synthetic_task("dark_blob", n=12, size=32)], 2, 7, seed=0).sample(0)
    whole = score_episode(model, learner, episode, chunk=16, loss_fn=bce_dice_loss)[""]
    chunked = score_episode(model, learner, episode, chunk=3, loss_fn=bce_dice_loss)[""]
    assert len(whole.dice) == 7 and np.allclose(whole.dice, chunked.dice, atol=1e-6)
    assert whole.loss == pytest.approx(chunked.loss, abs=1e-5)
    import inspect

    from metaseg.training.module import MetaSegModule

    assert "score_episode(" in inspect.getsource(MetaSegModule._eval_step)  # validation uses the same function


def test_output_folder_refuses_early_and_undoes_a_failed_run(tmp_path) -> None:
    out = tmp_path / "new" / "out"
    folder = OutputFolder(out, ("a.txt", "sub"))
    with pytest.raises(RuntimeError), folder.writing() as path:
        (path / "a.txt").write_text("half")
        raise RuntimeError("the run failed")
    assert not (tmp_path / "new").exists()  # every folder the run created is gone
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("user")
    with pytest.raises(MetasegError, match=r"--out .* already exists and is not empty; choose a new folder or pass --overwrite"):
        OutputFolder(out, ("a.txt",)).check()
    (out / "a.txt").write_text("old result")
    with pytest.raises(KeyboardInterrupt), OutputFolder(out, ("a.txt", "sub"), overwrite=True).writing() as path:
        (path / "a.txt").write_text("new")
        (path / "sub").mkdir()
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "mine.txt"] and (out / "a.txt").read_text() == "old result"
    with OutputFolder(out, ("a.txt",), overwrite=True).writing() as path:
        (path / "a.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "mine.txt"] and (out / "a.txt").read_text() == "new"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MetasegError, match="exists and is not a folder"):
        OutputFolder(tmp_path / "file", ("a.txt",)).check()


def test_device_option(tmp_path, capsys) -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MetasegError, match="--device cuda: no CUDA device is available"):
            resolve_device("cuda")
    args = ["evaluate", "--method", "support_prior", "--dataset", "synthetic:rings", "--shots", "1", "--episodes", "1",
            "--queries", "2", "--size", "16", "--out", str(tmp_path / "o")]
    assert main([*args, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*args, "--device", "tpu", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device" in err and "auto" in err


def test_queries_is_the_one_name(capsys) -> None:
    """`data sample` and `evaluate` both say --queries; the old --query (or any abbreviation) is refused."""
    assert main(["data", "sample", "synthetic:rings", "--shots", "1", "--query", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --query 3" in err
    for argv in (["data", "sample", "synthetic:rings", "--shots", "0"],
                 ["evaluate", "--dataset", "synthetic:rings", "--shots", "0", "--out", "unused"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == "metaseg: error: --shots must be >= 1 (got 0)\n"
