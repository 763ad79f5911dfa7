"""benchmarks.peers' paired per-round ratio: the statistic that says whether metaseg is faster
than a peer running the same ops (a ratio of two medians cannot)."""
import pytest

from benchmarks import peers
from metaseg.metrics import mean_ci95


def test_paired_ratio_is_the_mean_and_interval_of_per_round_ratios():
    times, reference = [2.0, 3.0, 4.5], [1.0, 2.0, 3.0]
    mean, ci = mean_ci95([2.0, 1.5, 1.5])
    assert peers.paired_ratio(times, reference) == [round(mean, 4), round(ci, 4)]
    assert peers.paired_ratio(times, reference)[0] == pytest.approx(5 / 3, abs=1e-4)
    assert peers.paired_ratio(reference, reference) == [1.0, 0.0]


def test_paired_ratio_without_times_and_misaligned_rounds():
    assert peers.paired_ratio([], []) is None  # CUDA: no thread CPU time
    assert peers.ratio_text(None) == "—"
    with pytest.raises(ValueError):
        peers.paired_ratio([1.0, 2.0], [1.0])


def test_markdown_shows_the_paired_columns():
    row = {"algorithm": "maml", "impl": "metaseg", "seconds_per_meta_step": 1.0, "peak_memory_mb": 1.0,
           "max_abs_grad_diff": 0.0, "x_metaseg_paired_wall": [1.0, 0.0], "x_metaseg_paired_cpu": None,
           "device": "cpu", "image_size": 64, "shots": 5, "queries": 5, "inner_steps": 5, "inner_lr": 0.1,
           "lam": 2.0, "cg_steps": 5, "repeats": 5, "threads": 1, "parameters": 1, "memory_method": "m"}
    peer = {**row, "impl": "torchopt (MetaSGD)", "seconds_per_meta_step": 0.9, "x_metaseg_paired_wall": [0.9512, 0.0301]}
    table = peers.markdown([row, peer])
    assert "| maml | torchopt (MetaSGD) | 0.900 | 1.0 | 0.0e+00 | 0.90 | 0.951 ± 0.030 | — |" in table
