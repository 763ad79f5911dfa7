"""Loading checkpoints that users hand in: weights only, validated, one-line errors.

`torch.load(weights_only=True)` refuses pickled code, so a foreign file cannot run anything on
load. Everything else that can be wrong with a file (missing, truncated, not a checkpoint, a
checkpoint of some other project) is reported as a MetasegError naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metaseg.errors import MetasegError
from metaseg.weights import load_weights_only

REQUIRED_HPARAMS = ("model", "learner")


def read_checkpoint(path: str | Path, what: str = "--checkpoint") -> dict[str, Any]:
    """The raw checkpoint dict of a metaseg meta-training run, loaded with weights_only=True."""
    path = Path(path)
    if not path.exists():
        raise MetasegError(f"{what}: no such file {path}")
    if not path.is_file():
        raise MetasegError(f"{what}: {path} is not a file")
    ckpt = load_weights_only(path, what)
    check_metaseg_checkpoint(ckpt, path, what)
    return ckpt


def check_metaseg_checkpoint(ckpt: Any, path: Path, what: str = "--checkpoint") -> None:
    """A metaseg checkpoint is a Lightning checkpoint whose hyperparameters rebuild model + learner."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        kind = "a bare state dict" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise MetasegError(f"{what}: {path} is not a metaseg checkpoint ({kind}; expected the .ckpt written by `metaseg meta-train`)")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or any(k not in hparams for k in REQUIRED_HPARAMS) or "metaseg" not in ckpt:
        raise MetasegError(
            f"{what}: {path} is a Lightning checkpoint but not one of metaseg (no model/learner hyperparameters)"
        )
    if not isinstance(hparams.get("learner"), dict) or "name" not in hparams["learner"]:
        raise MetasegError(f"{what}: {path} has no learner name in its hyperparameters")


def module_kwargs(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The MetaSegModule init arguments stored in a checkpoint (extra Lightning keys dropped)."""
    import inspect

    from metaseg.training.module import MetaSegModule

    accepted = set(inspect.signature(MetaSegModule.__init__).parameters) - {"self"}
    return {k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted}


def load_module(path: str | Path, what: str = "--checkpoint", map_location: str | torch.device = "cpu"):
    """Rebuild the MetaSegModule (network + learner) of a checkpoint and load its weights."""
    from metaseg.training.module import MetaSegModule, complete_state_dict

    path = Path(path)
    ckpt = read_checkpoint(path, what)
    module = MetaSegModule(**module_kwargs(ckpt))
    complete_state_dict(module, ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MetasegError(f"{what}: {path} does not match the model it describes ({first})") from None
    module.checkpoint_info = dict(ckpt.get("metaseg", {}))
    module.checkpoint_info["path"] = str(path)
    module.eval()
    return module.to(map_location)


def checkpoint_image_size(module: Any, default: int = 128) -> int:
    """The image size a checkpoint was meta-trained at (images are resized to it before predicting)."""
    return int(getattr(module, "checkpoint_info", {}).get("image_size") or default)
