"""`metaseg evaluate` and `evaluate_method`: per-episode CSV, markdown summary with 95% CIs per K,
queries never overlapping supports, the same episodes for every method at one seed."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from metaseg.cli import main as cli_main
from metaseg.data.synthetic import make_synthetic_task
from metaseg.jobs.evaluate import EpisodeResult, evaluate_method, run_evaluate, summarise
from tests.test_adapt import SIZES, make_dataset
from tests.test_training import run_tiny


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("eval_ckpt")
    return Path(run_tiny(tmp, "--trainer.max_steps", "2", "--run_test", "false")["last"])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_evaluate_writes_csv_and_summary_on_disjoint_episodes(tmp_path: Path, tiny_ckpt: Path) -> None:
    out = tmp_path / "eval"
    rows = run_evaluate(str(tiny_ckpt), "synthetic:hue_blob", out, shots=[1, 3], episodes=3, seed=7, steps=1,
                        queries=4, echo=lambda s: None)
    assert [(r["shots"], r["episodes"], r["images"]) for r in rows] == [(1, 3, 12), (3, 3, 12)]
    episodes = read_csv(out / "episodes.csv")
    images = read_csv(out / "images.csv")
    assert len(episodes) == 6 and len(images) == 24
    assert set(episodes[0]) >= {"shots", "episode", "task", "support_ids", "dice", "iou"}
    for e in episodes:
        support = set(e["support_ids"].split(";"))
        queries = {i["query_id"] for i in images if (i["shots"], i["episode"]) == (e["shots"], e["episode"])}
        assert len(support) == int(e["shots"]) and len(queries) == 4 and not support & queries
        per_image = [float(i["dice"]) for i in images if (i["shots"], i["episode"]) == (e["shots"], e["episode"])]
        assert float(e["dice"]) == pytest.approx(sum(per_image) / 4, abs=1e-5)
    summary = (out / "summary.md").read_text()
    assert "| maml | 1 | 3 | 12 |" in summary and "| maml | 3 | 3 | 12 |" in summary and "95% CI" in summary
    # mean of the summary = mean over all per-image scores of that K
    k1 = [float(i["dice"]) for i in images if i["shots"] == "1"]
    assert rows[0]["dice"] == pytest.approx(sum(k1) / len(k1), abs=1e-5)


def test_scratch_baseline_sees_the_same_episodes(tmp_path: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    """`--checkpoint none` is the scratch baseline; the same seed gives the same supports as the checkpoint's run."""
    args = ["--dataset", "synthetic:rings", "--shots", "2", "--episodes", "2", "--queries", "3", "--seed", "3",
            "--steps", "2", "--size", "32", "--allow-seen"]  # rings is the checkpoint's meta-validation task
    assert cli_main(["evaluate", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "a"), *args]) == 0
    assert cli_main(["evaluate", "--checkpoint", "none", "--out", str(tmp_path / "b"), *args]) == 0
    a, b = read_csv(tmp_path / "a" / "episodes.csv"), read_csv(tmp_path / "b" / "episodes.csv")
    assert [r["support_ids"] for r in a] == [r["support_ids"] for r in b]
    assert {r["method"] for r in b} == {"scratch"} and {r["method"] for r in a} == {"maml"}
    assert "scratch K=2: Dice" in capsys.readouterr().out
    # refuses to write into a non-empty --out
    assert cli_main(["evaluate", "--checkpoint", "none", "--out", str(tmp_path / "b"), *args]) == 2


def test_evaluate_a_dataset_folder(tmp_path: Path, tiny_ckpt: Path) -> None:
    root = make_dataset(tmp_path / "ds", SIZES * 2, seed=4)
    # allow_seen: at thumbnail scale these ellipses on noise look like the bright_ellipse training family
    # (near-duplicates by perceptual hash; tests/test_seen.py covers the refusal)
    rows = run_evaluate(str(tiny_ckpt), str(root), tmp_path / "out", shots=[2], episodes=2, steps=1, queries=5,
                        cache_dir=str(tmp_path / "cache"), echo=lambda s: None, allow_seen=True)
    assert rows[0]["images"] == 10 and 0.0 <= rows[0]["dice"] <= 1.0


def test_evaluate_method_is_a_pure_function_of_its_inputs() -> None:
    """The benchmark reuses evaluate_method: same inputs, same rows; the model is not modified."""
    from metaseg.meta import create_learner
    from metaseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", encoder_depth=2, decoder_channels=[16, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = create_learner("fomaml", inner_steps=1)
    task = make_synthetic_task("dark_blob", n=10, size=32)
    run = lambda: evaluate_method(model, learner, [task], [1, 2], episodes=2, seed=1, queries=3, method="m")  # noqa: E731
    first, second = run(), run()
    assert all(isinstance(r, EpisodeResult) for r in first)
    assert [r.row() | {"seconds": 0} for r in first] == [r.row() | {"seconds": 0} for r in second]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    table = summarise(first)
    assert [(t["shots"], t["images"]) for t in table] == [(1, 6), (2, 6)]
