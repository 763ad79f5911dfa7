"""Exact resume: a run killed (SIGKILL, or a crash) and resumed ends with the same weights, the
same logged losses and the same best-on-validation checkpoint as the same run left uninterrupted;
last.ckpt is written every N meta-steps whether or not validation ran, and atomically, so a kill
in the middle of a write resumes from the previous checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import pytest
import torch

from metaseg.errors import MetasegError
from tests.test_training import read_metrics, run_tiny, write_config

REPO = Path(__file__).resolve().parents[1]


class Killed(RuntimeError):
    pass


class KillAt(pl.Callback):
    """Simulates a crash: raises when the given global step is about to start."""

    def __init__(self, step: int = 3):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


# 8 meta-steps in epochs of 4, validation first at step 6, resume points every 2 steps
EARLY = ("--trainer.max_steps", "8", "--trainer.val_check_interval", "6", "--data.train_episodes_per_epoch", "8",
         "--data.augment", "true", "--checkpoint.every_n_train_steps", "2", "--checkpoint.every_minutes", "0",
         "--run_test", "false")


def losses(log_dir: str) -> dict[int, float]:
    return {int(r["step"]): float(r["query_loss"]) for r in read_metrics(log_dir) if r.get("query_loss")}


def val_dice(log_dir: str) -> dict[int, float]:
    return {int(r["step"]): float(r["val_dice"]) for r in read_metrics(log_dir) if r.get("val_dice")}


def step_of(path: str | Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def assert_same_run(straight: dict, resumed: dict, restarted_at: int) -> None:
    """Final weights, the losses after the restart, meta-validation scores and the best checkpoint agree."""
    a = torch.load(straight["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    assert a["global_step"] == b["global_step"] == straight["steps"]
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    after, before = losses(resumed["log_dir"]), losses(straight["log_dir"])
    assert sorted(after) == list(range(restarted_at, straight["steps"]))
    for step, value in after.items():
        assert value == pytest.approx(before[step], rel=1e-5, abs=1e-6), step
    for step, value in val_dice(resumed["log_dir"]).items():
        assert value == pytest.approx(val_dice(straight["log_dir"])[step], rel=1e-5, abs=1e-6), step
    assert resumed["val_dice"] == pytest.approx(straight["val_dice"], rel=1e-5, abs=1e-6)
    assert step_of(resumed["best"]) == step_of(straight["best"])


def killed_subprocess(tmp_path: Path, stage: str, step: int, module: str, *args: str,
                      returncode: int = -9) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` in a child that SIGKILLs (or Ctrl-Cs) itself at (stage, step) (tests/killer.py)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore",
           "METASEG_TEST_THREADS": str(torch.get_num_threads())}  # as the in-process runs compared with it
    proc = subprocess.run([sys.executable, "-m", "tests.killer", stage, str(step), module, *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == returncode, proc.stderr[-2000:]  # killed as asked, not finished or failed
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The EARLY run, never killed: what every resumed run must end as."""
    return run_tiny(tmp_path_factory.mktemp("straight"), *EARLY, name="straight")


def test_crash_after_validation_resumes_exactly(tmp_path: Path, uninterrupted: dict) -> None:
    with pytest.raises(Killed):
        run_tiny(tmp_path, *EARLY, "--trainer.callbacks+=tests.test_resume.KillAt", "--trainer.callbacks.step", "7",
                 name="killed")
    last = next((tmp_path / "runs" / "killed").rglob("last.ckpt"))
    assert step_of(last) == 6  # written after step 6's validation, mid-epoch
    resumed = run_tiny(tmp_path, *EARLY, "--ckpt_path", str(last), name="killed")
    assert_same_run(uninterrupted, resumed, restarted_at=6)
    # selection spans the whole run: the resumed run's best is the best of both halves
    assert Path(resumed["best"]).parent == last.parent


def test_sigkill_before_the_first_validation_resumes_exactly(tmp_path: Path, uninterrupted: dict) -> None:
    config = write_config(tmp_path / "killed.yaml")
    root = tmp_path / "runs" / "killed"
    argv = ["meta-train", "--config", str(config), "--trainer.default_root_dir", str(root), *EARLY]
    killed_subprocess(tmp_path, "before_step", 5, "metaseg.cli", *argv)
    last = next(root.rglob("last.ckpt"))
    assert step_of(last) == 4 and not list(root.rglob("best.ckpt"))  # no validation had run yet
    resumed = run_tiny(tmp_path, *EARLY, "--ckpt_path", "last", name="killed")
    assert_same_run(uninterrupted, resumed, restarted_at=4)


def test_ctrl_c_finishes_the_step_writes_a_resume_point_and_resumes_exactly(tmp_path: Path, uninterrupted: dict) -> None:
    config = write_config(tmp_path / "killed.yaml")
    root = tmp_path / "runs" / "killed"
    argv = ["meta-train", "--config", str(config), "--trainer.default_root_dir", str(root), *EARLY]
    proc = killed_subprocess(tmp_path, "ctrl_c", 5, "metaseg.cli", *argv, returncode=1)
    assert "interrupted after meta-step 6" in proc.stderr and "--ckpt_path last" in proc.stderr
    last = next(root.rglob("last.ckpt"))
    # the step under way when Ctrl-C came (the 6th) was finished, validated and saved, not lost
    assert step_of(last) == 6 and list(root.rglob("best.ckpt"))
    resumed = run_tiny(tmp_path, *EARLY, "--ckpt_path", "last", name="killed")
    assert_same_run(uninterrupted, resumed, restarted_at=6)


