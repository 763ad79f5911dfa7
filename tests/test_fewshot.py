"""Few-shot benchmark protocol (benchmarks/fewshot.py) on tiny synthetic tasks: folds never see
their target, meta-val is disjoint from meta-train, episodes keep queries out of supports, rows
have the committed schema, a finished part is resumed instead of recomputed, and the report
(table, plots, README section) is generated from the results alone."""
from __future__ import annotations

import copy
import json

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.fewshot import ROW_KEYS, check_config, fold, load_tasks, run_benchmark, write_results
from benchmarks.report import write_report
from metaseg.data.episodes import EpisodeSampler
from metaseg.data.tasks import subset
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
    "evaluation": {"shots": [1, 2], "episodes": 2, "queries": 3},
    "adaptation": {"steps": 2, "inner_lr": 0.1, "inner_optimizer": "sgd"},
    "experiment": {  # the `metaseg meta-train` schema, shared by every method
        "trainer": {"max_steps": 2, "val_check_interval": 2},
        "model": {"model": {"kind": "unet", "encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}},
        "data": {"meta_batch_size": 1, "shots": 2, "queries": 2, "val_episodes": 2,
                 "val_split": 0.25, "val_split_min_images": 12},
    },
    "methods": {"scratch": {}, "fomaml": {"model": {"learner": {"name": "fomaml", "inner_steps": 1}}},
                "prior": {"model": {"learner": {"name": "support_prior"}}}},
}


@pytest.fixture(scope="module")
def tasks():
    """The three synthetic datasets at 16 px."""
    return load_tasks(TINY, echo=lambda _: None)


def test_fold_never_contains_the_target_and_val_is_disjoint(tasks):
    train_tasks, val_tasks = fold(TINY, "fomaml", tasks, "ellipse")
    target = set(tasks["ellipse"].hashes)
    train = {h for t in train_tasks for h in t.hashes}
    val = {h for t in val_tasks for h in t.hashes}
    assert "ellipse" not in [t.name for t in train_tasks + val_tasks]
    assert not target & train and not target & val and not train & val
    assert [t.name for t in val_tasks] == ["blob:val"]  # rings (8 images) is below val_split_min_images
    assert len(train) + len(val) == 16 + 8  # every source image is used exactly once


def test_fold_refuses_a_source_image_that_is_also_in_the_target(tasks):
    leaky = dict(tasks)
    blob = tasks["blob"]
    copied = subset(tasks["ellipse"], [0], "ellipse")
    leaky["blob"] = type(blob)(name="blob", images=np.concatenate([blob.images, copied.images]),
                               masks=np.concatenate([blob.masks, copied.masks]), ids=blob.ids + ["dup"],
                               hashes=blob.hashes + copied.hashes, sources=blob.sources + copied.sources)
    with pytest.raises(MetasegError, match="leakage"):
        fold(TINY, "fomaml", leaky, "ellipse")


def test_config_errors_name_the_option():
    with pytest.raises(MetasegError, match="unknown option"):
        check_config({**TINY, "epochs": 3})
    with pytest.raises(MetasegError, match="not one of the datasets"):
        check_config({**TINY, "targets": ["nope"]})
    bad = copy.deepcopy(TINY)
    bad["methods"]["fomaml"]["model"]["learner"]["inner_lr"] = 1.0
    with pytest.raises(MetasegError, match="adaptation budget is set in"):
        check_config(bad)


def test_learner_option_typo_is_one_line_when_the_config_is_read(tmp_path, capsys):
    """A misspelt learner option fails before any part runs, in one line naming it."""
    from benchmarks.fewshot import main

    bad = copy.deepcopy(TINY)
    bad["methods"]["fomaml"]["model"]["learner"]["inner_stpes"] = 3
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods.fomaml.model.learner" in err[0] and "inner_stpes" in err[0], err
    assert "inner_steps" in err[0]  # the accepted options are listed
    with pytest.raises(MetasegError, match="sets \\['train_tasks'\\]"):  # the fold is the benchmark's
        check_config({**TINY, "experiment": {**TINY["experiment"], "data": {"train_tasks": []}}})


def test_benchmark_part_and_meta_train_give_the_same_checkpoint(tmp_path):
    """One benchmark part (fomaml, 'ellipse' held out) and `metaseg meta-train` with a hand-written
    experiment of the same settings train the same weights: the benchmark has no training path of
    its own, and its meta-val protocol (`data.val_split`) is an experiment option."""
    from metaseg.cli import main as cli_main

    cfg = copy.deepcopy(TINY)
    cfg["work_dir"] = str(tmp_path / "work")
    cfg["methods"]["fomaml"]["trainer"] = {"max_steps": 3, "val_check_interval": 1}  # selection among 3 checkpoints
    run_benchmark(cfg, methods=["fomaml"], echo=lambda _: None)
    experiment = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 3, "val_check_interval": 1, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False},
        "model": {"model": TINY["experiment"]["model"]["model"], "val_adapt_steps": 2,
                  "learner": {"name": "fomaml", "inner_steps": 1, "inner_lr": 0.1, "inner_optimizer": "sgd"}},
        "data": {"train_tasks": TINY["datasets"][1:], "val_split": 0.25, "val_split_min_images": 12,
                 "image_size": 16, "shots": 2, "queries": 2, "meta_batch_size": 1, "val_episodes": 2,
                 "train_episodes_per_epoch": 3, "seed": 0},
    }
    path = tmp_path / "fomaml.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert cli_main(["meta-train", "--config", str(path), "--trainer.default_root_dir", str(tmp_path / "cli")]) == 0

    for name in ("best.ckpt", "last.ckpt"):
        bench = torch.load(tmp_path / "work" / "ellipse" / "fomaml" / name, weights_only=True)
        cli = torch.load(next((tmp_path / "cli").rglob(name)), weights_only=True)
        assert bench["global_step"] == cli["global_step"]
        assert bench["state_dict"].keys() == cli["state_dict"].keys()
        assert all(torch.equal(bench["state_dict"][k], cli["state_dict"][k]) for k in bench["state_dict"])
    assert bench["datamodule_hyper_parameters"]["val_split"] == 0.25
    assert "Trainer(" not in Path("benchmarks/fewshot.py").read_text()  # no training loop of its own
    saved = yaml.safe_load(next((tmp_path / "work" / "ellipse" / "fomaml").rglob("config.yaml")).read_text())
    assert saved["data"]["train_tasks"] == TINY["datasets"][1:]  # the part reruns with `metaseg meta-train --config`


