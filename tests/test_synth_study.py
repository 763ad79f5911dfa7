"""The synthetic-data study's plumbing: an MSD task with two labels is refused until the labels are
chosen and is then read as their union (train and audit alike), and benchmarks/synthetic.py appends
keyed rows, skips finished keys after a kill and rebuilds its report from all rows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaseg.cli import main
from metaseg.errors import MetasegError
from metaseg.generative.data import load_dataset
from metaseg.generative.trainer import read_synth_checkpoint


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path


def write_two_label_msd(root):
    """Hippocampus-like: per volume, label 1 (head) on slices 0-3, label 2 (body) on slices 3-7."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    rng = np.random.default_rng(0)
    for case in range(6):
        vol = rng.normal(100, 30, (16, 16, 8)).astype(np.float32)
        lab = np.zeros((16, 16, 8), np.uint8)
        lab[4:9, 4:12, 0:4] = 1
        lab[8:13, 4:12, 3:8] = 2
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "imagesTr" / f"hip_{case:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"hip_{case:03d}.nii.gz")
    return root


def test_two_label_msd_is_refused_then_read_as_the_union(env, capsys):
    root = write_two_label_msd(env / "msd")
    with pytest.raises(MetasegError, match=r"--dataset .*2 foreground labels \(1 Anterior, 2 Posterior\).*-o label=1,2"):
        load_dataset(root, 16)
    union = load_dataset(root, 16, reader_options={"label": "1,2"})
    head = load_dataset(root, 16, reader_options={"label": 1})
    assert len(union) == 6 * 8 and len(head) == 6 * 4  # label-2-only slices are kept, not dropped
    assert set(np.unique(union.masks)) == {0, 1}
    by_id = dict(zip(union.ids, union.masks))
    for i, m in zip(head.ids, head.masks):  # the union covers the head on every slice that has it
        assert (by_id[i] >= m).all()
    assert by_id["hip_000_z3"].sum() > dict(zip(head.ids, head.masks))["hip_000_z3"].sum()  # slice 3 has both labels

    tiny = ("--size", "16", "--width", "8", "--batch-size", "4", "--steps", "2")
    assert main(["synth", "train", "--dataset", str(root), "--model", "gan", "--out", str(env / "no"), *tiny]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "-o label=1,2" in err and not (env / "no").exists()
    assert main(["synth", "train", "--dataset", str(root), "--model", "gan", "--out", str(env / "run"), "-o", "label=1,2", *tiny]) == 0
    ckpt = read_synth_checkpoint(env / "run")
    assert ckpt["config"]["reader_options"] == {"label": "1,2"} and len(ckpt["train_hashes"]) + len(ckpt["heldout_hashes"]) == 48
    assert main(["synth", "sample", "--checkpoint", str(env / "run"), "--n", "4", "--out", str(env / "synth")]) == 0
    # the audit reads --train with the checkpoint's label choice (no -o needed, no refusal)
    assert main(["synth", "audit", "--synthetic", str(env / "synth"), "--train", str(root), "--checkpoint", str(env / "run"),
                 "--out", str(env / "audit")]) == 0
    report = json.loads((env / "audit" / "audit.json").read_text())
    assert report["heldout_vs_train"]["n"] == len(ckpt["heldout_hashes"])


def test_benchmark_appends_keyed_rows_and_resumes(env, make_pair_folder, monkeypatch):
    from benchmarks import synthetic as bench
    from metaseg.generative import segmenters

    data = make_pair_folder(n=10, size=(20, 20), name="tiny-ds")
    rows, out = env / "rows.jsonl", env / "results" / "synthetic"
    argv = ["--dataset", str(data), "--size", "16", "--n-train", "4", "all", "--cap", "6", "--generators", "gan",
            "--segmenters", "unet", "--gan-steps", "2", "--gan-width", "8", "--seg-steps", "1", "--ssim-candidates", "2",
            "--work", str(env / "work"), "--rows", str(rows), "--out", str(out)]
    fits = []
    real_fit = segmenters.fit_segmenter
    monkeypatch.setattr(segmenters, "fit_segmenter", lambda *a, **k: fits.append(len(a[1])) or real_fit(*a, **k))
    assert bench.main(argv) == 0
    written = bench.read_rows(rows)
    keys = [bench.key_of(r) for r in written]
    assert keys == [("tiny-ds", "real", 4, "unet", 0), ("tiny-ds", "gan", 4, "unet", 0),
                    ("tiny-ds", "real", 6, "unet", 0), ("tiny-ds", "gan", 6, "unet", 0)]  # 'all' = 8 capped at 6
    assert fits == [4, 4, 6, 6]  # synthetic and real segmenters train on the same number of pairs
    gan6 = written[3]
    assert gan6["n_synthetic"] == gan6["n_segmenter_train"] == gan6["n_generator_train"] == 6
    report = json.loads(out.with_suffix(".json").read_text())
    assert len(report["rows"]) == 2
    for r in report["rows"]:
        for field in ("generator", "dataset", "segmenter", "n_generator_train", "dice_synthetic", "dice_real", "dice_ratio",
                      "frac_above_tau", "tau", "max_corr_median", "max_corr_p99", "heldout_frac_above_tau",
                      "heldout_max_corr_median", "heldout_max_corr_p99", "dice_difference_ci95"):
            assert field in r, field
        assert r["dice_ratio"] == pytest.approx(r["dice_synthetic"] / r["dice_real"], abs=1e-3)
    assert (out / "tiny-ds_gan_n6_samples.png").is_file() and (out / "tiny-ds_gan_n4_closest_pairs.png").is_file()

    fits.clear()
    assert bench.main(argv) == 0  # everything done: nothing retrained, no row added
    assert fits == [] and len(bench.read_rows(rows)) == 4

    # a kill after the second row, in the middle of writing the third: resume adds only what is missing
    lines = rows.read_text().splitlines()
    rows.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    assert bench.main(argv) == 0
    assert fits == [6, 6] and [bench.key_of(r) for r in bench.read_rows(rows)] == keys
    assert len(json.loads(out.with_suffix(".json").read_text())["rows"]) == 2
