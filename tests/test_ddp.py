"""Several processes: with Lightning's DDP strategy (CPU, gloo, 2 processes) the meta-gradient of a
meta-batch split over the processes equals the single-process one, and so do the weights after
one outer step. The 2-process run is the real command (`python -m metaseg.cli meta-train
--trainer.strategy ddp --trainer.devices 2`), launched in a subprocess as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from tests.test_training import TINY_MODEL, run_tiny, write_config

REPO = Path(__file__).resolve().parents[1]
LEARNER = {"name": "maml", "inner_steps": 1, "inner_lr": 0.1}
# one outer SGD step with lr 1: the weight change IS the (averaged) meta-gradient
ARGS = ["--trainer.max_steps", "1", "--model.outer_optimizer", "sgd", "--model.outer_lr", "1.0",
        "--model.lr_schedule", "none", "--data.meta_batch_size", "4", "--trainer.limit_val_batches", "0",
        "--run_test", "false", "--trainer.callbacks+=tests.test_ddp.GradDump"]


class GradDump(pl.Callback):
    """Saves each process's meta-gradient right before the outer step (after the all-reduce)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach().reshape(-1) for p in pl_module.learner.meta_parameters(pl_module.model)]
        name = f"grad_w{trainer.world_size}_r{trainer.global_rank}.pt"
        torch.save(torch.cat(grads), Path(trainer.default_root_dir) / name)


def test_ddp_meta_gradient_equals_single_process(tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", model={"model": TINY_MODEL, "learner": LEARNER})
    ddp_root = tmp_path / "runs" / "ddp"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.Popen(
        [sys.executable, "-m", "metaseg.cli", "meta-train", "--config", str(config), "--trainer.default_root_dir",
         str(ddp_root), "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", *ARGS],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    single = run_tiny(tmp_path, *ARGS, name="single", model={"model": TINY_MODEL, "learner": LEARNER})
    output, _ = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, output[-3000:]

    g1 = torch.load(tmp_path / "runs" / "single" / "grad_w1_r0.pt")
    g2 = [torch.load(ddp_root / f"grad_w2_r{r}.pt") for r in (0, 1)]
    assert torch.equal(g2[0], g2[1])  # every process steps with the same averaged gradient
    torch.testing.assert_close(g2[0], g1, rtol=0, atol=1e-6)

    # ... and that gradient is the mean of the four episodes' meta-gradients
    from metaseg.data.datamodule import MetaDataModule
    from metaseg.training.module import MetaSegModule

    import yaml
    data = MetaDataModule(**yaml.safe_load(config.read_text())["data"] | {"meta_batch_size": 4})
    sampler = data.train_sampler()
    torch.manual_seed(0)
    module = MetaSegModule(model=TINY_MODEL, learner=LEARNER)
    params = list(module.learner.meta_parameters(module.model))
    for index in range(4):
        module.learner.meta_backward(module.model, sampler.sample(index), scale=0.25)
    expected = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(g1, expected, rtol=0, atol=1e-6)

    w1 = torch.load(single["last"], weights_only=True)["state_dict"]
    w2 = torch.load(next(ddp_root.rglob("last.ckpt")), weights_only=True)["state_dict"]
    for name, value in w1.items():
        torch.testing.assert_close(w2[name], value, rtol=0, atol=1e-6, msg=name)
