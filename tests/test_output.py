"""Output never overstates: a run without meta-validation says so instead of claiming a checkpoint
chosen on it, a score over fewer than MIN_CI_IMAGES images is printed with its count and no
interval, and meta-train prints its progress bar and results without Lightning's banners."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from metaseg.cli import main as cli_main
from metaseg.metrics import MIN_CI_IMAGES, mean_ci_text
from tests.test_training import run_tiny, write_config


def test_scores_over_too_few_images_have_no_interval() -> None:
    assert mean_ci_text(0.81234, 0.01512, 50) == "0.8123 ± 0.0151"
    assert mean_ci_text(0.1174, 1.4912, 2) == "0.1174 (2 images, too few for a CI)"
    assert mean_ci_text(0.5, 0.0, 1, digits=3) == "0.500 (1 image, too few for a CI)"
    assert "±" in mean_ci_text(0.5, 0.1, MIN_CI_IMAGES) and "±" not in mean_ci_text(0.5, 0.1, MIN_CI_IMAGES - 1)
    assert mean_ci_text(float("nan"), float("nan"), 0) == "n/a"


def test_no_validation_is_said_not_hidden(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Validation due at step 10 of 4: last.ckpt is scored, and every line says it was not chosen on
    meta-validation; 2 test episodes x 1 query image are too few for an interval."""
    result = run_tiny(tmp_path, "--trainer.val_check_interval", "10", "--data.queries", "1")
    out = capsys.readouterr().out
    assert result["best"] == "" and Path(result["last"]).name == "last.ckpt"
    assert "chosen on meta-validation:" not in out and "selected on meta-validation" not in out
    assert "no meta-validation ran" in out
    test_line = next(line for line in out.splitlines() if line.startswith("meta-test:"))
    assert "not chosen on meta-validation" in test_line and result["last"] in test_line
    assert "(2 images, too few for a CI)" in test_line and "±" not in test_line.split("(mean")[0]


class Records(logging.Handler):
    """Everything Lightning's loggers emit, whatever handlers (a terminal, pytest) sit above them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_meta_train_prints_progress_and_results_without_lightning_banners(tmp_path: Path,
                                                                         capfd: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "tiny.yaml")
    records = Records()
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric")]
    for log in loggers:
        log.addHandler(records)
    try:
        assert cli_main(["meta-train", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"),
                         "--trainer.enable_progress_bar", "true", "--run_test", "false"]) == 0
    finally:
        for log in loggers:
            log.removeHandler(records)
    out, err = capfd.readouterr()
    printed = "\n".join([out, err, *records.lines])
    assert "Epoch 0:" in printed and "query_loss=" in printed  # the progress bar stays
    assert "best checkpoint (selected on meta-validation)" in out
    for banner in ("Seed set to", "💡", "litlogger", "litmodels", "GPU available", "TPU available", "HPU available",
                   "`Trainer.fit` stopped", "| Name", "Trainable params", "LOCAL_RANK"):
        assert banner not in printed, banner


def generated(text: str, key: str) -> str:
    return text.split(f"<!-- BEGIN generated:{key} -->", 1)[1].split(f"<!-- END generated:{key} -->", 1)[0]


def test_readme_demo_rows_come_from_the_generated_demo_output() -> None:
    """The README's demo rows are lines of the full output in docs/demo.md, which names the machine
    it ran on (both written by one `python -m benchmarks.demo_readme` run)."""
    repo = Path(__file__).resolve().parents[1]
    rows = [line for line in generated((repo / "README.md").read_text(), "demo-rows").splitlines() if "Dice" in line]
    full = generated((repo / "docs" / "demo.md").read_text(), "demo-output")
    assert len(rows) == 4 and all(row in full.splitlines() for row in rows)
    assert "cores" in full and "torch " in full and "benchmarks.demo_readme" in full  # machine and generator named


def test_demo_readme_rewrites_only_the_marked_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import demo_readme

    printed = ("[demo] 1/3 meta-training (experiments/demo.yaml) ...\n"
               "\rEpoch 0:  50%|#####     | 1/2 [00:01<00:01]\rEpoch 0: 100%|##########| 2/2 [00:02<00:00]\n"
               "  meta-learned init, no adaptation  Dice 0.001 ± 0.001   IoU 0.001 ± 0.001\n"
               "  meta-learned init + 5 steps       Dice 0.700 ± 0.030   IoU 0.500 ± 0.030\n"
               "  scratch (random init) + 5 steps   Dice 0.100 ± 0.020   IoU 0.050 ± 0.010\n"
               "wall time: 99 s (meta-training 60 s)\n")
    monkeypatch.setattr(demo_readme, "run_demo", lambda args: (printed, 101.0))
    for name, key in (("README.md", "demo-rows"), ("demo.md", "demo-output")):
        (tmp_path / name).write_text(f"keep\n<!-- BEGIN generated:{key} -->\nold\n<!-- END generated:{key} -->\nkeep too\n")
    assert demo_readme.main(["--readme", str(tmp_path / "README.md"), "--docs", str(tmp_path / "demo.md")]) == 0
    readme, docs = (tmp_path / "README.md").read_text(), (tmp_path / "demo.md").read_text()
    assert readme.startswith("keep\n") and readme.endswith("keep too\n") and "old" not in readme
    assert "+ 5 steps       Dice 0.700 ± 0.030" in readme and "no adaptation" not in readme
    assert "wall time: 99 s" in docs and "101 s wall" in docs and "old" not in docs
    assert "Epoch 0" not in docs  # the progress bar, redrawn with carriage returns, is not output to keep
