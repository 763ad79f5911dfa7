"""The GAN options against mode collapse (docs/synthetic.md): the minibatch std-dev feature sees a
collapsed batch, every variant trains and samples valid pairs and resumes exactly, checkpoints from
before the options still load as the DCGAN they were, and the benchmark redoes GAN rows whose
settings changed while keeping the real-data rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metaseg.generative.audit import diversity
from metaseg.generative.data import from_joint
from metaseg.generative.gan import GAN, LEGACY, diff_augment
from metaseg.generative.trainer import RunConfig, load_generator, read_synth_checkpoint, save_atomic, train
from metaseg.models.generators import DCGANGenerator, MinibatchStdDev, StyleGenerator
from tests.test_synth import write_dataset


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path


def test_minibatch_stddev_tells_a_collapsed_batch_from_a_varied_one():
    layer = MinibatchStdDev(group=4)
    varied = torch.randn(8, 3, 4, 4)
    collapsed = varied[:1].expand(8, -1, -1, -1)
    out_varied, out_collapsed = layer(varied), layer(collapsed)
    assert out_varied.shape == (8, 4, 4, 4)
    assert torch.all(out_collapsed[:, 3] < 1e-3) and torch.all(out_varied[:, 3] > 0.3)
    assert layer(torch.randn(6, 3, 4, 4)).shape == (6, 4, 4, 4)  # a batch the group size does not divide
    assert torch.equal(layer(varied)[:, :3], varied)  # the features pass through unchanged


def test_diff_augment_moves_image_and_mask_together_and_is_seeded():
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    joint = torch.cat([x, x], dim=1)  # a mask channel equal to the image channel
    a = diff_augment(joint, torch.Generator().manual_seed(1))
    assert a.shape == joint.shape and torch.equal(a[:, 0], a[:, 1])  # one transform for image and mask
    assert torch.equal(a, diff_augment(joint, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, diff_augment(joint, torch.Generator().manual_seed(2)))
    assert ((a == 0).flatten(1).float().mean(1) >= 0.25 - 1e-6).all()  # a cut-out square of half the side
    fake = joint.clone().requires_grad_(True)
    diff_augment(fake, torch.Generator().manual_seed(1)).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0  # differentiable: the generator learns through it


@pytest.mark.parametrize("net", [DCGANGenerator, StyleGenerator])
def test_generators_map_different_z_to_different_samples(net):
    torch.manual_seed(0)
    g = net(16, 2, 32, 8).eval()
    x = g(torch.randn(4, 16))
    assert x.shape == (4, 2, 32, 32) and x.abs().max() <= 1
    assert (x[0] - x[1]).abs().mean() > 1e-3


@pytest.mark.parametrize("options", [
    {"arch": "style", "mbstd": True, "r1": 1.0, "ema": True, "augment": False, "mode_seeking": 0.0},
    {"arch": "dcgan", "mbstd": True, "r1": 1.0, "ema": True, "augment": True, "mode_seeking": 1.0},
    dict(LEGACY),
])
def test_gan_variants_train_sample_and_resume_exactly(env, options):
    data = write_dataset(env / "ds", 8, seed=0)
    config = RunConfig(model="gan", dataset=str(data), size=16, width=8, batch_size=4, gan_options=options)
    straight = train(config, env / "straight", steps=4, save_every=4, echo=lambda line: None)
    train(config, env / "resumed", steps=2, save_every=2, echo=lambda line: None)
    resumed = train(config, env / "resumed", steps=4, save_every=4, echo=lambda line: None)  # extended from step 2
    a, b = load_generator(read_synth_checkpoint(straight)), load_generator(read_synth_checkpoint(resumed))
    assert a.spec() == b.spec() and {k: a.spec()[k] for k in options} == options
    assert (a.g_ema is not None) == options["ema"]
    sa, sb = a.sample(5, torch.Generator().manual_seed(3)), b.sample(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(sa, sb, rtol=0, atol=1e-5)
    images, masks = from_joint(sa)
    assert images.shape == (5, 1, 16, 16) and set(np.unique(masks)) <= {0, 1}


def test_a_checkpoint_from_before_the_options_loads_as_the_dcgan(env):
    data = write_dataset(env / "ds", 8, seed=0)
    config = RunConfig(model="gan", dataset=str(data), size=16, width=8, batch_size=4, gan_options=dict(LEGACY))
    ckpt = read_synth_checkpoint(train(config, env / "run", steps=2, echo=lambda line: None))
    old = {**ckpt, "spec": {k: v for k, v in ckpt["spec"].items() if k not in LEGACY},
           "config": {k: v for k, v in ckpt["config"].items() if k != "gan_options"}}
    old["state"] = {k: v for k, v in ckpt["state"].items() if k != "images_seen"}
    save_atomic(old, env / "old" / "last.ckpt")
    model = load_generator(read_synth_checkpoint(env / "old"))
    assert isinstance(model, GAN) and model.arch == "dcgan" and not model.mbstd and model.g_ema is None
    g = torch.Generator
    torch.testing.assert_close(model.sample(3, g().manual_seed(1)), load_generator(ckpt).sample(3, g().manual_seed(1)))
    # and resuming the old run keeps training the DCGAN it was (its config has no gan_options: the defaults would differ)
    train(RunConfig(model="gan", dataset=str(data), size=16, width=8, batch_size=4), env / "old", steps=3, echo=lambda line: None)
    assert read_synth_checkpoint(env / "old")["spec"]["arch"] == "dcgan"


def test_diversity_is_one_for_copies_and_low_for_independent_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 1, 16, 16)).astype(np.uint8)
    masks = (rng.random((10, 16, 16)) > 0.5).astype(np.uint8)
    masks[:3] = 0
    copies = np.repeat(images[:1], 10, axis=0)
    assert diversity(copies, masks)["pairwise_r_mean"] == pytest.approx(1.0, abs=1e-5)
    spread = diversity(images, masks)
    assert abs(spread["pairwise_r_mean"]) < 0.1 and spread["empty_mask_frac"] == pytest.approx(0.3)
    assert spread["mask_area_mean"] == pytest.approx(masks.mean(), abs=1e-6)


def test_benchmark_redoes_gan_rows_whose_settings_changed(env, make_pair_folder, monkeypatch):
    from benchmarks import synthetic as bench
    from metaseg.generative import segmenters

    data = make_pair_folder(n=10, size=(20, 20), name="tiny-ds")
    rows, out = env / "rows.jsonl", env / "results" / "synthetic"
    argv = ["--dataset", str(data), "--size", "16", "--n-train", "4", "--generators", "gan", "--segmenters", "unet",
            "--gan-steps", "2", "--gan-width", "8", "--seg-steps", "1", "--ssim-candidates", "2",
            "--work", str(env / "work"), "--rows", str(rows), "--out", str(out)]
    fits = []
    real_fit = segmenters.fit_segmenter
    monkeypatch.setattr(segmenters, "fit_segmenter", lambda *a, **k: fits.append(len(a[1])) or real_fit(*a, **k))
    assert bench.main([*argv, "--gan-arch", "dcgan", "--no-mbstd", "--no-ema"]) == 0
    assert fits == [4, 4]
    assert bench.main(argv) == 0  # the defaults (StyleGAN-lite) differ: only the GAN row is redone
    assert fits == [4, 4, 4]
    written = bench.read_rows(rows)
    assert [r["generator"] for r in written] == ["real", "gan", "gan"]
    assert written[1]["generator_settings"]["arch"] == "dcgan" and written[2]["generator_settings"]["arch"] == "style"
    assert 0 <= written[2]["synthetic_pairwise_r_mean"] <= 1 and "real_empty_mask_frac" in written[2]
    report = bench.report(rows, out)
    assert len(report["rows"]) == 1 and report["rows"][0]["generator_settings"]["arch"] == "style"  # the later row wins
    assert "gan-style" in out.with_suffix(".md").read_text()
