"""Exact resume: a run killed after a mid-epoch checkpoint and resumed with --ckpt_path ends with
the same weights and the same logged losses as the same run left uninterrupted."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import pytest
import torch

from tests.test_training import read_metrics, run_tiny


class Killed(RuntimeError):
    pass


class KillAt(pl.Callback):
    """Simulates a crash: raises when the given global step is about to start."""

    def __init__(self, step: int = 3):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


# 4 meta-batches per epoch, validation (and checkpoints) every 3: the kill lands mid-epoch
ARGS = ("--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--data.train_episodes_per_epoch", "8",
        "--data.augment", "true", "--run_test", "false")


def losses(log_dir: str) -> dict[int, float]:
    return {int(r["step"]): float(r["query_loss"]) for r in read_metrics(log_dir) if r.get("query_loss")}


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    straight = run_tiny(tmp_path, *ARGS, name="straight")

    with pytest.raises(Killed):
        run_tiny(tmp_path, *ARGS, "--trainer.callbacks+=tests.test_resume.KillAt", name="killed")
    last = next((tmp_path / "runs" / "killed").rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed = run_tiny(tmp_path, *ARGS, "--ckpt_path", str(last), name="killed")

    a = torch.load(straight["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the same episodes after the restart: identical losses at steps 3..5 (logged before each step)
    after = losses(resumed["log_dir"])
    before = losses(straight["log_dir"])
    assert sorted(after) == [3, 4, 5]
    for step, value in after.items():
        assert value == pytest.approx(before[step], rel=1e-5, abs=1e-6), step
    # selection spans the whole run: the resumed run's best is the best of both halves
    assert Path(resumed["best"]).parent == last.parent
    steps = [torch.load(r["best"], weights_only=True)["global_step"] for r in (straight, resumed)]
    assert steps[0] == steps[1]
