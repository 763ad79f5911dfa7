"""The learning-free floor a few-shot result is read against: the mean of the K support masks,
thresholded so that the predicted area equals the supports' mean foreground area, and the same
mask for every query. (A plain majority vote shrinks to nothing when the supports' objects do not
overlap, so it would be too weak a floor.)

Why it exists: on datasets whose object sits at a typical place and size (polyps, skin lesions,
lungs) this location prior alone scores a Dice that a method must beat before it can be said to
have learnt anything from the images. It has no network and nothing to meta-train; the model it
is handed is ignored."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.meta.base import MetaLearner

_EPS = 1e-4  # keeps the logits of an all-0 / all-1 pixel finite


class SupportPrior(MetaLearner):
    """No options: pixels ranked by how many support masks mark them; the top ones, as many as the
    supports' mean foreground area, are foreground."""

    needs_meta_training = False

    def adapt(self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
              steps: int | None = None) -> dict[str, torch.Tensor]:
        mean_mask = support_y.detach().float().mean(0, keepdim=True)  # (1,1,H,W), fraction of supports marking each pixel
        area = int(round(float(support_y.float().mean()) * mean_mask.numel()))
        if area == 0:
            return {"prior": torch.zeros_like(mean_mask)}
        cut = torch.topk(mean_mask.flatten(), area).values[-1]
        return {"prior": ((mean_mask >= cut) & (mean_mask > 0)).float()}

    def predict(self, model: nn.Module, fast_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        prior = fast_params["prior"]
        if prior.shape[-2:] != x.shape[-2:]:
            raise MetasegError(f"support_prior: support masks are {tuple(prior.shape[-2:])} px, queries {tuple(x.shape[-2:])} px")
        return torch.logit(prior.clamp(_EPS, 1 - _EPS)).expand(x.shape[0], -1, -1, -1)

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        raise MetasegError("learner.name support_prior has nothing to meta-train: use it with `evaluate` or as a benchmark baseline")
