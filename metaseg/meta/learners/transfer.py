"""The supervised transfer baseline every meta-learner must beat: meta-training is plain joint
supervised training on all labelled images of the episode (support + query), adaptation is
fine-tuning on the support set. Same interface, same loss, same inner optimiser code."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.meta import core
from metaseg.meta.learners.common import InnerLoopLearner


class Transfer(InnerLoopLearner):
    """Options: inner_steps / inner_lr / inner_optimizer: the fine-tuning run of `adapt`; loss."""

    def __init__(self, inner_steps: int = 20, inner_lr: float = 1e-3, inner_optimizer: str = "adam", loss: str = "bce_dice"):
        super().__init__(inner_steps, inner_lr, inner_optimizer, loss)

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        x = torch.cat([episode.support_x, episode.query_x])
        y = torch.cat([episode.support_y, episode.query_y])
        logits = model(x)
        loss = self.loss_fn(logits, y)
        meta = list(self.meta_parameters(model))
        core.add_grads(meta, torch.autograd.grad(loss, meta, allow_unused=True), scale)
        k = episode.support_x.shape[0]
        with torch.no_grad():
            support = self.loss_fn(logits[:k], y[:k])
            query = self.loss_fn(logits[k:], y[k:])
        return {"query_loss": float(query), "support_loss": float(support), "loss": float(loss.detach())}
