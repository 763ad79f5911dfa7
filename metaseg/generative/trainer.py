"""The one training loop for every generator: progress lines, an atomically written last
checkpoint, and exact resume after a kill.

Exact resume without saving RNG states: step t draws its batch and its noise from a
torch.Generator seeded with (seed, t), so the steps after a restart are the same steps an
uninterrupted run takes. The checkpoint (`<out>/last.ckpt`, replaced with os.replace so a kill
never leaves a half-written file) holds the networks, the optimisers, the step, the settings
that define the run, and which images (by content hash) the generator was trained on.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from metaseg.errors import MetasegError, at_least
from metaseg.generative.base import JointGenerator, create_generator, generator_class
from metaseg.generative.data import from_joint, load_dataset, split_by_hash, to_joint

FORMAT = "metaseg-synth"
VERSION = 1
CHECKPOINT = "last.ckpt"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run except its length (so a finished run can be extended)."""

    model: str
    dataset: str
    layout: str | None = None
    size: int = 64
    width: int = 32
    batch_size: int = 16
    lr: float | None = None
    seed: int = 0
    n_train: int | None = None
    heldout_fraction: float = 0.2
    reader_options: dict[str, Any] | None = None  # e.g. {"label": "1,2"} (MSD); None = the reader's defaults
    prediction: str | None = None  # diffusion only: epsilon (None = default), v_prediction or sample
    gan_options: dict[str, Any] | None = None  # gan only: arch, mbstd, r1, ema, augment, mode_seeking (None = metaseg.generative.gan.DEFAULTS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reader_options", dict(self.reader_options) if self.reader_options else None)
        object.__setattr__(self, "gan_options", dict(self.gan_options) if self.gan_options else None)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The randomness of one step, independent of what ran before it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".ckpt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_synth_checkpoint(path: str | Path, what: str = "--checkpoint") -> dict[str, Any]:
    """A `metaseg synth train` checkpoint, loaded with weights_only=True and checked."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise MetasegError(f"{what}: no such file {path}")
    from metaseg.weights import load_weights_only

    ckpt = load_weights_only(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MetasegError(f"{what}: {path} is not a checkpoint written by `metaseg synth train`")
    if ckpt.get("version") != VERSION:
        raise MetasegError(f"{what}: {path} has checkpoint version {ckpt.get('version')}, this metaseg reads {VERSION}")
    return ckpt


def pick_device(device: str | None) -> str:
    """--device: cuda when available unless told; an unavailable CUDA is a one-line error."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MetasegError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise MetasegError(f"--device must be cpu or cuda[:N], got {device!r}")
    return device


def load_generator(ckpt: dict[str, Any], device: str = "cpu") -> JointGenerator:
    name = ckpt["config"]["model"]
    model = create_generator(name, **{**generator_class(name).legacy_spec, **ckpt["spec"]}, device=device)
    model.load_state_dict(ckpt["state"])
    return model


