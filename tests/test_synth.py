"""`metaseg synth`: joint generators sample valid pairs, training resumes exactly after a kill, the
memorisation audit finds a planted copy and nothing else, bad input is a one-line error."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from metaseg.cli import main
from metaseg.data.cache import load_task
from metaseg.data.readers import detect_layout
from metaseg.generative.audit import nearest_by_correlation
from metaseg.generative.data import split_by_hash
from metaseg.generative.trainer import RunConfig, read_synth_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
TINY = ("--size", "16", "--width", "8", "--batch-size", "4")


def smooth_field(rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """A random smooth grayscale image: independent draws are only weakly correlated."""
    field = gaussian_filter(rng.standard_normal((side, side)), 2.5)
    return ((field - field.min()) / (np.ptp(field) + 1e-9) * 255).astype(np.uint8)


def write_dataset(root: Path, n: int, seed: int) -> Path:
    """images/ + masks/ of n smooth fields; the mask is the field's bright part (it fits its image)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = smooth_field(rng)
        Image.fromarray(image).save(root / "images" / f"img{seed}_{i:02d}.png")
        Image.fromarray(((image > 128) * 255).astype(np.uint8)).save(root / "masks" / f"img{seed}_{i:02d}.png")
    return root


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["synth", *map(str, argv)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return rc, captured.err


@pytest.mark.parametrize("model", ["gan", "diffusion"])
def test_generator_trains_and_samples_a_valid_dataset(env, capsys, model):
    data = write_dataset(env / "ds", 12, seed=0)
    rc, err = cli(capsys, "train", "--dataset", data, "--model", model, "--out", env / "run", "--steps", 3, *TINY,
                  "--log-every", 1)
    assert rc == 0 and f"[{model}] step 3/3" in err and "eta" in err
    assert (env / "run" / "last.ckpt").is_file() and (env / "run" / "samples.png").is_file()
    rc, _ = cli(capsys, "sample", "--checkpoint", env / "run" / "last.ckpt", "--n", 5, "--out", env / "synth",
                "--batch-size", 2, "--sample-steps", 3)
    assert rc == 0
    masks = sorted((env / "synth" / "masks").iterdir())
    images = sorted((env / "synth" / "images").iterdir())
    assert [p.name for p in masks] == [p.name for p in images] == [f"synth_{i:05d}.png" for i in range(5)]
    for m, im in zip(masks, images):
        mask = np.asarray(Image.open(m))
        assert mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(im)).shape == (16, 16)  # grayscale in, grayscale out
    # a dataset every command reads: the generic reader pairs it, the cache decodes it, `data check` passes
    assert detect_layout(env / "synth") == "generic"
    task = load_task(env / "synth", size=16, cache_dir=env / "cache")
    assert len(task) == 5 and task.channels == 1 and set(np.unique(task.masks)) <= {0, 1}
    assert main(["data", "check", str(env / "synth"), "--limit", "0"]) == 0
    capsys.readouterr()


def test_sampling_is_seeded_and_never_overwrites(env, capsys):
    data = write_dataset(env / "ds", 8, seed=0)
    assert cli(capsys, "train", "--dataset", data, "--model", "gan", "--out", env / "run", "--steps", 2, *TINY)[0] == 0
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert cli(capsys, "sample", "--checkpoint", env / "run", "--n", 3, "--out", env / name, "--seed", seed)[0] == 0
    read = lambda name: [np.asarray(Image.open(p)) for p in sorted((env / name / "images").iterdir())]  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(read("a"), read("b")))
    assert not all(np.array_equal(x, y) for x, y in zip(read("a"), read("c")))
    before = (env / "a" / "images" / "synth_00000.png").read_bytes()
    rc, err = cli(capsys, "sample", "--checkpoint", env / "run", "--n", 3, "--out", env / "a", "--seed", 9)
    assert rc == 2 and "--out" in err and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (env / "a" / "images" / "synth_00000.png").read_bytes() == before


def test_split_is_by_content_and_keeps_volumes_together():
    hashes = [f"vol{v}#z{s}" for v in range(10) for s in range(3)]
    split = split_by_hash(hashes, heldout_fraction=0.3, seed=1)
    train_vols = {hashes[i].split("#")[0] for i in split.train}
    held_vols = {hashes[i].split("#")[0] for i in split.heldout}
    assert len(held_vols) == 3 and not train_vols & held_vols and len(split.train) + len(split.heldout) == 30
    shuffled = hashes[::-1]  # reordering files does not move an image between splits
    again = split_by_hash(shuffled, heldout_fraction=0.3, seed=1)
    assert {shuffled[i] for i in again.heldout} == {hashes[i] for i in split.heldout}
    assert len(split_by_hash(hashes, 0.3, n_train=5, seed=1).train) == 5


def test_chunked_correlation_equals_brute_force():
    rng = np.random.default_rng(0)
    query, train_set = rng.random((7, 2, 5, 5)), rng.random((11, 2, 5, 5))
    values, indices = nearest_by_correlation(query, train_set, k=3, chunk=4)
    full = np.corrcoef(query.reshape(7, -1), train_set.reshape(11, -1))[:7, 7:]
    np.testing.assert_allclose(values, -np.sort(-full, axis=1)[:, :3], atol=1e-5)
    np.testing.assert_array_equal(indices[:, 0], full.argmax(1))


