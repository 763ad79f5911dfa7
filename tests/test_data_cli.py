"""`metaseg data list` and `metaseg data check` as a user runs them (in-process through metaseg.cli.main)."""
from __future__ import annotations

import json

import pytest

from metaseg.cli import main
from metaseg.data.readers import LAYOUTS


def test_list_shows_every_layout(capsys):
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(LAYOUTS)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)


def test_check_text_report(capsys, make_pair_folder):
    root = make_pair_folder(n=3)
    assert main(["data", "check", str(root), "--size", "64"]) == 0
    out = capsys.readouterr().out
    for line in ("layout: generic (detected)", "pairs: 3", "missing masks: 0", "images: 3 with 3 channels",
                 "  binary {0, 255}: 3", "cache: resized to 64x64 (aspect not kept), task channels: 3", "status: usable"):
        assert line in out.splitlines(), line


def test_check_reader_options_from_cli(capsys, make_pair_folder):
    root = make_pair_folder(n=2, mask_suffix="_m")
    (root / "images").rename(root / "scans")
    assert main(["data", "check", str(root), "--layout", "generic", "--images-dir", "scans", "--mask-suffix", "_m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 2
    assert main(["data", "check", str(root), "--layout", "generic", "--images-dir", "scans", "-o", "split=1"]) == 2
    assert "unknown option 'split'" in capsys.readouterr().err


def test_sample_hook_registered_when_present(capsys):
    """`data sample` is registered under `metaseg data`."""
    assert main(["data", "sample", "--help"]) == 0
    assert "--queries" in capsys.readouterr().out


@pytest.mark.realdata
def test_check_cvc_clinicdb_full(shared_datasets, capsys):
    assert main(["data", "check", str(shared_datasets / "CVC-ClinicDB"), "--limit", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "layout: cvc-clinicdb (detected)" in out and "pairs: 612" in out
    # MANIFEST: 484 masks with exactly two values, the rest carry extra gray levels -> thresholded
    assert "  binary {0, 255}: 484" in out and "  non-binary: foreground = value >= 128: 128" in out


def test_global_threads_option_pins_torch_and_rejects_bad_values(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "data", "list"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["--threads=0", "data", "list"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["metaseg: error: --threads: expected a whole number >= 1, got '0'"]
    finally:
        torch.set_num_threads(before)
