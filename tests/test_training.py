"""MetaSegModule and `metaseg meta-train`: learning happens, selection uses meta-validation only,
the CLI takes dotted overrides and reports bad options in one line.

The helpers at the top (tiny config, `run_tiny`) are reused by the other training test files.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from metaseg.cli import main as cli_main
from metaseg.training.fit import meta_train
from metaseg.data.datamodule import MetaDataModule

TINY_MODEL = {"kind": "unet", "encoder_depth": 2, "decoder_channels": [16, 8]}


def tiny_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """A meta-train config that runs in seconds on CPU: 32 px synthetic tasks, a 2-stage U-Net."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": 4, "val_check_interval": 2, "check_val_every_n_epoch": None,
            "log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {"model": TINY_MODEL, "learner": {"name": "maml", "inner_steps": 1, "inner_lr": 0.1},
                  "outer_lr": 0.003},
        "data": {
            "train_tasks": [{"root": "synthetic:bright_ellipse"}, {"root": "synthetic:dark_blob"}],
            "val_tasks": [{"root": "synthetic:rings"}],
            "test_tasks": [{"root": "synthetic:hue_blob"}],
            "shots": 2, "queries": 3, "meta_batch_size": 2, "image_size": 32, "val_episodes": 2,
            "test_episodes": 2, "train_episodes_per_epoch": 8, "synthetic_n": 12, "augment": False,
        },
    }
    for key, values in sections.items():
        config[key] = {**config[key], **values} if isinstance(config[key], dict) else values
    return config


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    return path


def run_tiny(tmp_path: Path, *extra: str, name: str = "tiny", **sections: dict[str, Any]) -> dict[str, Any]:
    """meta_train on the tiny config (written into tmp_path) with extra command-line arguments."""
    config = write_config(tmp_path / f"{name}.yaml", **sections)
    return meta_train(["--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs" / name), *extra])


def read_metrics(log_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_meta_training_reduces_query_loss(tmp_path: Path) -> None:
    """After a few outer steps the post-adaptation query loss on the training tasks goes down."""
    from metaseg.checkpoints import load_module
    from metaseg.data.episodes import EpisodeSampler
    from metaseg.data.synthetic import make_synthetic_task
    from metaseg.losses import bce_dice_loss
    from metaseg.training.module import MetaSegModule

    tasks = [make_synthetic_task(f, n=12, size=32) for f in ("bright_ellipse", "dark_blob")]
    episodes = EpisodeSampler(tasks, 2, 3, seed=5, stream="check").fixed_episodes(6)

    def query_loss(module: MetaSegModule) -> float:
        losses = []
        for ep in episodes:
            fast = module.learner.adapt(module.model, ep.support_x, ep.support_y)
            with torch.no_grad():
                losses.append(float(bce_dice_loss(module.learner.predict(module.model, fast, ep.query_x), ep.query_y)))
        return sum(losses) / len(losses)

    torch.manual_seed(0)  # seed_everything(0) in the run: the same initial weights
    before = query_loss(MetaSegModule(model=TINY_MODEL, learner={"name": "maml", "inner_steps": 1, "inner_lr": 0.1}))
    result = run_tiny(tmp_path, "--trainer.max_steps", "16", "--trainer.val_check_interval", "8",
                      "--model.outer_lr", "0.01", "--model.lr_schedule", "none", "--run_test", "false")
    after = query_loss(load_module(result["last"]))
    assert after < before - 0.05, (before, after)


def test_selection_on_meta_validation_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelCheckpoint keeps the checkpoint with the highest val_dice; meta-test tasks are not
    even loaded into a dataloader until fit is over, and are then only reported."""
    calls: list[str] = []
    original = MetaDataModule.test_dataloader

    def spy(self: MetaDataModule):
        calls.append(self.trainer.state.fn.value)
        return original(self)

    monkeypatch.setattr(MetaDataModule, "test_dataloader", spy)
    result = run_tiny(tmp_path, "--trainer.max_steps", "6")
    assert calls == ["test"], calls

    rows = read_metrics(result["log_dir"])
    val = [(float(r["val_dice"]), int(r["step"])) for r in rows if r.get("val_dice")]
    assert len(val) == 3
    best_dice = max(val)[0]
    states = torch.load(result["last"], weights_only=True)["callbacks"]
    state = next(v for k, v in states.items() if k.startswith("ModelCheckpoint"))
    assert state["monitor"] == "val_dice" and float(state["best_model_score"]) == pytest.approx(best_dice, abs=1e-6)
    assert Path(result["best"]).name == "best.ckpt" and Path(result["last"]).name == "last.ckpt"
    assert set(result["test"]) >= {"test_dice", "test_dice_ci95", "test_iou", "test_iou_ci95"}
    assert (Path(result["log_dir"]) / "test_results.json").is_file()


def test_cli_dotted_override_reaches_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "tiny.yaml")
    code = cli_main(["meta-train", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"),
                     "--trainer.max_steps", "2", "--model.learner.inner_lr", "0.05", "--run_test", "false"])
    assert code == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["learner"] == {"name": "maml", "inner_steps": 1, "inner_lr": 0.05}
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("args, expected", [
    (["--model.bogus", "1"], "unrecognized arguments: --model.bogus"),
    (["--data.shots", "many"], "data.shots"),
    (["--model.learner.name", "nope"], "unknown learner 'nope'"),
    (["--model.outer_optimizer", "rmsprop"], "model.outer_optimizer"),
    (["--model.learner.inner_steps", "-1"], "learner.inner_steps"),
])
def test_bad_config_option_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], expected: str) -> None:
    config = write_config(tmp_path / "tiny.yaml")
    code = cli_main(["meta-train", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("metaseg: error:") and expected in err[0], err


def test_missing_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["meta-train", "--config", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.yaml" in err[0]


SHIPPED = ("demo", "maml_polyp_skin", "fomaml_polyp_skin", "imaml_polyp_skin", "transfer_polyp_skin")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiment_configs_parse(name: str) -> None:
    """The shipped experiments parse and build their model + learner (no training, no data loading)."""
    from jsonargparse import ArgumentParser

    from metaseg.training.module import MetaSegModule

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml").read_text())
    parser = ArgumentParser()
    parser.add_class_arguments(MetaDataModule, "data")
    parsed = parser.parse_object({"data": config["data"]})
    assert parsed.data.train_tasks and parsed.data.val_tasks and parsed.data.test_tasks
    module = MetaSegModule(**config["model"])  # options are valid for the model and the learner
    assert name == "demo" or name.startswith(module.hparams.learner["name"])


@pytest.mark.realdata
@pytest.mark.slow
def test_polyp_skin_config_runs_on_real_data(shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-data experiment loads every task (leakage-checked), trains and reports meta-test,
    shrunk to a few steps at 32 px."""
    monkeypatch.setenv("METASEG_DATA", str(shared_datasets))
    config = Path(__file__).resolve().parents[1] / "experiments" / "fomaml_polyp_skin.yaml"
    result = meta_train([
        "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--data.image_size", "32", "--data.shots", "2", "--data.queries", "2", "--data.meta_batch_size", "2",
        "--data.val_episodes", "2", "--data.test_episodes", "2", "--model.learner.inner_steps", "1",
        "--model.model.decoder_channels", "[16, 8, 4]",
    ])
    assert 0.0 <= result["test"]["test_dice"] <= 1.0 and result["test"]["test_images"] == 4
