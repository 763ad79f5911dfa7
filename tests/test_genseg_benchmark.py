"""benchmarks/genseg.py: n_real splits and resumable curve rows, paired differences, the
interpolated data ratio, and the report's files (tiny synthetic rows and pairs, CPU, seconds)."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from benchmarks import genseg as bench
from tests.test_genseg import _pairs


def test_n_real_splits_a_fifth_into_validation_and_names_the_option_on_bad_values():
    assert [bench.split_sizes(n) for n in (8, 9, 40, 100, 400)] == [(6, 2), (7, 2), (32, 8), (80, 20), (320, 80)]
    assert bench.resolve_n_real("all", "busi", pool=547, all_cap=400) == 400
    assert bench.resolve_n_real("all", "busi", pool=300, all_cap=400) == 300
    assert bench.resolve_n_real("default", "cxr", pool=500, all_cap=400) == 9
    for value, pool in (("many", 100), ("500", 100)):
        with pytest.raises(SystemExit, match="--n-real"):
            bench.resolve_n_real(value, "busi", pool=pool, all_cap=400)
    with pytest.raises(SystemExit, match="--n-real"):
        bench.split_sizes(1)


def test_run_keys_rows_by_n_real_resumes_and_keeps_per_image_scores(monkeypatch, tmp_path):
    data = {"test": _pairs(3, seed=5), "pool": _pairs(12, seed=1)}
    monkeypatch.setattr(bench, "load", lambda *a, **k: data)
    rows = tmp_path / "rows.jsonl"
    argv = ["genseg", "run", "--seeds", "0", "--datasets", "busi", "--methods", "real_only", "--n-real", "8", "all",
            "--all-cap", "10", "--size", "32", "--steps", "1", "--gan-steps", "0", "--batch-size", "2", "--rows", str(rows)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    got = [json.loads(x) for x in rows.read_text().splitlines()]
    assert [(r["n_real"], r["n_train"], r["n_val"]) for r in got] == [(8, 6, 2), (10, 8, 2)]
    assert all(len(r["dice_per_image"]) == 3 and math.isclose(np.mean(r["dice_per_image"]), r["dice_mean"], abs_tol=1e-4)
               for r in got)
    bench.main()  # resumes: every (method, dataset, seed, segmenter, n_real) is already there
    assert len(rows.read_text().splitlines()) == 2
    assert bench.done_keys(rows) == {("real_only", "busi", 0, "unet", 8), ("real_only", "busi", 0, "unet", 10)}
    assert got[0]["device"] == "cpu"
    monkeypatch.setattr(sys, "argv", [*argv[:argv.index("--n-real")], "--n-real", "9", *argv[argv.index("--all-cap"):],
                                      "--gen-weight", "3"])
    with pytest.raises(SystemExit, match=f"--rows {rows}: holds rows of another configuration \\(gen_weight differ\\)"):
        bench.main()  # one configuration per rows file: the report does not group by gen_weight
    assert len(rows.read_text().splitlines()) == 2
    monkeypatch.setattr(sys, "argv", [*argv, "--device", "tpu"])
    with pytest.raises(SystemExit, match="--device 'tpu'"):
        bench.main()


def test_real_split_takes_nested_prefixes_of_the_pool():
    pool = _pairs(12)
    (t8, v8), (t10, v10) = bench.real_split(pool, 8), bench.real_split(pool, 10)
    assert t8.ids == pool.ids[:6] and v8.ids == pool.ids[6:8] and t10.ids == pool.ids[:8] and v10.ids == pool.ids[8:10]


def test_n_for_dice_interpolates_in_log_n_on_the_running_maximum():
    rel, n = bench.n_for_dice([10, 100], [0.5, 0.7], 0.6)
    assert rel == "=" and math.isclose(n, math.sqrt(10 * 100))
    assert bench.n_for_dice([10, 100], [0.5, 0.7], 0.4) == ("<=", 10.0)
    assert bench.n_for_dice([10, 100], [0.5, 0.7], 0.8) == (">", 100.0)
    # a dip does not make a level reachable twice: 0.55 is first reached between 10 and 30
    rel, n = bench.n_for_dice([10, 30, 100], [0.5, 0.6, 0.55], 0.55)
    assert rel == "=" and 10 < n < 30


def test_data_ratio_of_a_curve_shifted_fourfold_in_n_is_four():
    ro = {8: 0.40, 32: 0.50, 128: 0.60}
    gs = {2: 0.40, 8: 0.50, 32: 0.60, 128: 0.75}  # each of real_only's levels with a quarter of the pairs, then higher
    ratios = {(x["from"], x["dice"]): x for x in bench.data_ratios({"real_only": ro, "genseg": gs})}
    for level in (40.0, 50.0, 60.0):
        assert math.isclose(float(ratios[("real_only at n_real " + str(int(8 * 4 ** (level / 10 - 4))), level)]
                                  ["ratio_real_only_to_genseg"]), 4.0)
    top = ratios[("genseg at n_real 128", 75.0)]
    assert top["n_real_only"] == "> 128" and top["n_genseg"] == "128" and top["ratio_real_only_to_genseg"] == "> 1.00"


def test_shared_slope_ratio_of_parallel_lines_in_log_n():
    ro = {8: 0.40, 32: 0.50, 128: 0.60}
    gs = {n: d + 0.05 for n, d in ro.items()}  # half a step up: the same Dice with half the factor 4, i.e. 2x fewer
    fit = bench.shared_slope_ratio({"real_only": ro, "genseg": gs})
    assert math.isclose(fit["ratio"], 2.0) and math.isclose(fit["genseg_offset_points"], 5.0)
    assert bench.shared_slope_ratio({"real_only": {8: 0.5, 32: 0.4}, "genseg": {8: 0.6, 32: 0.5}})["ratio"] is None


def _row(method, dataset, seed, dice, n_real=40, domain="in", per_image=None):
    r = {"method": method, "dataset": dataset, "domain": domain, "n_real": n_real, "n_train": n_real - 8, "n_val": 8,
         "segmenter": "unet", "seed": seed, "dice_mean": dice, "dice_ci95": 0.01, "n_test": 3, "train_seconds": 1.0,
         "config": {"size": 32, "steps": 1, "gan_steps": 0, "batch_size": 2, "hyper_every": 5, "hypergradient": "unrolled_fd"}}
    if per_image is not None:
        r["dice_per_image"] = per_image
    return r


def test_report_pairs_by_seed_and_image_and_writes_the_issue_fields(tmp_path, monkeypatch):
    main_rows = [_row("real_only", "busi", s, d) for s, d in ((0, 0.50), (1, 0.60))] + \
                [_row("separate", "busi", s, d) for s, d in ((0, 0.55), (1, 0.58))] + \
                [_row("genseg", "busi", s, d) for s, d in ((0, 0.54), (1, 0.66))]
    curve = [_row(m, "busi", 0, d, n_real=n, per_image=[d - 0.1, d, d + 0.1])
             for m, pts in (("real_only", ((8, 0.30), (100, 0.62))), ("genseg", ((8, 0.40), (100, 0.63)))) for n, d in pts]
    files = []
    for name, rows in (("a.jsonl", main_rows), ("b.jsonl", curve)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(tmp_path / name))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["genseg", "report", "--protocol", "tiny", "--rows", *files, "--out", str(out)])
    bench.main()
    doc = json.loads((out / "genseg.json").read_text())
    assert all(tuple(r) == bench.JSON_FIELDS for r in doc["rows"]) and len(doc["rows"]) == 10
    by = {(p["n_real"], p["minus"]): p for p in doc["paired"]}
    assert math.isclose(by[(40, "real_only")]["seed_paired"]["mean"], 5.0) and by[(40, "real_only")]["image_paired"] is None
    assert by[(40, "separate")]["seed_paired"]["n_seeds"] == 2
    img = by[(8, "real_only")]["image_paired"]
    assert math.isclose(img["mean"], 10.0) and img["n_images"] == 3 and math.isclose(img["ci95"], 0.0, abs_tol=1e-9)
    md = (out / "genseg.md").read_text()
    assert "genseg − real_only = +5.0 (2 seeds; target +10): missed by 5.0 points" in md
    assert "## Data-efficiency curve" in md and doc["curve_ratios"]["busi"]["ratios"]
    assert doc["curve_ratios"]["busi"]["seeds"] == [0]  # the only seed every curve point ran
    assert (out / "genseg_curve.png").is_file() and (out / "genseg_dice.png").is_file()
    other = dict(main_rows[0], config={**main_rows[0]["config"], "steps": 2})
    (tmp_path / "c.jsonl").write_text(json.dumps(other) + "\n")
    monkeypatch.setattr(sys, "argv", ["genseg", "report", "--rows", *files, str(tmp_path / "c.jsonl"), "--out", str(out)])
    with pytest.raises(SystemExit, match="c.jsonl: rows of another configuration than the other files \\(steps differ\\)"):
        bench.main()
    # another segmenter may have its own budget: one configuration per segmenter, side by side in the report
    (tmp_path / "d.jsonl").write_text(json.dumps(dict(other, segmenter="litemedsam")) + "\n")
    monkeypatch.setattr(sys, "argv", ["genseg", "report", "--rows", *files, str(tmp_path / "d.jsonl"), "--out", str(out)])
    bench.main()
    config = json.loads((out / "genseg.json").read_text())["config"]
    assert config["litemedsam"]["steps"] == 2 and config["unet"]["steps"] == 1
    monkeypatch.setattr(sys, "argv", ["genseg", "report", "--rows", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    with pytest.raises(SystemExit, match="--rows: no such file"):
        bench.main()
