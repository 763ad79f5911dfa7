"""Few-shot benchmark protocol (benchmarks/fewshot.py) on tiny synthetic tasks: folds never see
their target, meta-val is disjoint from meta-train, episodes keep queries out of supports, rows
have the committed schema, a finished part is resumed instead of recomputed, and the report
(table, plots, README section) is generated from the results alone."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from benchmarks.fewshot import ROW_KEYS, check_config, load_tasks, make_split, run_benchmark, subset, write_results
from benchmarks.report import write_report
from metaseg.data.episodes import EpisodeSampler
from metaseg.errors import MetasegError

TINY = {
    "seed": 0,
    "device": "cpu",
    "image_size": 16,
    "datasets": [
        {"name": "ellipse", "root": "synthetic:bright_ellipse", "n": 16},
        {"name": "blob", "root": "synthetic:dark_blob", "n": 16},
        {"name": "rings", "root": "synthetic:rings", "n": 8},
    ],
    "targets": ["ellipse"],
    "meta_val": {"fraction": 0.25, "min_images": 12},
    "evaluation": {"shots": [1, 2], "episodes": 2, "queries": 3},
    "adaptation": {"steps": 2, "inner_lr": 0.1, "inner_optimizer": "sgd"},
    "model": {"kind": "unet", "encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "meta_train": {"max_steps": 2, "meta_batch_size": 1, "shots": 2, "queries": 2, "val_every": 2, "val_episodes": 2},
    "methods": {"scratch": {}, "fomaml": {"learner": {"name": "fomaml", "inner_steps": 1}},
                "prior": {"learner": {"name": "support_prior"}}},
}


@pytest.fixture(scope="module")
def tasks():
    """The three synthetic datasets at 16 px."""
    return load_tasks(TINY, echo=lambda _: None)


def test_fold_never_contains_the_target_and_val_is_disjoint(tasks):
    split = make_split(tasks, "ellipse", TINY["meta_val"], seed=0)
    target = set(tasks["ellipse"].hashes)
    train = {h for t in split.train for h in t.hashes}
    val = {h for t in split.val for h in t.hashes}
    assert "ellipse" not in [t.name for t in split.train + split.val]
    assert not target & train and not target & val and not train & val
    assert [t.name for t in split.val] == ["blob:val"]  # rings (8 images) is below min_images
    assert len(train) + len(val) == 16 + 8  # every source image is used exactly once


def test_fold_refuses_a_source_image_that_is_also_in_the_target(tasks):
    leaky = dict(tasks)
    blob = tasks["blob"]
    copied = subset(tasks["ellipse"], [0], "ellipse")
    leaky["blob"] = type(blob)(name="blob", images=np.concatenate([blob.images, copied.images]),
                               masks=np.concatenate([blob.masks, copied.masks]), ids=blob.ids + ["dup"],
                               hashes=blob.hashes + copied.hashes, sources=blob.sources + copied.sources)
    with pytest.raises(MetasegError, match="leakage"):
        make_split(leaky, "ellipse", TINY["meta_val"], seed=0)


def test_config_errors_name_the_option():
    with pytest.raises(MetasegError, match="unknown option"):
        check_config({**TINY, "epochs": 3})
    with pytest.raises(MetasegError, match="not one of the datasets"):
        check_config({**TINY, "targets": ["nope"]})
    bad = copy.deepcopy(TINY)
    bad["methods"]["fomaml"]["learner"]["inner_lr"] = 1.0
    with pytest.raises(MetasegError, match="adaptation budget is shared"):
        check_config(bad)


def test_protocol_rows_resume_and_report(tmp_path, tasks):
    cfg = copy.deepcopy(TINY)
    cfg["work_dir"] = str(tmp_path / "work")
    doc = run_benchmark(cfg, echo=lambda _: None)

    rows = doc["rows"]
    assert {(r["method"], r["shots"]) for r in rows} == {(m, k) for m in ("scratch", "fomaml", "prior") for k in (1, 2)}
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["target"] == "ellipse" and r["episodes"] == 2 and len(r["episode_dice"]) == 2
        assert 0.0 <= r["dice_mean"] <= 1.0 and 0.0 <= r["iou_mean"] <= r["dice_mean"] + 1e-9
        assert r["dice_ci95"] >= 0.0
    fomaml = next(run for run in doc["runs"] if run["method"] == "fomaml")
    assert "ellipse" not in fomaml["meta_train_tasks"] and fomaml["meta_train_steps"] == 2
    prior = next(run for run in doc["runs"] if run["method"] == "prior")  # nothing to meta-train
    assert prior["meta_train_steps"] == 0 and prior["train_seconds"] == 0.0
    assert doc["environment"]["device"] == "cpu" and doc["wall_seconds"] > 0

    # the evaluated episodes: queries never overlap supports (same sampler as evaluate_method)
    for k in (1, 2):
        sampler = EpisodeSampler([tasks["ellipse"]], shots=k, queries=3, seed=0, stream="evaluate")
        for i in range(2):
            ids = sampler.sample_ids(i)
            assert not set(ids["support"]) & set(ids["query"])

    # resume: finished parts are read back, not recomputed
    partial = tmp_path / "work" / "partial" / "ellipse__fomaml.json"
    before = partial.stat().st_mtime_ns
    again = run_benchmark(cfg, echo=lambda _: None)
    assert again["rows"] == rows and partial.stat().st_mtime_ns == before
    assert again["wall_seconds"] == doc["wall_seconds"]  # reassembling adds no wall time
    changed = copy.deepcopy(cfg)
    changed["adaptation"]["steps"] = 3
    with pytest.raises(MetasegError, match="different configuration"):
        run_benchmark(changed, methods=["fomaml"], echo=lambda _: None)

    results = write_results(doc, tmp_path / "results" / "fewshot.json")
    written = write_report(json.loads(results.read_text()), results, tmp_path / "docs" / "results.md", link_base=tmp_path)
    assert (tmp_path / "results" / "fewshot_ellipse.png").stat().st_size > 0
    table = (tmp_path / "results" / "fewshot.md").read_text()
    assert "## ellipse held out" in table and "| fomaml |" in table
    section = (tmp_path / "docs" / "results.md").read_text()
    assert section.startswith("## Results") and "(results/fewshot_ellipse.png)" in section
    assert len(written) == 3


def test_results_section_is_spliced_into_the_readme_between_its_markers(tmp_path):
    from benchmarks.report import splice_into_readme

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN generated:results.md -->\nold table\n<!-- END generated:results.md -->\noutro\n")
    assert splice_into_readme(readme, "results.md", "## Results\nnew table\n")
    text = readme.read_text()
    assert "old table" not in text and "new table" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    plain = tmp_path / "OTHER.md"
    plain.write_text("no markers\n")
    assert not splice_into_readme(plain, "results.md", "x")
    assert plain.read_text() == "no markers\n"


@pytest.mark.parametrize("path", sorted(str(p) for p in __import__("pathlib").Path("benchmarks").glob("**/*.yaml")))
def test_shipped_benchmark_configs_are_valid(path):
    """Every committed benchmark configuration loads, and each method names a registered learner."""
    from benchmarks.fewshot import learner_class, load_config

    cfg = load_config(path)
    for method in cfg["methods"]:
        assert learner_class(cfg, method) is not None
