"""benchmarks/throughput: --device reaches the vmap section (it used to be accepted and ignored)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import throughput


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        throughput.main(["--device", "cuda", "--sections", "vmap", "--out", str(tmp_path / "t.json")])
    assert stop.value.code == 2
    assert "--device cuda: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_vmap_section_records_its_device_and_equal_gradients(tmp_path):
    out = tmp_path / "t.json"
    throughput.main(["--sections", "vmap", "--tasks", "2", "--size", "16", "--shots", "2", "--queries", "2",
                     "--inner-steps", "1", "--out", str(out)])
    vmap = json.loads(out.read_text())["vmap"]
    assert vmap["device"] == "cpu"
    rows = {k: v for k, v in vmap.items() if k != "device"}
    assert set(rows) == {"maml/T=2", "fomaml/T=2", "imaml/T=2"}
    assert all(r["max_abs_grad_diff"] < 1e-5 and r["vmap_tasks_per_s"] > 0 for r in rows.values())
    assert "Meta-batch of T episodes on cpu" in out.with_suffix(".md").read_text()
