"""The one meta-training entry point: an experiment config in, a fitted run (best checkpoint) out.

`meta_train(args)` takes the `metaseg meta-train` schema (`experiments/*.yaml`: `trainer`,
`model`, `data`, `checkpoint`, `seed_everything`, ...) either as command-line arguments
(`--config FILE --section.key value`, what `metaseg meta-train` passes) or as a mapping (what the
benchmark builds per method and target). Both go through the same LightningCLI parser, so a
config means the same thing wherever it is run, and a run is reproducible with
`metaseg meta-train --config <its saved config.yaml>`.

Fit selects on meta-validation (ModelCheckpoint monitors `val_dice`); then, when the config has
meta-test tasks and `run_test` is on, the best-on-validation checkpoint is scored on them. Test
never feeds back into selection. `ckpt_path` resumes a killed run.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from metaseg.errors import MetasegError

# Lightning's start-up banners ("Seed set to 0", "GPU available: ...", "💡 Tip: ... litlogger ...",
# "`Trainer.fit` stopped: ...", "Restoring states ...") all come through these loggers at INFO;
# warnings and the progress bar do not. What the user needs from them is printed by meta_train.
BANNER_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                  "lightning_fabric.utilities.seed")
NOISE = (".*litlogger.*", ".*args parameter is intended.*", ".*overridden `transfer_batch_to_device`.*",
         ".*LeafSpec.*", ".*does not have many workers.*", ".*tensorboardX.*")


NO_VALIDATION = "no val_tasks, or val_check_interval beyond max_steps"


def _make_cli_class():
    """Build the LightningCLI subclass lazily (importing Lightning takes a few seconds)."""
    from pytorch_lightning.cli import LightningCLI

    from metaseg.training.checkpointing import MetaSegCheckpoint

    class MetaSegCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--experiment", type=Optional[str], default=None,
                                help="run name; logs and checkpoints go to runs/<experiment>/version_N (default: the config file's name)")
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="resume a killed run from this checkpoint (e.g. runs/<name>/version_0/checkpoints/last.ckpt), "
                                     "or 'last': the newest last.ckpt under the run's folder")
            parser.add_argument("--run_test", type=bool, default=True,
                                help="after fit, report meta-test Dice/IoU of the best-on-validation checkpoint")
            parser.add_lightning_class_args(MetaSegCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.monitor": "val_dice",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best",  # a stable path to hand to adapt/evaluate; the score is printed
            })

        def parse_arguments(self, parser: Any, args: Any) -> None:
            super().parse_arguments(parser, args)
            from metaseg.training.module import check_options

            # misspelt or ill-typed learner/model options: one line, before seeding or reading data
            check_options(self.config.model.get("model"), self.config.model.get("learner"))

        def before_instantiate_classes(self) -> None:
            config = self.config
            name = config.get("experiment") or _config_stem(config.get("config")) or "metaseg"
            config.experiment = name
            if not config.trainer.get("default_root_dir"):
                config.trainer.default_root_dir = str(Path("runs") / name)
            if config.get("ckpt_path"):
                from metaseg.checkpoints import read_checkpoint

                ckpt_path = resolve_ckpt_path(config.ckpt_path, Path(config.trainer.default_root_dir))
                config.ckpt_path = str(ckpt_path)
                saved = read_checkpoint(ckpt_path, "--ckpt_path")  # one-line error for a wrong file, before Lightning
                print(f"resuming from {ckpt_path} (step {int(saved.get('global_step', 0))})", flush=True)
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # its own folder: expected
                # keep ModelCheckpoint in the original folder so its best-so-far state is restored
                # and selection spans the whole run, not only the part after the restart
                if not config.checkpoint.get("dirpath"):
                    config.checkpoint.dirpath = str(ckpt_path.parent)

        def instantiate_trainer(self, **kwargs: Any):
            if self.config.trainer.get("logger") in (None, True):
                kwargs["logger"] = default_loggers(Path(self.config.trainer.default_root_dir))
            return super().instantiate_trainer(**kwargs)

    return MetaSegCLI


def resolve_ckpt_path(value: str, root: Path) -> Path:
    """`--ckpt_path last`: the most recently written last.ckpt under the run's folder."""
    if value != "last":
        return Path(value)
    found = sorted(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise MetasegError(f"--ckpt_path last: no last.ckpt under {root} (nothing to resume; start without --ckpt_path)")
    return found[-1]


def _config_stem(configs: Any) -> str | None:
    if not configs:
        return None
    last = configs[-1] if isinstance(configs, (list, tuple)) else configs
    path = getattr(last, "relative", None) or getattr(last, "absolute", None) or str(last)
    return Path(str(path)).stem


def default_loggers(root: Path) -> list:
    """CSV logs always; TensorBoard as well when it is installed (same version folder)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    csv_logger = CSVLogger(save_dir=str(root), name="")
    loggers = [csv_logger]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(save_dir=str(root), name="", version=csv_logger.version, sub_dir="tensorboard"))
    return loggers


def _one_line(message: str) -> str:
    """jsonargparse errors can span several lines; the first three carry the key and the reason."""
    lines = [line.strip(" -") for line in str(message).strip().splitlines() if line.strip(" -")]
    text = ""
    for line in lines[:3]:
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text or "invalid arguments"


def meta_train(args: Sequence[str] | Mapping[str, Any], parser_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse `args` (command-line list or experiment mapping), fit, test the best-on-validation
    checkpoint when there are meta-test tasks; returns {"best", "last", "log_dir", "val_dice",
    "steps", "test"}. Bad options are a MetasegError (one line); --help/--print_config exit."""
    for noise in NOISE:
        warnings.filterwarnings("ignore", message=noise)
    with quiet_banners():
        return _meta_train(args, parser_kwargs)


@contextlib.contextmanager
def quiet_banners():
    """Lightning's INFO banners off for the duration of a run (restored after)."""
    loggers = [logging.getLogger(name) for name in BANNER_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _meta_train(args: Sequence[str] | Mapping[str, Any], parser_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    from metaseg.data.datamodule import MetaDataModule
    from metaseg.training.module import MetaSegModule

    cli_class = _make_cli_class()
    args = dict(args) if isinstance(args, Mapping) else list(args)
    parser_kwargs = {**(parser_kwargs or {})}
    if isinstance(args, list) and {"-h", "--help"} & set(args):  # listing them imports every factory
        parser_kwargs.update(epilog=options_help_epilog(), formatter_class=_help_formatter())
    try:
        cli = cli_class(
            MetaSegModule,
            MetaDataModule,
            run=False,
            args=args,
            seed_everything_default=0,
            # meta-validation adapts, which needs autograd; the model summary is noise for a U-Net
            # (`--trainer.enable_model_summary true` prints it)
            trainer_defaults={"inference_mode": False, "enable_model_summary": False},
            parser_kwargs={"exit_on_error": False, "prog": "metaseg meta-train", **parser_kwargs},
            save_config_kwargs={"overwrite": True},
        )
    except argparse.ArgumentError as exc:
        raise MetasegError(f"meta-train: {_one_line(str(exc))}") from None
    return fit_and_test(cli)


def options_help_epilog() -> str:
    """`--help`'s closing section: every learner and model with its options, types and defaults
    (read from the factories' signatures, the same source that checks a config)."""
    from metaseg.registry import options_help

    return options_help()


def _help_formatter() -> type:
    """jsonargparse's help formatter, keeping the epilog's line breaks (one learner per line)."""
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return Formatter


def fit_and_test(cli: Any) -> dict[str, Any]:
    try:
        return _fit_and_test(cli)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Lightning's DDP leaves the gloo process group open; torch's threads for it are then torn
    down at interpreter exit, which now and then aborts a process ("terminate called without an
    active exception", exit -6) after a run that succeeded. Closing it here, after a barrier so no
    process leaves while another still talks, ends every process cleanly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _fit_and_test(cli: Any) -> dict[str, Any]:
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.get("ckpt_path"))
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    last = getattr(callback, "last_model_path", "") or ""
    score = getattr(callback, "best_model_score", None)
    if trainer.is_global_zero:
        if best:
            score_text = f" (val_dice {float(score):.4f})" if score is not None else ""
            print(f"best checkpoint (selected on meta-validation){score_text}: {best}")
        elif last:
            print(f"no meta-validation ran ({NO_VALIDATION}): no best checkpoint, only the last one (step {trainer.global_step})")
        if last:
            print(f"last checkpoint: {last}")
    log_dir = Path(trainer.log_dir or trainer.default_root_dir)
    results: dict[str, float] = {}
    if cli.config.get("run_test") and _has_test_tasks(datamodule):
        chosen = best or last or None
        trainer.test(model, datamodule=datamodule, ckpt_path=chosen)
        results = dict(getattr(model, "test_results", {}) or {})
        if trainer.is_global_zero and results:
            report_test(results, chosen, log_dir, selected=bool(best))
    return {"best": best, "last": last, "log_dir": str(log_dir), "test": results,
            "val_dice": None if score is None else float(score), "steps": int(trainer.global_step)}


def _has_test_tasks(datamodule: Any) -> bool:
    hparams = getattr(datamodule, "hparams", {})
    tasks = hparams.get("test_tasks") if hasattr(hparams, "get") else None
    return bool(tasks if tasks is not None else getattr(datamodule, "test_tasks", None))


def report_test(results: dict[str, float], checkpoint: str | None, log_dir: Path, selected: bool = True) -> None:
    """Print and save meta-test numbers (per-image Dice/IoU, mean ± 95% t-interval over all query
    images), saying how the scored checkpoint was chosen."""
    from metaseg.metrics import mean_ci_text

    n = int(results["test_images"])
    chosen = "chosen on meta-validation" if selected else f"not chosen on meta-validation (none ran: {NO_VALIDATION}), the last one"
    line = (
        f"meta-test: Dice {mean_ci_text(results['test_dice'], results['test_dice_ci95'], n)}, "
        f"IoU {mean_ci_text(results['test_iou'], results['test_iou_ci95'], n)} "
        f"(mean ± 95% CI over {n} query images in {int(results['test_episodes'])} episodes; "
        f"checkpoint {chosen}: {checkpoint})"
    )
    print(line)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "test_results.json").write_text(json.dumps({**results, "checkpoint": checkpoint}, indent=2) + "\n")


__all__ = ["meta_train", "default_loggers"]
