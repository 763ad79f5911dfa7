"""`incontext`: the learner of the in-context segmenters (`model.kind: incontext_unet | incontext_sam`).

Adaptation is no optimisation at all: `adapt` checks and stores the support set (plus what the
model precomputes from it, e.g. support embeddings) as the "fast weights" dict, and `predict`
segments queries given it, so `metaseg adapt`, `metaseg evaluate` and the benchmark drive it
like any other learner. Meta-training is plain episodic training of the network: the loss of
its query predictions given the episode's support set, with the support size drawn per episode
(`support_sizes: [lo, hi]`, a random subset of the episode's K supports) and optional task
augmentation applied alike to support and query (`task_augment`: `flip` (horizontal / vertical),
`invert` (intensities), `swap` (foreground <-> background); each with probability 1/2).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.losses import bce_dice_loss
from metaseg.meta import core
from metaseg.meta.base import MetaLearner
from metaseg.meta.learners.common import check_option

TASK_AUGMENTATIONS = ("flip", "invert", "swap")


def check_model(model: nn.Module) -> None:
    from metaseg.models.incontext import InContextModel

    if not isinstance(model, InContextModel):
        raise MetasegError(f"learner.name=incontext needs model.kind incontext_unet or incontext_sam, got a {type(model).__name__}")


class InContext(MetaLearner):
    """Options: support_sizes ([lo, hi] or null = the episode's K), task_augment (list), seed."""

    def __init__(self, support_sizes: Sequence[int] | None = None, task_augment: Sequence[str] = (), seed: int = 0):
        super().__init__()
        if support_sizes is not None:
            ok = (isinstance(support_sizes, (list, tuple)) and len(support_sizes) == 2
                  and all(isinstance(v, int) for v in support_sizes) and 1 <= support_sizes[0] <= support_sizes[1])
            check_option(ok, "support_sizes", f"must be [lo, hi] with 1 <= lo <= hi, got {support_sizes!r}")
        unknown = sorted(set(task_augment) - set(TASK_AUGMENTATIONS))
        check_option(not unknown, "task_augment", f"unknown {unknown}; known: {list(TASK_AUGMENTATIONS)}")
        self.support_sizes = None if support_sizes is None else tuple(support_sizes)
        self.task_augment = tuple(task_augment)
        self.generator = torch.Generator().manual_seed(int(seed))

    # -- inference: no gradient step ------------------------------------------------------------
    @torch.no_grad()
    def adapt(self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
              steps: int | None = None) -> dict[str, torch.Tensor]:
        check_model(model)
        check_option(steps in (None, 0), "steps", f"an in-context learner takes no gradient steps at test time, got {steps}")
        return core.detached(model.prepare_support(support_x, support_y))

    def predict(self, model: nn.Module, fast_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        check_model(model)
        return model.segment(x, fast_params)

    # -- meta-training ---------------------------------------------------------------------------
    def draw(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def episode_view(self, episode: Episode) -> tuple[torch.Tensor, ...]:
        """(support_x, support_y, query_x, query_y) with a drawn support subset and task augmentation."""
        sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y
        k = sx.shape[0]
        if self.support_sizes is not None:
            lo, hi = min(self.support_sizes[0], k), min(self.support_sizes[1], k)
            size = lo + self.draw(hi - lo + 1)
            pick = torch.randperm(k, generator=self.generator)[:size].to(sx.device)
            sx, sy = sx[pick], sy[pick]
        x, y = torch.cat([sx, qx]), torch.cat([sy, qy])
        if "flip" in self.task_augment:
            for dim in (-1, -2):
                if self.draw(2):
                    x, y = x.flip(dim), y.flip(dim)
        if "invert" in self.task_augment and self.draw(2):
            x = 1.0 - x
        if "swap" in self.task_augment and self.draw(2):
            y = 1.0 - y
        n = sx.shape[0]
        return x[:n], y[:n], x[n:], y[n:]

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        check_model(model)
        sx, sy, qx, qy = self.episode_view(episode)
        logits = model.segment(qx, model.prepare_support(sx, sy))
        loss = bce_dice_loss(logits, qy)
        meta = list(self.meta_parameters(model))
        core.add_grads(meta, torch.autograd.grad(loss, meta, allow_unused=True), scale)
        return {"query_loss": float(loss.detach()), "support_size": float(sx.shape[0])}
