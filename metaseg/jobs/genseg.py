"""GenSeg (Zhang et al. 2024): a segmenter trained on real pairs plus generated (image, mask) pairs
whose generator is steered by the segmenter's validation loss.

Three levels, per step:
  1. the Pix2Pix generator's weights W minimise the GAN loss on the real pairs (alpha fixed);
  2. the segmenter theta minimises L_seg(real) + lam * L_seg(G(aug(m)), aug(m));
  3. the top-level variables psi (the architecture logits alpha, the generator weights, or both)
     minimise L_seg(val; theta*(psi)) on a real validation split, by a hypergradient through 2.

The hypergradients are generic over (train_loss(theta, psi), val_loss(theta)) and are built on
metaseg's functional core (`metaseg.meta.core`: grads, Hessian-vector products, conjugate
gradient); this module is in jobs/ because generative/ may not import meta/ (a sibling).

* `unrolled_fd` (GenSeg's / DARTS's): theta' = theta - xi grad_theta L_train; the hypergradient
  -xi d2L_train/dpsi dtheta . grad L_val(theta') by a central difference of grad_psi L_train at
  theta +- eps v (one generator forward and backward: the difference of two losses is
  differentiated once).
* `implicit` (iMAML's): -d2L_train/dpsi dtheta . H^-1 grad L_val(theta), H = d2L_train/dtheta2
  (+ damping), the solve by conjugate gradient on double-backward HVPs.

The generated images are never detached on the way to the hypergradient: the segmentation loss
reaches the generator (tests/test_genseg.py proves its weights move).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from metaseg.errors import MetasegError
from metaseg.meta import core

Params = dict[str, torch.Tensor]
TrainLoss = Callable[[Params, Params], torch.Tensor]
ValLoss = Callable[[Params], torch.Tensor]

HYPERGRADIENTS = ("unrolled_fd", "implicit")
METHODS = ("real_only", "real_aug", "separate", "genseg")
TOP_LEVEL = ("arch", "weights", "both")
FORMAT = "metaseg-genseg"


# ------------------------------------------------------------------ hypergradients


def _norm(p: Params) -> torch.Tensor:
    return torch.sqrt(sum((t * t).sum() for t in p.values()))


def hypergrad_unrolled_fd(train_loss: TrainLoss, val_loss: ValLoss, theta: Params, psi: Params,
                          xi: float, eps: float = 0.01) -> Params:
    """d L_val(theta - xi grad_theta L_train(theta, psi)) / d psi, with the mixed second derivative
    replaced by a central finite difference (eps is relative to |v|, as in DARTS)."""
    th = core.detached(theta, requires_grad=True)
    ps = core.detached(psi)
    g = core.grads(train_loss(th, ps), th)
    th1 = {n: (theta[n].detach() - xi * g[n]).requires_grad_(True) for n in theta}
    v = core.grads(val_loss(th1), th1)
    r = eps / float(_norm(v).clamp_min(1e-12))
    plus = {n: theta[n].detach() + r * v[n] for n in theta}
    minus = {n: theta[n].detach() - r * v[n] for n in theta}
    ps = core.detached(psi, requires_grad=True)
    diff = core.grads(train_loss(plus, ps) - train_loss(minus, ps), ps)
    return {n: -xi * d / (2 * r) for n, d in diff.items()}


def hypergrad_implicit(train_loss: TrainLoss, val_loss: ValLoss, theta: Params, psi: Params,
                       cg_steps: int = 10, damping: float = 0.0) -> tuple[Params, core.CGResult]:
    """-d2L_train/dpsi dtheta . (H + damping I)^-1 grad L_val(theta) at theta (taken as the
    lower level's solution), H the Hessian of L_train in theta; CG from metaseg.meta.core."""
    th = core.detached(theta, requires_grad=True)
    v = core.grads(val_loss(th), th)
    fixed = core.detached(psi)
    hvp = core.hvp_double_backward(lambda p: train_loss(p, fixed), theta)
    matvec = (lambda x: hvp(x)) if damping == 0 else (lambda x: {n: h + damping * x[n] for n, h in hvp(x).items()})
    solved = core.conjugate_gradient(matvec, v, cg_steps)
    th = core.detached(theta, requires_grad=True)
    ps = core.detached(psi, requires_grad=True)
    g = core.grads(train_loss(th, ps), th, create_graph=True)
    mixed = core.grads(core.dot(g, {n: x.detach() for n, x in solved.x.items()}), ps)
    return {n: -m for n, m in mixed.items()}, solved


# ------------------------------------------------------------------ configuration


@dataclass
class GenSegConfig:
    """Everything that decides a run (stored in its checkpoint; resuming needs the same)."""

    method: str = "genseg"
    segmenter: str = "unet"
    size: int = 64
    steps: int = 200  # segmenter updates (the same budget for every method)
    gan_steps: int = 200  # Pix2Pix pre-training on the real pairs (separate, genseg)
    batch_size: int = 8  # real pairs per step (and as many generated ones)
    lr: float = 1e-3  # segmenter (Adam)
    gen_weight: float = 1.0  # lambda of L_seg on generated pairs
    hypergradient: str = "unrolled_fd"
    top_level: str = "weights"  # what level 3 moves: arch (alpha; needs search), weights, both
    search: bool = False  # mixed-kernel generator (alpha)
    hyper_lr: float = 1e-4  # Adam on psi
    hyper_every: int = 1  # a level-3 step every N steps
    cg_steps: int = 5
    damping: float = 1.0
    gen_width: int = 16
    disc_width: int = 16
    synthetic: int = 256  # augmented masks in the pool (separate: images generated once from them)
    seed: int = 0

    def check(self) -> "GenSegConfig":
        from metaseg.errors import at_least
        from metaseg.generative.segmenters import SEGMENTERS
        from metaseg.models.pix2pix import unet_depth

        if self.method not in METHODS:
            raise MetasegError(f"--method: unknown {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.segmenter not in SEGMENTERS:
            raise MetasegError(f"--segmenter: unknown {self.segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
        if self.hypergradient not in HYPERGRADIENTS:
            raise MetasegError(f"--hypergradient: unknown {self.hypergradient!r}; choose one of {', '.join(HYPERGRADIENTS)}")
        if self.top_level not in TOP_LEVEL:
            raise MetasegError(f"--top-level: unknown {self.top_level!r}; choose one of {', '.join(TOP_LEVEL)}")
        if self.top_level in ("arch", "both") and not self.search and self.method == "genseg":
            raise MetasegError(f"--top-level {self.top_level} needs --search (the architecture logits exist only then)")
        unet_depth(self.size, "--size")
        for option, value, low in (("--steps", self.steps, 1), ("--gan-steps", self.gan_steps, 0),
                                   ("--batch-size", self.batch_size, 1), ("--hyper-every", self.hyper_every, 1),
                                   ("--cg-steps", self.cg_steps, 1), ("--gen-width", self.gen_width, 1),
                                   ("--disc-width", self.disc_width, 1), ("--synthetic", self.synthetic, 1)):
            at_least(option, value, low)
        for option, value in (("--lr", self.lr), ("--hyper-lr", self.hyper_lr)):
            if not value > 0:
                raise MetasegError(f"{option} must be > 0 (got {value})")
        for option, value in (("--gen-weight", self.gen_weight), ("--damping", self.damping)):
            if not value >= 0:
                raise MetasegError(f"{option} must be >= 0 (got {value})")
        return self


@dataclass
class Pairs:
    """uint8 images (N, C, H, W) and {0,1} masks (N, H, W)."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str] = field(default_factory=list)

    def x(self) -> torch.Tensor:
        return torch.from_numpy(self.images).float().div(255.0)

    def y(self) -> torch.Tensor:
        return torch.from_numpy(self.masks).float().unsqueeze(1)


# ------------------------------------------------------------------ training


def build_segmenter(name: str, channels: int, size: int, seed: int) -> nn.Module:
    from metaseg.generative.segmenters import SEGMENTERS

    torch.manual_seed(seed)
    with torch.enable_grad():  # the U-Net factory runs a probe backward pass
        return SEGMENTERS[name](channels, size)


def seg_losses(seg: nn.Module, G: nn.Module, real_x: torch.Tensor, real_y: torch.Tensor,
               fake_in: torch.Tensor, gen_weight: float, loss: Callable) -> TrainLoss:
    """train_loss(theta, psi): L_seg(real) + lam * L_seg(G_psi(mask), mask), the generated image
    NOT detached (psi's graph goes through G; parameters not in psi are G's own)."""
    from metaseg.generative.segmenters import generated_inputs

    fake_y = (fake_in > 0).float()

    def train_loss(theta: Params, psi: Params) -> torch.Tensor:
        fake_x = (functional_call(G, psi, (fake_in,)) + 1.0) * 0.5
        with generated_inputs(seg):  # never from a cache: through a frozen encoder, too, the loss reaches G
            fake = loss(core.forward(seg, theta, fake_x), fake_y)
        return loss(core.forward(seg, theta, real_x), real_y) + gen_weight * fake

    return train_loss


class Run:
    """One training run of any METHOD; `step(t)` is one segmenter update (plus, for genseg, one
    GAN update and, every hyper_every steps, one level-3 update)."""

    def __init__(self, config: GenSegConfig, train: Pairs, val: Pairs, device: str | torch.device = "cpu"):
        from metaseg.generative.augment import augment_masks
        from metaseg.generative.pix2pix import Pix2Pix, Pix2PixConfig, generator_params
        from metaseg.losses import bce_dice_loss

        self.config, self.train, self.val = config.check(), train, val
        self.device = torch.device(device)
        self.loss = bce_dice_loss
        self.seg = build_segmenter(config.segmenter, train.images.shape[1], config.size, config.seed).to(self.device)
        self.opt = torch.optim.Adam(self.seg.parameters(), lr=config.lr)
        self.p2p = None
        self.pool_masks = None
        self.pool_images = None
        self.opt_h = None
        self.log: list[dict[str, float]] = []
        if config.method in ("separate", "genseg"):
            torch.manual_seed(config.seed)
            self.p2p = Pix2Pix(Pix2PixConfig(channels=train.images.shape[1], size=config.size, width=config.gen_width,
                                             disc_width=config.disc_width, search=config.search,
                                             batch_size=config.batch_size), self.device)
            self.pool_masks = augment_masks(train.masks, seed=config.seed, n=config.synthetic)
            if config.method == "genseg":
                self.psi = generator_params(self.p2p.G, config.top_level)
                self.opt_h = torch.optim.Adam(self.psi.values(), lr=config.hyper_lr, betas=(0.5, 0.999))

    def pretrain(self) -> None:
        """Level 1 alone before the segmenter starts (separate and genseg share it)."""
        if self.p2p is None:
            return
        if self.config.gan_steps:
            self.p2p.fit(self.train.images, self.train.masks, self.config.gan_steps, seed=self.config.seed)
        if self.config.method == "separate":
            self.pool_images = self.p2p.sample_uint8(self.pool_masks)

    def _rows(self, gen: torch.Generator, n: int) -> torch.Tensor:
        return torch.randint(0, n, (min(self.config.batch_size, n),), generator=gen)

    def step(self, t: int) -> dict[str, float]:
        from metaseg.generative.augment import augment_pairs
        from metaseg.generative.pix2pix import images_to_tanh, masks_to_input
        from metaseg.generative.segmenters import generated_inputs
        from metaseg.generative.trainer import step_generator

        c = self.config
        gen = step_generator(c.seed, t)
        rows = self._rows(gen, len(self.train.masks))
        if c.method == "real_aug":
            xi, mi = augment_pairs(self.train.images[rows.numpy()], self.train.masks[rows.numpy()], seed=c.seed * 100_003 + t)
            real = Pairs(xi, mi)
        else:
            real = Pairs(self.train.images[rows.numpy()], self.train.masks[rows.numpy()])
        real_x, real_y = real.x().to(self.device), real.y().to(self.device)
        info: dict[str, float] = {}
        fake_x = fake_y = None
        if c.method == "separate":
            prow = self._rows(gen, len(self.pool_masks)).numpy()
            fake_x = torch.from_numpy(self.pool_images[prow]).float().div(255.0).to(self.device)
            fake_y = torch.from_numpy(self.pool_masks[prow]).float().unsqueeze(1).to(self.device)
        elif c.method == "genseg":
            # level 1: the GAN on the real pairs (weights only, alpha fixed)
            info.update(self.p2p.step(masks_to_input(real.masks), images_to_tanh(real.images)))
            prow = self._rows(gen, len(self.pool_masks)).numpy()
            fake_in = masks_to_input(self.pool_masks[prow]).to(self.device)
            if t % c.hyper_every == 0:
                info.update(self.hyper_step(real_x, real_y, fake_in))
            with torch.no_grad():
                fake_x = self.p2p.generate(fake_in, detach=True)
            fake_y = (fake_in > 0).float()
        # level 2: the segmenter
        loss = self.loss(self.seg(real_x), real_y)
        if fake_x is not None:
            with generated_inputs(self.seg):
                loss = loss + c.gen_weight * self.loss(self.seg(fake_x), fake_y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        info["seg"] = float(loss.detach())
        return info

    def hyper_step(self, real_x: torch.Tensor, real_y: torch.Tensor, fake_in: torch.Tensor) -> dict[str, float]:
        """Level 3: psi <- Adam(hypergradient of the validation loss)."""
        c = self.config
        train_loss = seg_losses(self.seg, self.p2p.G, real_x, real_y, fake_in, c.gen_weight, self.loss)
        vx, vy = self.val.x().to(self.device), self.val.y().to(self.device)

        def val_loss(theta: Params) -> torch.Tensor:
            return self.loss(core.forward(self.seg, theta, vx), vy)

        theta = core.trainable_params(self.seg)
        psi = {n: p for n, p in self.psi.items()}
        if c.hypergradient == "unrolled_fd":
            hg = hypergrad_unrolled_fd(train_loss, val_loss, theta, psi, xi=c.lr)
        else:
            hg, _ = hypergrad_implicit(train_loss, val_loss, theta, psi, cg_steps=c.cg_steps, damping=c.damping)
        self.opt_h.zero_grad(set_to_none=True)
        for n, p in self.psi.items():
            p.grad = hg[n].detach().clone()
        self.opt_h.step()
        return {"hypergrad_norm": float(_norm(hg))}

    def state(self, step: int) -> dict[str, Any]:
        return {"step": step, "seg": self.seg.state_dict(), "opt": self.opt.state_dict(),
                "p2p": None if self.p2p is None else self.p2p.state_dict(),
                "opt_h": None if self.opt_h is None else self.opt_h.state_dict(),
                "pool_images": self.pool_images}

    def load(self, state: dict[str, Any]) -> int:
        self.seg.load_state_dict(state["seg"])
        self.opt.load_state_dict(state["opt"])
        if self.p2p is not None and state["p2p"] is not None:
            self.p2p.load_state_dict(state["p2p"])
        if self.opt_h is not None and state["opt_h"] is not None:
            self.opt_h.load_state_dict(state["opt_h"])
        self.pool_images = state.get("pool_images")
        return int(state["step"])


def fit(config: GenSegConfig, train: Pairs, val: Pairs, device: str | torch.device = "cpu",
        on_step: Callable[[int, dict[str, float], "Run"], None] | None = None,
        resume: dict[str, Any] | None = None) -> Run:
    """Pre-train the generator (if any), then `config.steps` steps; `resume` is a `Run.state`."""
    run = Run(config, train, val, device)
    start = 0
    if resume is not None:
        start = run.load(resume)
    else:
        run.pretrain()
        if on_step is not None:
            on_step(0, {}, run)
    for t in range(start, config.steps):
        info = run.step(t)
        if on_step is not None:
            on_step(t + 1, info, run)
    run.seg.eval()
    return run


def dice_scores(model: nn.Module, pairs: Pairs, batch_size: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """Per-image Dice (probability > 0.5) of the model in eval mode."""
    from metaseg.generative.segmenters import dice_per_image

    model.eval()
    return dice_per_image(model, pairs.images, pairs.masks, batch_size, device).numpy()


# ------------------------------------------------------------------ data and outputs


def ordered_rows(hashes: list[str], seed: int) -> list[int]:
    """Rows in the seeded content-hash order of metaseg.generative.data (renaming moves nothing)."""
    from metaseg.generative.data import split_by_hash

    return split_by_hash(hashes, heldout_fraction=0.0, seed=seed).order


def take(task, rows) -> Pairs:
    rows = np.asarray(rows, dtype=np.int64)
    return Pairs(task.images[rows], task.masks[rows], [task.ids[i] for i in rows])


ADAPTABLE = ("unet", "litemedsam")  # segmenters that are registry models (`metaseg adapt` / `evaluate` rebuild them)


def metaseg_checkpoint(run: Run, image_size: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The segmenter as a `transfer` checkpoint that `metaseg adapt` / `evaluate` load like any
    meta-training checkpoint: the smp U-Net (the registry's `unet`), or LiteMedSAM (`medsam_lite`,
    only its trainable weights and the base's fingerprint, with MEDSAM_FINETUNE's adaptation)."""
    import metaseg
    from metaseg.jobs.methods import MEDSAM_FINETUNE
    from metaseg.training.module import MetaSegModule

    channels = int(run.train.images.shape[1])
    if run.config.segmenter == "unet":
        model, learner = {"kind": "unet", "in_channels": channels}, {"name": "transfer", "inner_steps": 20}
    elif run.config.segmenter == "litemedsam":
        model = {"kind": "medsam_lite", "image_size": int(run.seg.image_size), "in_channels": channels}
        learner = {"name": "transfer", **MEDSAM_FINETUNE}
    else:
        raise MetasegError(f"--segmenter {run.config.segmenter}: only {' and '.join(ADAPTABLE)} segmenters are written as adapt/evaluate checkpoints")
    module = MetaSegModule(model=model, learner=learner)
    module.model.load_state_dict(run.seg.state_dict())
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)  # a frozen base: only the trainable weights, and its fingerprint
    checkpoint["metaseg"].update(version=metaseg.__version__, image_size=int(image_size), genseg=extra)
    return checkpoint


def nearest_real(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Index of the most correlated real image for each generated one (the audit's measure)."""
    from metaseg.generative.audit import nearest_by_correlation

    _, idx = nearest_by_correlation(generated, real, k=1)
    return np.asarray(idx).reshape(len(generated), -1)[:, 0]


def sample_figure(run: Run, path: Path, n: int = 6) -> None:
    """PNG grid, one row per sample: augmented mask | generated image | nearest real training image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if run.p2p is None:
        return
    masks = run.pool_masks[:n]
    n = len(masks)
    images = run.p2p.sample_uint8(masks)
    nn_idx = nearest_real(images, run.train.images)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        cells = [(masks[i] * 255, "augmented mask"), (images[i], "generated"),
                 (run.train.images[nn_idx[i]], "nearest real")]
        for ax, (img, title) in zip(axes[i], cells):
            img = np.asarray(img)
            if img.ndim == 3:
                img = img.transpose(1, 2, 0)
                img = img[..., 0] if img.shape[2] == 1 else img
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


LAST = "last.ckpt"


def run_genseg(dataset: str, out: str, n_train: int, n_val: int, config: GenSegConfig, n_test: int | None = None,
               layout: str | None = None, category: str | None = None, split_seed: int = 0, device: str = "cpu",
               save_every: int = 50, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`metaseg genseg`: split, train, score the test rows, write model.ckpt (adapt/evaluate),
    samples.png and summary.json into `out`; resumes from out/last.ckpt with the same settings."""
    from metaseg.data.cache import load_task
    from metaseg.errors import at_least
    from metaseg.generative.trainer import save_atomic
    from metaseg.weights import load_weights_only

    config.check()
    at_least("--train", n_train, 1)
    at_least("--val", n_val, 1 if config.method == "genseg" else 0)
    at_least("--test", n_test, 0)
    path = Path(dataset).expanduser()
    if not path.is_dir():
        raise MetasegError(f"--dataset: folder not found: {path}")
    try:
        task = load_task(path, layout=layout, size=config.size, category=category)
    except MetasegError as exc:
        raise MetasegError(f"--dataset: {exc}") from None
    order = ordered_rows(task.hashes, split_seed)
    if n_train + n_val > len(order):
        raise MetasegError(f"--train {n_train} + --val {n_val} exceed the {len(order)} pairs of {path}")
    train, val = take(task, order[:n_train]), take(task, order[n_train:n_train + n_val])
    rest = order[n_train + n_val:]
    test = take(task, rest[:n_test] if n_test is not None else rest)
    out_dir = Path(out).expanduser()
    settings = {"config": asdict(config), "dataset": str(path.resolve()), "train": n_train, "val": n_val,
                "split_seed": split_seed, "category": category}
    resume = None
    last = out_dir / LAST
    if last.is_file():
        saved = load_weights_only(last, "--out")
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise MetasegError(f"--out {out_dir}: {LAST} is not a genseg progress file")
        changed = [k for k in settings if saved["settings"].get(k) != settings[k]]
        if changed:
            raise MetasegError(f"--out {out_dir} holds a run with other settings ({changed[0]}); use another --out or the same options to resume")
        resume = saved["run"]
        log(f"resuming from step {resume['step']} of {config.steps}")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise MetasegError(f"--out {out_dir} exists and holds no {LAST}; choose a new folder (nothing is overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def on_step(t: int, info: dict[str, float], run: Run) -> None:
        if t % save_every == 0 or t == config.steps:
            save_atomic({"format": FORMAT, "settings": settings, "run": run.state(t)}, last)
        if t and (t % max(1, config.steps // 10) == 0 or t == config.steps):
            log(f"step {t}/{config.steps}  " + "  ".join(f"{k} {v:.4f}" for k, v in info.items())
                + f"  ({time.time() - started:.0f} s)")

    run = fit(config, train, val, device=device, on_step=on_step, resume=resume)
    scores = dice_scores(run.seg, test, device=device) if len(test.masks) else np.array([])
    from metaseg.metrics import mean_ci95

    mean, ci = mean_ci95(scores.tolist()) if len(scores) else (float("nan"), float("nan"))
    summary = {"method": config.method, "segmenter": config.segmenter, "n_train": n_train, "n_val": n_val,
               "n_test": int(len(scores)), "dice_mean": mean, "dice_ci95": ci, "seconds": time.time() - started,
               "config": asdict(config)}
    if config.segmenter in ADAPTABLE:
        save_atomic(metaseg_checkpoint(run, config.size, {"method": config.method, "train_ids": train.ids,
                                                          "val_ids": val.ids}), out_dir / "model.ckpt")
    if run.p2p is not None:
        sample_figure(run, out_dir / "samples.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