def _prepare_out(out: Path, config: RunConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from, None for a fresh run; refuses a folder of something else."""
    last = out / CHECKPOINT
    if last.is_file():
        for stale in out.glob(".tmp-*.ckpt"):  # a kill during a save leaves its temp file behind
            stale.unlink()
        ckpt = read_synth_checkpoint(last, "--out")
        saved = ckpt["config"]
        changed = [k for k, v in asdict(config).items() if saved.get(k) != v]
        if changed:
            k = changed[0]
            raise MetasegError(
                f"--out {out} holds a run with different settings ({k}: {saved.get(k)!r} there, {getattr(config, k)!r} now); "
                "use another --out, or the same settings to resume"
            )
        return ckpt
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MetasegError(f"--out {out} exists and holds no {CHECKPOINT}; choose a new folder (nothing is overwritten)")
    return None


def _progress(model: str, step: int, steps: int, losses: dict[str, float], started: float, first: int) -> str:
    per = (time.perf_counter() - started) / max(step - first, 1)
    shown = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
    return f"[{model}] step {step}/{steps} {shown} {per:.3f} s/step, eta {per * (steps - step):.0f} s"


def train(config: RunConfig, out: str | Path, steps: int, save_every: int = 100, log_every: int = 20,
          cache_dir: str | None = None, echo: Callable[[str], Any] | None = None, device: str = "cpu",
          save_minutes: float = 2.0) -> Path:
    """Train (or resume) a generator for `steps` steps in total; returns the checkpoint path. The
    checkpoint is rewritten every `save_every` steps and at least every `save_minutes` minutes (0 =
    steps only), so a kill loses at most the lesser of the two. The device is not part of the run's
    settings: a run started on a GPU can be resumed on a CPU and the reverse."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    for option, value in (("--steps", steps), ("--save-every", save_every), ("--log-every", log_every)):
        at_least(option, value, 1)
    if save_minutes < 0:
        raise MetasegError(f"--save-minutes must be >= 0 (0 = every --save-every steps only), got {save_minutes}")
    at_least("--batch-size", config.batch_size, 1)
    if config.prediction is not None and config.model != "diffusion":
        raise MetasegError(f"--prediction is a diffusion setting; --model {config.model} has none")
    if config.gan_options and config.model != "gan":
        raise MetasegError(f"--gan-arch/--mbstd/--r1/--ema/--augment/--mode-seeking are gan settings; --model {config.model} has none")
    out = Path(out).expanduser()
    resume = _prepare_out(out, config)
    task = load_dataset(config.dataset, config.size, config.layout, cache_dir, reader_options=config.reader_options)
    split = split_by_hash(task.hashes, config.heldout_fraction, config.n_train, config.seed)
    data = to_joint(task.images[split.train], task.masks[split.train]).to(device)
    torch.manual_seed(config.seed)  # network initialisation
    spec = {"channels": data.shape[1], "size": config.size, "width": config.width, "lr": config.lr}
    if config.prediction is not None:
        spec["prediction"] = config.prediction
    spec.update(config.gan_options or {})
    step = 0
    if resume is not None:
        if resume["train_hashes"] != [task.hashes[i] for i in split.train]:
            raise MetasegError(f"--dataset {config.dataset}: its images changed since {out / CHECKPOINT} was written; use another --out")
        model = load_generator(resume, device)  # rebuilt from its own spec: a run keeps the defaults it started with
        step = int(resume["step"])
        echo(f"[{config.model}] resuming {out / CHECKPOINT} at step {step}/{steps}")
    else:
        model = create_generator(config.model, **spec, device=device)
        echo(f"[{config.model}] training on {len(split.train)} images of {config.dataset} at {config.size} px on {device} "
             f"({len(split.heldout)} held out), {sum(p.numel() for p in _params(model))} parameters, {steps} steps")

    def checkpoint() -> None:
        save_atomic({
            "format": FORMAT, "version": VERSION, "config": asdict(config), "spec": model.spec(), "step": step,
            "state": model.state_dict(), "train_ids": [task.ids[i] for i in split.train],
            "train_hashes": [task.hashes[i] for i in split.train], "heldout_hashes": [task.hashes[i] for i in split.heldout],
            "image_channels": int(data.shape[1] - 1),
        }, out / CHECKPOINT)

    started, first = time.perf_counter(), step
    saved = time.monotonic()
    try:
        while step < steps:
            gen = step_generator(config.seed, step)
            batch = data[torch.randint(0, data.shape[0], (config.batch_size,), generator=gen).to(data.device)]
            losses = model.train_step(batch, gen)
            step += 1
            if step % log_every == 0 or step == steps:
                echo(_progress(config.model, step, steps, losses, started, first))
            if step % save_every == 0 or step == steps or (save_minutes and time.monotonic() - saved >= 60 * save_minutes):
                checkpoint()
                saved = time.monotonic()
    except KeyboardInterrupt:
        checkpoint()
        echo(f"[{config.model}] interrupted: saved step {step} to {out / CHECKPOINT}; rerun the same command to resume")
        raise
    if first == steps:
        echo(f"[{config.model}] {out / CHECKPOINT} has already trained {steps} steps (raise --steps to continue)")
    _write_preview(model, out, config.seed)
    return out / CHECKPOINT


def _params(model: JointGenerator) -> list[torch.nn.Parameter]:
    return [p for v in vars(model).values() if isinstance(v, torch.nn.Module) for p in v.parameters() if p.requires_grad]


def _write_preview(model: JointGenerator, out: Path, seed: int) -> None:
    """A 4x4 grid of samples beside the checkpoint, to eyeball the run."""
    from metaseg.generative.figures import sample_grid

    images, masks = from_joint(model.sample(16, torch.Generator().manual_seed(seed), steps=20))
    sample_grid(images, masks, out / "samples.png", title=f"{type(model).__name__} samples")
