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
    for banner in ("💡", "litlogger", "litmodels", "GPU available", "TPU available", "HPU available",
                   "`Trainer.fit` stopped", "| Name", "Trainable params", "LOCAL_RANK"):
        assert banner not in printed, banner
