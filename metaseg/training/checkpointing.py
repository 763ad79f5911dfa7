"""Checkpoints of a meta-training run: best.ckpt chosen on meta-validation, and a resume point
(last.ckpt) written every N meta-steps and every T minutes whether or not validation ran.

Why a ModelCheckpoint subclass rather than its own options: with `monitor: val_dice`, Lightning's
`every_n_train_steps` / `train_time_interval` defer every save until validation has run, so a
run killed before its first validation left nothing to resume from, and last.ckpt was only
rewritten when val_dice improved. And Lightning's writes are not atomic on every set-up: it
writes to a temporary file in the system temp folder and `shutil.move`s it into place, which is
a copy (a kill mid-copy leaves a truncated last.ckpt) when /tmp is another file system. Here
every write goes to `<name>.tmp` beside its target, then `os.replace`: a kill at any moment
leaves the previous file intact.

Resume points are never written on a step where validation is due (Lightning would skip that
validation after a restart, so best.ckpt could differ from an uninterrupted run's); that step's
last.ckpt is written after validation instead.

Ctrl-C during meta-training stops at the end of the current meta-step (or of the validation due
after it), writes last.ckpt there and exits, so `--ckpt_path last` continues exactly; a second
Ctrl-C stops at once. Why not save in Lightning's `on_exception`: an interrupt lands mid-step,
where the loop's progress counters already count a batch the weights have not seen, and a
resume from that state silently skips a meta-step (tested).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from metaseg.errors import MetasegError

EVERY_N_TRAIN_STEPS = 50  # defaults: a kill loses at most the lesser of 50 meta-steps and 2 minutes
EVERY_MINUTES = 2.0
TMP_SUFFIX = ".tmp"


class MetaSegCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt is also a periodic, atomic resume point."""

    def __init__(
        self,
        dirpath: Optional[str] = None,
        filename: Optional[str] = None,
        monitor: Optional[str] = None,
        verbose: bool = False,
        save_last: Optional[Union[bool, Literal["link"]]] = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: Optional[int] = EVERY_N_TRAIN_STEPS,
        every_minutes: Optional[float] = EVERY_MINUTES,
        enable_version_counter: bool = True,
    ) -> None:
        """best.ckpt is written only after meta-validation, when `monitor` improves; last.ckpt, the
        resume point, whichever of the two triggers below comes first.

        Args:
            every_n_train_steps: write last.ckpt every N meta-steps (0 or null: off)
            every_minutes: write last.ckpt at least every T minutes (0 or null: off)
        """
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise MetasegError(f"--checkpoint.every_n_train_steps: must be >= 0 (0 = off), got {every_n_train_steps}")
        if every_minutes is not None and every_minutes < 0:
            raise MetasegError(f"--checkpoint.every_minutes: must be >= 0 (0 = off), got {every_minutes}")
        if save_last == "link":
            raise MetasegError("--checkpoint.save_last: 'link' is not supported (last.ckpt is a resume point of its own)")
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, verbose=verbose, save_last=save_last,
                         save_top_k=save_top_k, save_weights_only=save_weights_only, mode=mode,
                         auto_insert_metric_name=auto_insert_metric_name, enable_version_counter=enable_version_counter)
        self.resume_every_steps = int(every_n_train_steps or 0)
        self.resume_every_seconds = 60.0 * float(every_minutes or 0.0)
        self._resume_step = -1
        self._resume_time = time.monotonic()
        self._interrupted = False
        self._previous_sigint: Any = None

    @property
    def state_key(self) -> str:
        # the key ModelCheckpoint uses, so checkpoints written before this class existed resume too
        return f"ModelCheckpoint{super().state_key[len(type(self).__qualname__):]}"

    # ------------------------------------------------------------------ triggers
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stale in Path(self.dirpath).glob(f"*.ckpt{TMP_SUFFIX}"):  # a write a kill interrupted
                stale.unlink()
        if stage == "fit" and self.save_last and threading.current_thread() is threading.main_thread():
            self._interrupted = False
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # the second Ctrl-C: stop now, from the last resume point
            raise KeyboardInterrupt
        self._interrupted = True
        print("\nmetaseg: Ctrl-C: stopping after this meta-step to write last.ckpt (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def _stop_if_interrupted(self, trainer: pl.Trainer) -> None:
        """At a step boundary, after an interrupt: write the resume point and stop."""
        if not bool(trainer.strategy.broadcast(self._interrupted)):
            return
        if self._resume_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero and self.dirpath:
            print(f"metaseg: interrupted after meta-step {trainer.global_step}; resume point "
                  f"{Path(self.dirpath) / (self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)} "
                  "(continue with --ckpt_path last)", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._resume_time = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.save_last or not self._fitting(trainer):
            return
        if self._resume_step == trainer.global_step:
            self._stop_if_interrupted(trainer)
            return
        by_steps = self.resume_every_steps > 0 and trainer.global_step % self.resume_every_steps == 0
        by_time = self.resume_every_seconds > 0 and time.monotonic() - self._resume_time >= self.resume_every_seconds
        if self.resume_every_seconds > 0:
            by_time = bool(trainer.strategy.broadcast(by_time))  # one decision for every process
        if self._validation_due(trainer):
            return  # the resume point (and an interrupt's stop) comes after that validation
        if by_steps or by_time:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._stop_if_interrupted(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # best.ckpt when val_dice improved
        # ModelCheckpoint rewrites last.ckpt only beside an improvement; a resume point is due anyway
        if self.save_last and self._fitting(trainer) and self._resume_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self.save_last and self._fitting(trainer):
            self._stop_if_interrupted(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._resume_step != trainer.global_step:  # the final weights, always
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @staticmethod
    def _fitting(trainer: pl.Trainer) -> bool:
        from pytorch_lightning.trainer.states import TrainerFn

        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run

    @staticmethod
    def _validation_due(trainer: pl.Trainer) -> bool:
        """Whether validation runs right after this batch (private Lightning API, version pinned)."""
        loop = trainer.fit_loop.epoch_loop
        return bool(trainer.enable_validation and loop._should_check_val_fx(trainer.fit_loop._data_fetcher))

    # ------------------------------------------------------------------ writing
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._resume_step = trainer.global_step
            self._resume_time = time.monotonic()

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """ModelCheckpoint._save_checkpoint, written atomically (see the module docstring)."""
        tmp = f"{filepath}{TMP_SUFFIX}"
        trainer.save_checkpoint(tmp, self.save_weights_only)  # every process joins; rank 0 writes
        if trainer.is_global_zero:
            write_durably(tmp)
            os.replace(tmp, filepath)
        trainer.strategy.barrier("MetaSegCheckpoint.replace")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def write_durably(path: str) -> None:
    """fsync a finished file, so the rename that follows never exposes unwritten data after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["MetaSegCheckpoint", "EVERY_N_TRAIN_STEPS", "EVERY_MINUTES"]