def test_method_adaptation_override_reaches_learner_evaluation_and_fingerprint():
    from benchmarks.fewshot import adaptation, experiment_config, learner_config, method_fingerprint

    cfg = copy.deepcopy(TINY)
    before = method_fingerprint(cfg, "fomaml", "cpu")
    cfg["methods"]["fomaml"]["adaptation"] = {"steps": 5, "inner_lr": 1e-4, "inner_optimizer": "adam"}
    check_config(cfg)
    assert adaptation(cfg, "fomaml")["steps"] == 5 and adaptation(cfg, "scratch")["steps"] == 2
    assert learner_config(cfg, "fomaml") == {"name": "fomaml", "inner_steps": 1, "inner_lr": 1e-4, "inner_optimizer": "adam"}
    assert experiment_config(cfg, "fomaml", "ellipse", Path("run"), "cpu")["model"]["val_adapt_steps"] == 5
    assert method_fingerprint(cfg, "fomaml", "cpu") != before
    from benchmarks.report import method_lines

    doc = {"config": cfg, "rows": [{"method": "fomaml"}]}
    assert "test-time adaptation {'steps': 5, 'inner_lr': 0.0001, 'inner_optimizer': 'adam'}" in method_lines(doc)[0]
    assert method_fingerprint(cfg, "scratch", "cpu") == method_fingerprint(TINY, "scratch", "cpu")
    with pytest.raises(MetasegError, match="methods.fomaml.adaptation: unknown option"):
        check_config({**cfg, "methods": {"fomaml": {**cfg["methods"]["fomaml"], "adaptation": {"stpes": 1}}}})


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
    assert section.startswith("# Results") and "(../results/fewshot_ellipse.png)" in section  # relative to docs/
    assert len(written) == 3
    (tmp_path / "README.md").write_text("intro\n<!-- BEGIN generated:results.md -->\n<!-- END generated:results.md -->\n")
    write_report(json.loads(results.read_text()), results, tmp_path / "docs" / "results.md", link_base=tmp_path)
    headline = (tmp_path / "README.md").read_text()
    assert "| fomaml |" in headline and "[docs/results.md](docs/results.md)" in headline
    assert "Target check (issue 5)" in headline and "held out" not in headline  # the full tables stay in docs/


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


def test_committed_results_resume_under_their_configs():
    """Each committed results file states the configuration its YAML loads to (notes aside: they are
    written after the run), and every part's fingerprint is what that YAML gives now, so rerunning
    the YAML resumes the committed parts instead of refusing them."""
    from benchmarks.fewshot import load_config, method_fingerprint

    configs = {}
    for path in Path("benchmarks").glob("**/*.yaml"):
        cfg = load_config(path)
        configs[cfg.get("results")] = cfg
    checked = 0
    for path in sorted(Path("benchmarks/results").glob("**/*.json")):
        doc = json.loads(path.read_text())
        if "config" not in doc or "runs" not in doc:
            continue
        cfg = configs[str(path)]
        assert {k: v for k, v in doc["config"].items() if k != "notes"} == {k: v for k, v in cfg.items() if k != "notes"}, path
        for run in doc["runs"]:
            assert run["fingerprint"] == method_fingerprint(cfg, run["method"], run["device"]), (path, run["method"])
            checked += 1
    assert checked >= 21  # benchmarks/results/fewshot.json alone has 7 methods x 3 targets


_POOL_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from benchmarks.fewshot import die_with_parent
if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def test_benchmark_workers_die_when_the_benchmark_is_killed(tmp_path):
    """`--jobs N` workers must not train on (and write checkpoints) after the benchmark is killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "pool.py"
    script.write_text(_POOL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=repo)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "the pool worker outlived the killed benchmark process"


def test_wall_time_is_unknown_not_zero_when_no_computing_invocation_was_recorded(tmp_path):
    from benchmarks.fewshot import record_wall

    assert record_wall(tmp_path, 5.0, parts=0, jobs=1) is None  # only reassembled, no log: unknown
    assert record_wall(tmp_path, 5.0, parts=2, jobs=1) == 5.0
    assert record_wall(tmp_path, 9.0, parts=0, jobs=1) == 5.0  # reassembling adds nothing