def test_audit_flags_a_planted_copy_and_nothing_else(env, capsys):
    import json

    train_dir = write_dataset(env / "train", 12, seed=0)
    synth = write_dataset(env / "synth", 6, seed=1)  # unrelated images of the same kind
    for sub in ("images", "masks"):
        shutil.copy(train_dir / sub / "img0_05.png", synth / sub / "planted.png")
    rc, err = cli(capsys, "audit", "--synthetic", synth, "--train", train_dir, "--heldout", write_dataset(env / "held", 5, seed=2),
                  "--out", env / "audit", "--size", 32)
    assert rc == 0 and "1/7" in err
    report = json.loads((env / "audit" / "audit.json").read_text())
    assert report["synthetic_vs_train"]["n_above_tau"] == 1 and report["heldout_vs_train"]["n_above_tau"] == 0
    closest = report["closest"][0]
    assert closest["synthetic"] == "planted" and closest["train"] == "img0_05"
    assert closest["max_corr"] > 0.999 and closest["max_ssim"] > 0.999
    rows = (env / "audit" / "synthetic.csv").read_text().splitlines()[1:]
    flagged = [r.split(",")[0] for r in rows if r.endswith(",1")]
    assert flagged == ["planted"]
    assert max(float(r.split(",")[1]) for r in rows if not r.startswith("planted")) < 0.9
    for name in ("histogram.png", "closest_pairs.png", "reference.csv"):
        assert (env / "audit" / name).is_file()


def test_audit_with_checkpoint_uses_the_generators_split(env, capsys):
    import json

    data = write_dataset(env / "ds", 10, seed=0)
    assert cli(capsys, "train", "--dataset", data, "--model", "gan", "--out", env / "run", "--steps", 1, *TINY,
               "--heldout-fraction", "0.3")[0] == 0
    ckpt = read_synth_checkpoint(env / "run")
    assert len(ckpt["train_hashes"]) == 7 and len(ckpt["heldout_hashes"]) == 3
    # planting a held-out image is NOT a copy of a training image; planting a training one is
    synth = env / "synth"
    for sub in ("images", "masks"):
        (synth / sub).mkdir(parents=True)
        shutil.copy(data / sub / f"{ckpt['train_ids'][0]}.png", synth / sub / "copy.png")
    task = load_task(data, size=16, cache_dir=env / "cache")
    held_id = next(i for i, h in zip(task.ids, task.hashes) if h in set(ckpt["heldout_hashes"]))
    for sub in ("images", "masks"):
        shutil.copy(data / sub / f"{held_id}.png", synth / sub / "held.png")
    assert cli(capsys, "audit", "--synthetic", synth, "--train", data, "--checkpoint", env / "run", "--out", env / "a")[0] == 0
    report = json.loads((env / "a" / "audit.json").read_text())
    assert report["size"] == 16 and report["heldout_vs_train"]["n"] == 3
    assert [c["synthetic"] for c in report["closest"] if c["max_corr"] > 0.95] == ["copy"]


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


class Crash(RuntimeError):
    pass


def test_checkpoint_every_few_minutes_as_well_as_every_n_steps(env):
    """--save-minutes: a checkpoint is due by time even when --save-every steps are far away."""
    data = write_dataset(env / "ds", 8, seed=0)
    config = RunConfig(model="gan", dataset=str(data), size=16, width=8, batch_size=4)

    def crash_at_step_3(line: str) -> None:
        if "step 3/" in line:
            raise Crash(line)

    for minutes, expected in ((0.0, None), (1e-9, 2)):  # steps only: nothing yet; by time: after every step
        out = env / f"run{minutes}"
        with pytest.raises(Crash):
            train(config, out, steps=6, save_every=1000, log_every=1, echo=crash_at_step_3, save_minutes=minutes)
        assert (_state(out / "last.ckpt")["step"] if (out / "last.ckpt").exists() else None) == expected


@pytest.mark.parametrize("model", ["gan", "diffusion"])
def test_crash_between_checkpoints_resumes_to_the_same_run(env, model):
    data = write_dataset(env / "ds", 8, seed=0)
    config = RunConfig(model=model, dataset=str(data), size=16, width=8, batch_size=4)
    straight = train(config, env / "straight", steps=6, save_every=3, echo=lambda line: None)

    def crash_after_step_4(line: str) -> None:
        if "step 4/" in line:
            raise Crash(line)

    with pytest.raises(Crash):
        train(config, env / "killed", steps=6, save_every=3, log_every=1, echo=crash_after_step_4)
    assert _state(env / "killed" / "last.ckpt")["step"] == 3  # step 4 was lost with the crash
    lines: list[str] = []
    resumed = train(config, env / "killed", steps=6, save_every=3, echo=lines.append)
    assert any("resuming" in line and "step 3/6" in line for line in lines)
    a, b = _state(straight), _state(resumed)
    assert a["step"] == b["step"] == 6
    for net, weights in a["state"].items():
        if isinstance(weights, dict) and "state" not in weights:  # networks (optimiser states compared via samples)
            for name, value in weights.items():
                torch.testing.assert_close(b["state"][net][name], value, rtol=0, atol=1e-6, msg=f"{net}.{name}")
    preview = lambda run: np.asarray(Image.open(env / run / "samples.png"))  # noqa: E731  (sampled after training)
    assert np.array_equal(preview("straight"), preview("killed"))


