"""What the jobs adapt and predict with: a checkpoint or a baseline, built in one place.

`build_method` is the only function that turns `--checkpoint`/`--method` into a network and a
learner (`metaseg adapt`, `metaseg evaluate`, the demo and the benchmark's baselines use it); the
result also says the image size to predict at (the checkpoint's training size) and how many
adaptation steps will actually run, so every summary can print the number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metaseg.errors import MetasegError

if TYPE_CHECKING:  # torch is imported where it is used, so that parsing options (commands/) stays fast
    import torch
    import torch.nn as nn

SCRATCH_STEPS = 100  # fine-tuning steps of the scratch baseline when --steps is not given
BASELINES = ("scratch", "support_prior", "medsam_lite_zeroshot", "medsam_lite_finetune",
             "incontext_sam_transfer")  # `--method` values that ignore --checkpoint
MEDSAM_FINETUNE = {"inner_lr": 3e-4, "inner_optimizer": "adam", "inner_steps": 10}  # the benchmark's budget (docs/medsam_lite.md)
# The in-context method that needs no training (docs/incontext.md, label transfer): the frozen
# LiteMedSAM embeddings vote the support's labels onto each query; the setting is the one chosen on
# meta-validation tasks, benchmarks/fewshot_incontext_sam_transfer.yaml (a test keeps them equal).
INCONTEXT_TRANSFER = {"kind": "incontext_sam", "conditioner": False, "transfer": "map", "transfer_temperature": 0.03}
DEFAULT_IMAGE_SIZE = 128  # network input size of a baseline (no checkpoint to say otherwise)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Method:
    """A network and learner ready to adapt; `steps` is the adaptation actually run (None: the method
    does not adapt a network, e.g. the support-mask prior)."""

    model: nn.Module
    learner: nn.Module
    name: str
    image_size: int
    steps: int | None
    info: dict[str, Any] = field(default_factory=dict)  # the checkpoint's metaseg record, {} for a baseline

    @property
    def in_channels(self) -> int:
        """The channel count the network takes (decides the conversion of a mixed grayscale/colour task)."""
        return int(getattr(self.model, "in_channels", 3))

    @property
    def checkpoint(self) -> str | None:
        return self.info.get("path")


def uses_checkpoint(checkpoint: str | None, method: str | None) -> bool:
    """Whether --checkpoint is read (a baseline --method, or 'none', ignores it)."""
    return bool(checkpoint) and str(checkpoint).lower() != "none" and method not in BASELINES


def resolve_device(device: str | torch.device | None, option: str = "--device") -> torch.device:
    """auto (or None) -> cuda when available, else cpu; cuda asked for but absent is a one-line error."""
    import torch

    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES[1:]:
        raise MetasegError(f"{option} {name!r}: expected one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetasegError(f"{option} {name}: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def adaptation_steps(learner: nn.Module, steps: int | None) -> int | None:
    """The number of steps `learner.adapt(..., steps=steps)` runs; None for a learner without steps."""
    if not getattr(learner, "needs_meta_training", True) and not hasattr(learner, "inner_steps"):
        return None  # the support-mask prior: no network is adapted
    inner = getattr(learner, "inner", learner)  # sam_adapter wraps a gradient learner
    return int(steps) if steps is not None else getattr(inner, "inner_steps", None)


def attach_cam_prompts(found: Method, path: str | None) -> Method:
    """`--cam-prompts FILE`: the method's SAM-based model takes its box prompt from SAM-Mix's trained
    presence + CAM head (the file `metaseg adapt --method sam_mix` writes) instead of the whole-image
    box (LiteMedSAM's learned tokens) or no box (SAM's first pass). None: unchanged."""
    if path is None:
        return found
    from metaseg.models.sam import SamSegmenter
    from metaseg.models.sam_mix import load_cam_prompter

    if not isinstance(found.model, SamSegmenter):
        raise MetasegError(f"--cam-prompts: {found.name} is not a SAM-based model (a medsam_lite or sam checkpoint, "
                           "or --method medsam_lite_zeroshot / medsam_lite_finetune)")
    found.model.box_prompter = load_cam_prompter(path, "--cam-prompts")
    return found


def build_method(checkpoint: str | None = None, method: str | None = None, seed: int = 0, steps: int | None = None,
                 device: str | torch.device = "cpu", model_config: dict | None = None) -> Method:
    """A checkpoint's model and learner, or a baseline.

    Scratch: a randomly initialised network with the default U-Net config (seeded), trained on
    the K shots by the `transfer` learner's fine-tuning (`SCRATCH_STEPS` unless `steps`).
    support_prior: the mean of the K support masks cut to their mean area, no network (the floor to beat).
    medsam_lite_zeroshot / _finetune: the pretrained LiteMedSAM base without meta-training.
    incontext_sam_transfer: in-context segmentation with nothing trained (`INCONTEXT_TRANSFER`).
    """
    import torch

    from metaseg.checkpoints import checkpoint_image_size, load_module
    from metaseg.meta import create_learner
    from metaseg.models import create_model

    if uses_checkpoint(checkpoint, method):
        module = load_module(checkpoint, "--checkpoint", map_location=device)
        name = method or module.hparams.learner["name"]
        return Method(module.model, module.learner, name, checkpoint_image_size(module, DEFAULT_IMAGE_SIZE),
                      adaptation_steps(module.learner, steps), module.checkpoint_info)
    if method in ("medsam_lite_zeroshot", "medsam_lite_finetune"):  # the pretrained base, no meta-training
        model = create_model("medsam_lite", image_size=DEFAULT_IMAGE_SIZE).to(device).eval()
        n = 0 if method == "medsam_lite_zeroshot" else int(steps if steps is not None else MEDSAM_FINETUNE["inner_steps"])
        learner = create_learner("transfer", **dict(MEDSAM_FINETUNE, inner_steps=n)).to(device)
        return Method(model, learner, method, DEFAULT_IMAGE_SIZE, n)
    if method == "incontext_sam_transfer":
        if steps not in (None, 0):
            raise MetasegError(f"--steps {steps}: --method incontext_sam_transfer takes no gradient step (leave --steps out)")
        model = create_model(**INCONTEXT_TRANSFER, image_size=DEFAULT_IMAGE_SIZE).to(device).eval()
        return Method(model, create_learner("incontext").to(device), method, DEFAULT_IMAGE_SIZE, None)
    torch.manual_seed(seed)
    with torch.enable_grad():  # building the U-Net runs a probe backward pass
        model = create_model(**(model_config or {"kind": "unet"})).to(device).eval()
    if method == "support_prior":
        return Method(model, create_learner("support_prior"), "support_prior", DEFAULT_IMAGE_SIZE, None)
    n = int(steps if steps is not None else SCRATCH_STEPS)
    return Method(model, create_learner("transfer", inner_steps=n).to(device), "scratch", DEFAULT_IMAGE_SIZE, n)