def test_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path: Path, uninterrupted: dict) -> None:
    config = write_config(tmp_path / "killed.yaml")
    root = tmp_path / "runs" / "killed"
    argv = ["meta-train", "--config", str(config), "--trainer.default_root_dir", str(root), *EARLY]
    killed_subprocess(tmp_path, "in_write", 4, "metaseg.cli", *argv)
    last = next(root.rglob("last.ckpt"))
    partial = last.with_name("last.ckpt.tmp")
    assert partial.is_file() and step_of(last) == 2  # the half-written step-4 file never replaced step 2's
    resumed = run_tiny(tmp_path, *EARLY, "--ckpt_path", "last", name="killed")
    assert_same_run(uninterrupted, resumed, restarted_at=2)
    assert not partial.exists()  # the interrupted write's leftover is cleared


def test_checkpoint_cadence_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(MetasegError, match="--checkpoint.every_minutes"):
        run_tiny(tmp_path, "--checkpoint.every_minutes", "-1")
    with pytest.raises(MetasegError, match=r"--ckpt_path last: no last.ckpt under .*nothing to resume"):
        run_tiny(tmp_path, "--ckpt_path", "last", name="fresh")


def test_killed_benchmark_part_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """`make benchmark` killed inside a part's meta-training: the rerun resumes that part from its
    last.ckpt and ends with the weights and rows of an uninterrupted part."""
    import copy

    import yaml

    from benchmarks.fewshot import run_benchmark
    from tests.test_fewshot import TINY

    cfg = copy.deepcopy(TINY)
    cfg["methods"] = {"fomaml": {**cfg["methods"]["fomaml"], "trainer": {"max_steps": 4, "val_check_interval": 4}}}
    cfg["checkpoint"] = {"every_n_train_steps": 2, "every_minutes": 0}
    straight = run_benchmark({**cfg, "work_dir": str(tmp_path / "straight")}, echo=lambda _: None)

    killed = {**cfg, "work_dir": str(tmp_path / "killed"), "results": str(tmp_path / "killed.json")}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(killed))
    killed_subprocess(tmp_path, "before_step", 3, "benchmarks.fewshot", "--config", str(tmp_path / "bench.yaml"))
    part = tmp_path / "killed" / "ellipse" / "fomaml"
    assert step_of(part / "last.ckpt") == 2 and not (part / "trained.json").exists()
    resumed = run_benchmark(killed, echo=lambda _: None)

    assert step_of(part / "last.ckpt") == 4
    a = torch.load(tmp_path / "straight" / "ellipse" / "fomaml" / "best.ckpt", weights_only=True)["state_dict"]
    b = torch.load(part / "best.ckpt", weights_only=True)["state_dict"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for x, y in zip(straight["rows"], resumed["rows"], strict=True):
        assert x["dice_mean"] == pytest.approx(y["dice_mean"], abs=1e-6) and x["shots"] == y["shots"]


def lrs(log_dir: str) -> dict[int, float]:
    return {int(r["step"]): float(r["lr"]) for r in read_metrics(log_dir) if r.get("lr")}


# 4 meta-steps per epoch, validation at every epoch end, resume point every 2 steps
EXTEND = ("--trainer.val_check_interval", "4", "--data.train_episodes_per_epoch", "8", "--checkpoint.every_n_train_steps", "2",
          "--checkpoint.every_minutes", "0", "--run_test", "false")


def test_a_finished_run_extends_exactly_when_the_schedule_horizon_is_fixed(tmp_path: Path) -> None:
    """lr_schedule_steps fixes the cosine horizon: a run of 4 steps extended to 8 (resumed with a
    larger max_steps) ends with the weights and lrs of one run of 8; tied to max_steps (the
    default), the short run's lr decays towards 0 at its own end instead."""
    straight = run_tiny(tmp_path, "--trainer.max_steps", "8", "--model.lr_schedule_steps", "8", *EXTEND, name="straight")
    short = run_tiny(tmp_path, "--trainer.max_steps", "4", "--model.lr_schedule_steps", "8", *EXTEND, name="short")
    assert step_of(short["last"]) == 4
    extended = run_tiny(tmp_path, "--trainer.max_steps", "8", "--model.lr_schedule_steps", "8", *EXTEND,
                        "--ckpt_path", str(short["last"]), name="short")
    assert_same_run(straight, extended, restarted_at=4)
    assert lrs(extended["log_dir"]) == pytest.approx({s: v for s, v in lrs(straight["log_dir"]).items() if s >= 4})
    tied = run_tiny(tmp_path, "--trainer.max_steps", "4", *EXTEND, name="tied")
    assert lrs(tied["log_dir"])[3] < 0.5 * lrs(straight["log_dir"])[3]  # cos horizon 4, not 8


@pytest.mark.parametrize("value", ["0", "-3", "2.5"])
def test_bad_schedule_horizon_is_refused_in_one_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(MetasegError, match="model.lr_schedule_steps"):
        run_tiny(tmp_path, "--model.lr_schedule_steps", value)
