"""benchmarks/sam_mix.py's report: seeds pooled on the same test images, cross-domain rows (no model run)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import sam_mix as bench


def _rec(method, seed, dice, dataset="BUSI", n=50, train=None, ids=("a", "b", "c", "d")):
    rec = {"method": method, "dataset": dataset, "n_labelled": n, "seed": seed, "seconds": 1.0, "n_pool_labels": 10,
           "n_test": len(ids), "test_ids": list(ids), "dice_present": list(dice), "dice_all": list(dice),
           "false_positive": [] if train else [0.0, 1.0]}
    if train:
        rec.update(train_dataset=train, cross_domain=train != dataset)
    return rec


def test_paired_difference_averages_each_image_over_the_shared_seeds():
    a = {0: _rec("sam_mix", 0, [0.6, 0.7, 0.8, 0.9]), 1: _rec("sam_mix", 1, [0.8, 0.7, 0.6, 0.5])}
    b = {0: _rec("unet_scratch", 0, [0.5, 0.5, 0.5, 0.5]), 1: _rec("unet_scratch", 1, [0.5, 0.6, 0.5, 0.4]),
         2: _rec("unet_scratch", 2, [0.0] * 4)}  # seed 2 has no sam_mix run: left out
    diff, ci, seeds, per_seed = bench.paired(a, b)
    per_image = np.array([0.2, 0.15, 0.2, 0.25])  # ((a0-b0) + (a1-b1)) / 2 per image
    assert seeds == [0, 1] and diff == pytest.approx(100 * per_image.mean())
    assert ci == pytest.approx(100 * bench.mean_ci95(per_image)[1])
    assert per_seed == pytest.approx([25.0, 15.0])


def test_report_pools_seeds_picks_the_best_baseline_and_keeps_cross_domain_apart(tmp_path):
    runs = tmp_path / "sam_mix_runs"
    runs.mkdir()
    records = [_rec("sam_mix", s, [0.9, 0.9, 0.8, 0.8]) for s in (0, 1)] + \
        [_rec("ablation_cam_box", s, [0.7, 0.7, 0.7, 0.7]) for s in (0, 1)] + [_rec("unet_scratch", 0, [0.1] * 4)] + \
        [_rec(m, 0, d, dataset=test, train="Kvasir-SEG") for m, d in (("sam_mix", [0.5] * 4), ("unet_scratch", [0.4] * 4))
         for test in ("Kvasir-SEG", "CVC-ClinicDB")]
    for i, rec in enumerate(records):
        (runs / f"{i}.json").write_text(json.dumps([rec]))
    bench.RESULTS = tmp_path
    bench.write_report(bench.load_runs(tmp_path), SimpleNamespace(argv=["--report-only"], size=128, steps=80, warmup=150,
                                                                  unet_steps=200))
    out = json.loads((tmp_path / "sam_mix.json").read_text())
    busi, = [t for t in out["targets"] if t.startswith("BUSI")]
    assert "MET" in busi and "ablation_cam_box (best baseline) = +15.0" in busi and "seeds [0, 1] pooled" in busi
    assert any(t.startswith("cross-domain Kvasir-SEG → CVC-ClinicDB") and "+10.0" in t for t in out["targets"])
    assert any(t.startswith("in-domain reference Kvasir-SEG") for t in out["targets"])
    pooled = {(r["dataset"], r["method"]): r for r in out["pooled"]}
    assert pooled[("BUSI", "sam_mix")]["seeds"] == [0, 1] and pooled[("BUSI", "sam_mix")]["dice_mean"] == pytest.approx(85.0)
    assert pooled[("CVC-ClinicDB", "sam_mix")]["cross_domain"] and not pooled[("Kvasir-SEG", "sam_mix")]["cross_domain"]
    assert len(out["rows"]) == len(records)
    md = (tmp_path / "sam_mix.md").read_text()
    assert "Kvasir-SEG → CVC-ClinicDB (cross-domain)" in md and "| BUSI | 50 | sam_mix | 0,1 | 85.0" in md


def test_runs_on_different_test_images_are_refused(tmp_path):
    records = [_rec("sam_mix", 0, [0.5] * 4), _rec("unet_scratch", 1, [0.5] * 4, ids=("a", "b", "c", "e"))]
    with pytest.raises(SystemExit, match="different test images"):
        bench.by_method_seed(records)


@pytest.mark.parametrize("option,bad", [("--cam-threshold", "1.0"), ("--cam-threshold", "high"),
                                        ("--presence-min-recall", "0"), ("--presence-min-recall", "most")])
def test_bad_threshold_options_are_one_line_usage_errors(option, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--report-only", option, bad, "--out", "/nonexistent-never-created"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in err and bad in err


def test_threshold_options_parse_auto_balanced_and_numbers():
    assert bench._cam_threshold("auto") == "auto" and bench._cam_threshold("0.6") == 0.6
    assert bench._min_recall("balanced") is None and bench._min_recall("0.9") == 0.9
