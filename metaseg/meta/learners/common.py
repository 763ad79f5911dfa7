"""What every built-in learner shares: inner-loop options and the loss, their validation,
test-time adaptation without a graph, and prediction under fast weights."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.errors import MetasegError
from metaseg.losses import resolve_loss
from metaseg.meta import core
from metaseg.meta.base import MetaLearner


def check_option(ok: bool, option: str, message: str) -> None:
    """One-line config error naming the learner option at fault."""
    if not ok:
        raise MetasegError(f"learner.{option}: {message}")


class InnerLoopLearner(MetaLearner):
    """A learner whose adaptation is `inner_steps` optimiser steps on the support loss.

    `loss` (inner and outer loop alike): bce_dice (default), bce, dice, focal_dice, or a dotted
    path `package.module:function` to the user's own (logits, target) -> scalar."""

    inner_tol = 0.0  # stop adapting early when the inner objective changes by less (iMAML sets it)

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, inner_optimizer: str = "sgd", loss: str = "bce_dice"):
        super().__init__()
        self.loss_fn = resolve_loss(loss)
        self.loss = loss
        check_option(isinstance(inner_steps, int) and inner_steps >= 0, "inner_steps", f"must be an integer >= 0, got {inner_steps!r}")
        check_option(float(inner_lr) > 0, "inner_lr", f"must be > 0, got {inner_lr!r}")
        check_option(inner_optimizer in core.DIRECTIONS, "inner_optimizer",
                     f"must be one of {sorted(core.DIRECTIONS)}, got {inner_optimizer!r}")
        self.inner_steps = inner_steps
        self.inner_lr = float(inner_lr)
        self.inner_optimizer = inner_optimizer

    # -- hooks a learner may override -------------------------------------------------------
    def inner_lrs(self, model: nn.Module) -> core.LearningRate:
        return self.inner_lr

    def adaptation_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, anchor: core.Params) -> core.LossFn:
        """The inner objective at fast weights; `anchor` is θ (iMAML's proximal term uses it)."""
        return self.support_loss(model, x, y)

    def support_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> core.LossFn:
        """params -> the configured loss of the model's prediction of `x` against `y`."""
        return core.loss_at(model, x, y, self.loss_fn)

    # -- MetaLearner interface ---------------------------------------------------------------
    def meta_parameters(self, model: nn.Module):
        self.setup(model)
        return super().meta_parameters(model)

    @torch.no_grad()
    def adapt(self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
              steps: int | None = None) -> dict[str, torch.Tensor]:
        """Fast weights for inference: first-order steps (the gradient is the only graph built,
        inside the step); any number of steps, also more than during meta-training."""
        self.setup(model)
        steps = self.inner_steps if steps is None else steps
        check_option(steps >= 0, "steps", f"must be >= 0, got {steps}")
        theta = core.detached(core.trainable_params(model))
        lr = self.inner_lrs(model)
        lr = {n: t.detach() for n, t in lr.items()} if isinstance(lr, dict) else lr
        loss_fn = self.adaptation_loss(model, support_x, support_y, theta)
        fast, _ = core.inner_loop(loss_fn, theta, steps, lr, self.inner_optimizer, second_order=False, tol=self.inner_tol)
        return core.detached(fast)

    def predict(self, model: nn.Module, fast_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return core.forward(model, fast_params, x)

