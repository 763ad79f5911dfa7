"""CUDA behaviour: the same meta-gradients as on CPU, meta-training with mixed precision.

Skipped (with a reason) on machines without a GPU, which includes CI; run on a GPU with
`make test ARGS="-m cuda"`.
"""
from __future__ import annotations

import pytest
import torch

from metaseg.data.synthetic import make_synthetic_task
from metaseg.data.episodes import EpisodeSampler
from metaseg.meta import create_learner
from metaseg.models import create_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _episode(size: int = 64):
    task = make_synthetic_task("bright_ellipse", n=16, size=size, seed=0)
    return EpisodeSampler([task], shots=3, queries=4, seed=0).sample(0)


def _meta_grads(learner_name: str, device: str, **options) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("unet").double().to(device)
    learner = create_learner(learner_name, **options).double().to(device)
    ep = _episode().to(device)
    ep.support_x, ep.support_y = ep.support_x.double(), ep.support_y.double()
    ep.query_x, ep.query_y = ep.query_x.double(), ep.query_y.double()
    learner.meta_backward(model, ep)
    return [p.grad.detach().cpu() for p in learner.meta_parameters(model)]


@pytest.mark.parametrize("name,options", [("maml", {"inner_steps": 2}), ("imaml", {"inner_steps": 3, "cg_steps": 3})])
def test_meta_gradient_on_cuda_equals_cpu(name, options):
    cpu = _meta_grads(name, "cpu", **options)
    gpu = _meta_grads(name, "cuda", **options)
    assert len(cpu) == len(gpu)
    worst = max((a - b).abs().max().item() / (a.abs().max().item() + 1e-12) for a, b in zip(cpu, gpu))
    assert worst < 1e-6, f"relative CPU/CUDA difference {worst:.2e}"


def test_prediction_is_batch_independent_on_cuda(monkeypatch):
    # cuDNN's default TF32 convolutions pick algorithms by batch size and differ by ~1e-3 in the
    # logits; that is arithmetic precision, not batch dependence, so compare in full float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = create_model("unet").cuda().eval()
    x = torch.rand(5, 3, 64, 64, device="cuda")
    with torch.no_grad():
        alone = model(x[2:3])
        batch = model(x)[2:3]
    assert torch.allclose(alone, batch, atol=1e-4)


def test_meta_train_steps_on_cuda_with_mixed_precision(tmp_path):
    import pytorch_lightning as pl

    from metaseg.data.datamodule import MetaDataModule
    from metaseg.training.module import MetaSegModule

    pl.seed_everything(0)
    module = MetaSegModule(learner={"name": "fomaml", "inner_steps": 2})
    data = MetaDataModule(
        train_tasks=[{"root": "synthetic:bright_ellipse"}, {"root": "synthetic:dark_blob"}],
        val_tasks=[{"root": "synthetic:rings"}], test_tasks=[],
        shots=2, queries=2, meta_batch_size=2, image_size=64, val_episodes=2, synthetic_n=16,
    )
    devices_seen = []

    class RecordDevice(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            devices_seen.append(next(pl_module.model.parameters()).device.type)

    trainer = pl.Trainer(callbacks=[RecordDevice()], accelerator="gpu", devices=1, precision="16-mixed", max_steps=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         limit_val_batches=2, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4
    assert devices_seen == ["cuda"] * 4  # Lightning moves the module back to CPU after fit
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