def test_sigkill_during_training_resumes_to_the_same_samples(env, capsys):
    """A real kill -9 of `metaseg synth train`: rerunning the command continues from last.ckpt, and the
    finished run samples exactly what an uninterrupted run samples for the same seed."""
    data = write_dataset(env / "ds", 8, seed=0)
    args = ["synth", "train", "--dataset", str(data), "--model", "gan", *TINY, "--steps", "300", "--save-every", "5"]
    cmd = [sys.executable, "-m", "metaseg.cli", "--threads", "1", *args, "--out", str(env / "killed")]
    envvars = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=envvars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (env / "killed" / "last.ckpt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _state(env / "killed" / "last.ckpt")["step"]
    assert 0 < killed_at < 300
    assert main([*args, "--out", str(env / "killed")]) == 0
    assert "resuming" in capsys.readouterr().err
    assert main([*args, "--out", str(env / "straight")]) == 0
    for name in ("killed", "straight"):
        assert main(["synth", "sample", "--checkpoint", str(env / name), "--n", "4", "--out", str(env / f"s_{name}"), "--seed", "7"]) == 0
    for a, b in zip(sorted((env / "s_killed" / "images").iterdir()), sorted((env / "s_straight" / "images").iterdir())):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name


@pytest.mark.parametrize("argv, option", [
    (["train", "--dataset", "{tmp}/nope", "--model", "gan", "--out", "{tmp}/r"], "--dataset"),
    (["train", "--dataset", "{ds}", "--model", "vae", "--out", "{tmp}/r"], "--model"),
    (["train", "--dataset", "{ds}", "--model", "gan", "--out", "{ds}"], "--out"),
    (["train", "--dataset", "{ds}", "--model", "gan", "--out", "{tmp}/r", "--size", "48"], "--size"),
    (["train", "--dataset", "{ds}", "--model", "gan", "--out", "{tmp}/r", "--n-train", "999"], "--n-train"),
    (["sample", "--checkpoint", "{tmp}/none.ckpt", "--n", "2", "--out", "{tmp}/s"], "--checkpoint"),
    (["sample", "--checkpoint", "{ds}/images/img0_00.png", "--n", "2", "--out", "{tmp}/s"], "--checkpoint"),
    (["audit", "--synthetic", "{tmp}/nope", "--train", "{ds}", "--out", "{tmp}/a"], "--synthetic"),
    (["audit", "--synthetic", "{ds}", "--train", "{tmp}/nope", "--out", "{tmp}/a"], "--train"),
    (["audit", "--synthetic", "{ds}", "--train", "{ds}", "--out", "{ds}"], "--out"),
    (["audit", "--synthetic", "{ds}", "--train", "{ds}", "--out", "{tmp}/a", "--tau", "1.5"], "--tau"),
])
def test_bad_input_is_one_line_naming_the_option(env, capsys, argv, option):
    ds = write_dataset(env / "ds", 4, seed=0)
    rc, err = cli(capsys, *[a.format(tmp=env, ds=ds) for a in argv])
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and option in err, err


def test_changed_settings_do_not_resume(env, capsys):
    data = write_dataset(env / "ds", 6, seed=0)
    assert cli(capsys, "train", "--dataset", data, "--model", "gan", "--out", env / "run", "--steps", 1, *TINY)[0] == 0
    rc, err = cli(capsys, "train", "--dataset", data, "--model", "gan", "--out", env / "run", "--steps", 2, *TINY, "--seed", "5")
    assert rc == 2 and "different settings (seed: 0 there, 5 now)" in err
    assert _state(env / "run" / "last.ckpt")["step"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line(env, capsys):
    ds = write_dataset(env / "ds", 4, seed=0)
    rc, err = cli(capsys, "train", "--dataset", ds, "--model", "gan", "--out", env / "r", "--device", "cuda")
    assert rc == 2 and "--device cuda" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["unet", "segformer"])
def test_segmenters_learn_a_simple_mask(name):
    """Bright square on dark ground: a few dozen steps must beat the all-background Dice of 0."""
    from metaseg.generative.segmenters import fit_segmenter, mean_dice

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    masks = np.zeros((24, 32, 32), np.uint8)
    for i, (y, x) in enumerate(rng.integers(2, 18, (24, 2))):
        masks[i, y:y + 12, x:x + 12] = 1
    images = (masks[:, None] * 160 + rng.integers(0, 60, (24, 1, 32, 32))).astype(np.uint8)
    model = fit_segmenter(name, images[:16], masks[:16], steps=40, batch_size=8)
    assert mean_dice(model, images[16:], masks[16:]) > 0.5
    with pytest.raises(Exception, match="unknown segmenter"):
        fit_segmenter("vit", images, masks, steps=1)
