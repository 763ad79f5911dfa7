"""Run a module as `python -m MODULE ARGS...` and SIGKILL this very process at a chosen point of
meta-training (tests only: a real, uncatchable kill at a reproducible moment).

    python -m tests.killer before_step N MODULE ARGS...   # killed just before meta-step N starts
    python -m tests.killer in_write N MODULE ARGS...      # killed half-way through writing step N's checkpoint
    python -m tests.killer ctrl_c N MODULE ARGS...        # SIGINT (Ctrl-C) just before meta-step N starts
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(stage: str, step: int) -> None:
    from metaseg.training import checkpointing
    from metaseg.training.checkpointing import MetaSegCheckpoint

    if stage == "before_step":
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == step:
                _die()

        MetaSegCheckpoint.on_train_batch_start = on_train_batch_start
    elif stage == "ctrl_c":
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == step:
                os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt here, as a real Ctrl-C would

        MetaSegCheckpoint.on_train_batch_start = on_train_batch_start
    elif stage == "in_write":
        write = checkpointing.write_durably
        save = MetaSegCheckpoint._save_checkpoint

        def save_checkpoint(self, trainer, filepath) -> None:
            checkpointing._current_step = trainer.global_step
            save(self, trainer, filepath)

        def write_durably(path: str) -> None:
            if getattr(checkpointing, "_current_step", None) == step and path.endswith("last.ckpt.tmp"):
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])  # a half-written file, then the kill
                _die()
            write(path)

        MetaSegCheckpoint._save_checkpoint = save_checkpoint
        checkpointing.write_durably = write_durably
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    stage, step, module, *args = sys.argv[1:]
    if os.environ.get("METASEG_TEST_THREADS"):  # the parent's count: float results depend on it
        import torch

        torch.set_num_threads(int(os.environ["METASEG_TEST_THREADS"]))
    install(stage, int(step))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
