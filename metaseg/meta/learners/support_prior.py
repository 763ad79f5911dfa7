"""The learning-free floor a few-shot result is read against: every query pixel is predicted
foreground when most of the K support masks mark that pixel.

Why it exists: on datasets whose object sits at a typical place and size (polyps, skin lesions,
lungs) this location prior alone scores a Dice that a method must beat before it can be said to
have learnt anything from the images. It has no network and nothing to meta-train; the model it
is handed is ignored."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.meta import register_learner
from metaseg.meta.base import MetaLearner

_EPS = 1e-4  # keeps the logits of an all-0 / all-1 pixel finite


@register_learner("support_prior")
class SupportPrior(MetaLearner):
    """No options: the fraction of support masks that mark a pixel is its foreground probability."""

    needs_meta_training = False

    def adapt(self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
              steps: int | None = None) -> dict[str, torch.Tensor]:
        return {"prior": support_y.detach().float().mean(0, keepdim=True)}

    def predict(self, model: nn.Module, fast_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        prior = fast_params["prior"]
        if prior.shape[-2:] != x.shape[-2:]:
            raise MetasegError(f"support_prior: support masks are {tuple(prior.shape[-2:])} px, queries {tuple(x.shape[-2:])} px")
        return torch.logit(prior.clamp(_EPS, 1 - _EPS)).expand(x.shape[0], -1, -1, -1)

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        raise MetasegError("learner.name support_prior has nothing to meta-train: use it with `evaluate` or as a benchmark baseline")
