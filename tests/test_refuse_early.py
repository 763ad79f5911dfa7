"""Bad input is refused before any work (issue 17): for every command, each case exits 2 with one
line naming the option or file, no traceback, nothing built or decoded, and --out untouched.

Run in-process through `metaseg.cli.main` (and `benchmarks.fewshot.main`) on tiny synthetic data;
building a model or decoding an image during a refused case fails the test (`no_work`).
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from metaseg.cli import main

N_PAIRS = 4  # images of the tiny dataset


def snapshot(path: Path) -> dict[str, str] | None:
    """Every file under `path` with a hash of its bytes (None: the path does not exist)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


@pytest.fixture
def env(tmp_path: Path, make_pair_folder, monkeypatch) -> dict[str, Path]:
    """The tiny inputs every case uses; cwd is tmp_path so relative names resolve there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    ds = make_pair_folder(n=N_PAIRS)
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain / "a.png")
    (tmp_path / "empty").mkdir()
    odd = tmp_path / "odd"  # a non-standard layout: cropped/ + mask/
    (ds / "images").rename(odd / "cropped") if odd.mkdir() is None else None
    (ds / "masks").rename(odd / "mask")
    ds = make_pair_folder(n=N_PAIRS, name="ds2")
    (tmp_path / "notes.ckpt").write_text("this is a text file, not a checkpoint\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's file")
    return {"ds": ds, "plain": plain, "empty": tmp_path / "empty", "odd": odd, "text": tmp_path / "notes.ckpt",
            "out": out, "new": tmp_path / "new_out", "tmp": tmp_path}


@pytest.fixture
def no_work(monkeypatch):
    """Building a model or decoding an image during a refused case is a test failure."""
    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} before the bad input was refused")
        return fail

    import metaseg.data.images as images
    import metaseg.jobs.adapt as adapt
    import metaseg.jobs.evaluate as evaluate

    monkeypatch.setattr(images, "decode_pair", forbidden("an image was decoded"))
    monkeypatch.setattr(images, "read_image", forbidden("an image was decoded"))
    monkeypatch.setattr(adapt, "build_method", forbidden("a model was built"))
    monkeypatch.setattr(evaluate, "build_method", forbidden("a model was built"))


def adapt(e, *extra: str, out: str = "new") -> list[str]:
    return ["adapt", "--support", str(e["ds"]), "--images", str(e["plain"]), "--out", str(e[out]), "--shots", "2",
            "--size", "16", *extra]


def evaluate(e, *extra: str, out: str = "new", dataset: str = "ds") -> list[str]:
    return ["evaluate", "--method", "scratch", "--dataset", str(e[dataset]) if dataset in e else dataset,
            "--out", str(e[out]), "--episodes", "1", "--size", "16", *extra]


# (id, argv builder, words the one line must contain); every case exits 2 and leaves --out as it was
CASES = [
    ("check-size-0", lambda e: ["data", "check", str(e["ds"]), "--size", "0"], ["--size", "0"]),
    ("check-size-negative", lambda e: ["data", "check", str(e["ds"]), "--size", "-4"], ["--size", "-4"]),
    ("check-limit-negative", lambda e: ["data", "check", str(e["ds"]), "--limit", "-1"], ["--limit"]),
    ("check-missing-folder", lambda e: ["data", "check", "no_such_folder"], ["no_such_folder"]),
    ("check-unknown-layout", lambda e: ["data", "check", str(e["ds"]), "--layout", "nope"], ["'nope'"]),
    ("check-odd-layout-suggests-its-options", lambda e: ["data", "check", str(e["odd"])],
     ["--layout", "--images-dir/--masks-dir", "odd"]),
    ("sample-shots-0", lambda e: ["data", "sample", str(e["ds"]), "--shots", "0"], ["--shots must be >= 1 (got 0)"]),
    ("sample-too-many", lambda e: ["data", "sample", str(e["ds"]), "--shots", "3", "--queries", "5"],
     ["--shots 3", "--queries 5", f"has {N_PAIRS} images"]),
    ("sample-old-query-name", lambda e: ["data", "sample", str(e["ds"]), "--query", "3"], ["--query"]),
    ("adapt-size-0", lambda e: adapt(e, "--size", "0"), ["--size", "(got 0)"]),
    ("adapt-size-negative", lambda e: adapt(e, "--size", "-4"), ["--size", "-4"]),
    ("adapt-shots-0", lambda e: adapt(e, "--shots", "0"), ["--shots must be >= 1 (got 0)"]),
    ("adapt-steps-negative", lambda e: adapt(e, "--steps", "-1"), ["--steps must be >= 0 (got -1)"]),
    ("adapt-shots-too-many", lambda e: adapt(e, "--shots", "9"), ["--support has 4 labelled images", "--shots 9"]),
    ("adapt-images-missing", lambda e: adapt(e, "--images", "no_such_images"), ["--images no_such_images", "no such folder"]),
    ("adapt-images-empty", lambda e: adapt(e, "--images", str(e["empty"])), ["--images", "no image files"]),
    ("adapt-support-missing", lambda e: adapt(e, "--support", "no_such_support"), ["--support no_such_support"]),
    ("adapt-support-odd-layout", lambda e: adapt(e, "--support", str(e["odd"])), ["--layout", "--images-dir/--masks-dir"]),
    ("adapt-checkpoint-text", lambda e: adapt(e, "--checkpoint", str(e["text"])), ["--checkpoint", "notes.ckpt"]),
    ("adapt-device", lambda e: adapt(e, "--device", "tpu"), ["--device", "'tpu'"]),
    ("adapt-out-not-empty", lambda e: adapt(e, out="out"), ["--out", "--overwrite"]),
    ("evaluate-size-0", lambda e: evaluate(e, "--size", "0"), ["--size", "(got 0)"]),
    ("evaluate-size-negative", lambda e: evaluate(e, "--size", "-4"), ["--size", "-4"]),
    ("evaluate-shots-negative", lambda e: evaluate(e, "--shots", "-1"), ["--shots must be >= 1 (got -1)"]),
    ("evaluate-shots-0", lambda e: evaluate(e, "--shots", "0"), ["--shots must be >= 1 (got 0)"]),
    ("evaluate-second-k-too-large", lambda e: evaluate(e, "--shots", "2", "7"), ["--shots 7", f"has {N_PAIRS} images"]),
    ("evaluate-steps-negative", lambda e: evaluate(e, "--steps", "-1"), ["--steps must be >= 0 (got -1)"]),
    ("evaluate-episodes-0", lambda e: evaluate(e, "--episodes", "0"), ["--episodes must be >= 1 (got 0)"]),
    ("evaluate-queries-0", lambda e: evaluate(e, "--queries", "0"), ["--queries must be >= 1 (got 0)"]),
    ("evaluate-dataset-unknown-name", lambda e: evaluate(e, dataset="NoSuchDataset"), ["--dataset NoSuchDataset", "NoSuchDataset"]),
    ("evaluate-dataset-odd-layout", lambda e: evaluate(e, dataset="odd"), ["--layout", "--images-dir/--masks-dir"]),
    ("evaluate-checkpoint-text", lambda e: ["evaluate", "--checkpoint", str(e["text"]), "--dataset", str(e["ds"]),
                                            "--out", str(e["new"])], ["--checkpoint", "notes.ckpt"]),
    ("evaluate-device", lambda e: evaluate(e, "--device", "gpu"), ["--device", "'gpu'"]),
    ("evaluate-out-not-empty", lambda e: evaluate(e, out="out"), ["--out", "--overwrite"]),
    ("evaluate-out-is-a-file", lambda e: evaluate(e, out="text"), ["--out", "notes.ckpt", "not a folder"]),
]


@pytest.mark.parametrize("argv, words", [pytest.param(b, w, id=i) for i, b, w in CASES])
def test_refused_before_any_work(env, no_work, capsys, argv, words):
    before = {name: snapshot(env[name]) for name in ("out", "new", "text")}
    rc = main(argv(env))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("metaseg"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert {name: snapshot(env[name]) for name in before} == before  # --out neither created nor changed


def test_unknown_dataset_names_what_was_typed_and_where_it_was_looked_for(env, no_work, capsys):
    from metaseg.data.tasks import resolve_data_root

    assert main(evaluate(env, dataset="NoSuchDataset")) == 2
    err = capsys.readouterr().err
    assert str(env["tmp"] / "NoSuchDataset") in err
    root = resolve_data_root()
    assert (str(root / "NoSuchDataset") in err) if root else "no data root" in err


def test_a_non_standard_layout_is_read_by_every_dataset_command(env, capsys):
    """cropped/ + mask/: the reader options of `data check` work for evaluate, data sample and adapt."""
    layout = ["--layout", "generic", "--images-dir", "cropped", "--masks-dir", "mask"]
    odd = str(env["odd"])
    assert main(["data", "check", odd, *layout]) == 0
    assert main(["data", "sample", odd, *layout, "--shots", "1", "--queries", "2", "--episodes", "1", "--size", "16"]) == 0
    assert main(["evaluate", "--method", "support_prior", "--dataset", odd, *layout, "--shots", "1", "--episodes", "1",
                 "--size", "16", "--out", str(env["tmp"] / "e")]) == 0
    assert main(["adapt", "--support", odd, "--images", odd, *layout, "--shots", "1", "--steps", "1", "--size", "16",
                 "--out", str(env["tmp"] / "a")]) == 0
    assert len(list((env["tmp"] / "a" / "masks").iterdir())) == N_PAIRS


def test_a_failed_adapt_leaves_out_as_it_was(env, capsys):
    """An image that cannot be decoded is found while writing: what this run wrote is removed, the
    user's files and (with --overwrite) the previous run's outputs are kept."""
    images = env["tmp"] / "queries"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((10, 12, 3), 40, np.uint8)).save(images / f"{name}.png")
    (images / "c.png").write_bytes(b"not a png")  # listed (by suffix), unreadable
    argv = ["adapt", "--support", str(env["ds"]), "--images", str(images), "--shots", "2", "--steps", "1", "--size", "16"]
    assert main([*argv, "--out", str(env["new"])]) == 2
    assert "c.png" in capsys.readouterr().err and not env["new"].exists()
    good = env["tmp"] / "good"
    good.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.png").rename(good / f"{name}.png")
    assert main([*argv[:4], str(good), *argv[5:], "--out", str(env["out"]), "--overwrite"]) == 0
    before = snapshot(env["out"])
    (good / "c.png").write_bytes(b"not a png")
    assert main([*argv[:4], str(good), *argv[5:], "--out", str(env["out"]), "--overwrite"]) == 2
    assert snapshot(env["out"]) == before and (env["out"] / "keep.txt").read_text() == "the user's file"


META_TRAIN = ["meta-train", "--config", "experiments/demo.yaml", "--trainer.max_steps", "1"]


@pytest.mark.parametrize("option, value", [("data.image_size", "0"), ("data.shots", "0"), ("data.queries", "-1")])
def test_meta_train_names_the_data_option(env, capsys, option, value):
    repo = Path(__file__).resolve().parents[1]
    argv = [*META_TRAIN, f"--{option}", value, "--trainer.default_root_dir", str(env["new"])]
    argv[2] = str(repo / argv[2])
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("Seed set to")]  # Lightning's
    assert len(err) == 1 and err[0].startswith(f"metaseg: error: {option} must be") and value in err[0]
    assert snapshot(env["new"]) is None


TINY = {
    "seed": 0, "device": "cpu", "image_size": 16,
    "datasets": [{"name": "a", "root": "synthetic:bright_ellipse", "n": 6}, {"name": "b", "root": "synthetic:dark_blob", "n": 6}],
    "targets": ["a"],
    "evaluation": {"shots": [1, 2], "episodes": 1, "queries": 2},
    "adaptation": {"steps": 1},
    "experiment": {"trainer": {"max_steps": 1}, "data": {"meta_batch_size": 1, "shots": 1, "queries": 1}},
    "methods": {"scratch": {}},
}


@pytest.mark.parametrize("change, extra, words", [
    ({"evaluation": {"shots": [1, 9], "episodes": 1, "queries": 2}}, [], ["evaluation.shots 9", "has 6 images"]),
    ({"image_size": 0}, [], ["image_size", "(got 0)"]),
    ({"methods": {}}, [], ["methods is empty"]),
    ({}, ["--device", "tpu"], ["--device", "tpu"]),
    ({}, ["--jobs", "x"], ["--jobs"]),
    ({}, ["--methods", "nope"], ["nope"]),
    (None, [], ["--config", "missing.yaml"]),
], ids=["k-too-large", "image-size-0", "no-methods", "device", "jobs-not-a-number", "unknown-method", "missing-config"])
def test_benchmark_refuses_before_any_work(env, capsys, change, extra, words):
    from benchmarks.fewshot import main as benchmark

    cfg = copy.deepcopy(TINY) | (change or {}) | {"work_dir": str(env["new"]), "results": str(env["new"] / "r.json"),
                                                 "docs": str(env["new"] / "docs")}
    path = env["tmp"] / ("bench.yaml" if change is not None else "missing.yaml")
    if change is not None:
        path.write_text(yaml.safe_dump(cfg))
    assert benchmark(["--config", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert snapshot(env["new"]) is None
