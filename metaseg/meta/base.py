"""The one interface every learner (and baseline) implements.

A learner says how the inner loop runs and how the meta-gradient is formed. It never owns a
training loop, data loader or logger: the Lightning module (training) and the adapt/evaluate
commands (inference) drive it. It is an nn.Module only so that its own meta-parameters (e.g.
Meta-SGD per-parameter inner learning rates) are saved in checkpoints and stepped by the outer
optimiser together with the network's.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from metaseg.data.types import Episode


class MetaLearner(nn.Module):
    """Interface; see `metaseg.meta.learners` for implementations."""

    needs_meta_training = True  # False: a baseline that only adapts (the benchmark skips its meta-training)

    def setup(self, model: nn.Module) -> None:
        """Create the learner's own meta-parameters that depend on the model (e.g. Meta-SGD
        learning rates shaped like its parameters). Idempotent; call it once right after building
        model and learner, before the outer optimiser (and before DDP wrapping) sees them."""

    def adapt(
        self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Support set -> fast weights (a name->tensor dict over the model's trainable parameters),
        detached, for inference. `steps` overrides the configured inner-step count."""
        raise NotImplementedError

    def predict(self, model: nn.Module, fast_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (B,1,H,W) of `x` under the fast weights."""
        raise NotImplementedError

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        """Accumulate `scale` x d(query loss after adaptation)/d(meta-parameters) into their `.grad`
        (like loss.backward()), and return scalar stats: at least `query_loss`, `support_loss`;
        iMAML adds `cg_residual`."""
        raise NotImplementedError

    def meta_backward_batch(self, model: nn.Module, episodes: list[Episode], scale: float = 1.0) -> list[dict[str, float]]:
        """`meta_backward` of every episode of a meta-batch (each scaled by `scale`), one stats dict
        per episode. Learners with `vmap_tasks` run the episodes' inner loops together instead."""
        return [self.meta_backward(model, episode, scale=scale) for episode in episodes]

    def meta_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        """What the outer optimiser steps: the model's trainable parameters and the learner's own."""
        yield from (p for p in model.parameters() if p.requires_grad)
        yield from (p for p in self.parameters() if p.requires_grad)
