"""MAML (Finn et al. 2017): differentiate the query loss through `inner_steps` optimiser steps
on the support set. Second order by default; `first_order=True` is FOMAML (the meta-gradient is
the query gradient at the adapted weights); `checkpoint=True` recomputes each inner step during
the backward instead of storing it (same gradient, less memory, ~1 extra step of compute);
`meta_sgd=True` learns the inner learning rates (Li et al. 2017)."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.meta import core
from metaseg.meta.learners.common import InnerLoopLearner, check_option


class MAML(InnerLoopLearner):
    """Options: inner_steps, inner_lr (initial value when meta_sgd), inner_optimizer ("sgd" or
    "adam"), first_order, checkpoint, meta_sgd, meta_sgd_per ("element": one lr per weight,
    "tensor": one lr per parameter tensor), loss."""

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, first_order: bool = False,
                 checkpoint: bool = False, meta_sgd: bool = False, meta_sgd_per: str = "element",
                 inner_optimizer: str = "sgd", loss: str = "bce_dice"):
        super().__init__(inner_steps, inner_lr, inner_optimizer, loss)
        check_option(meta_sgd_per in ("element", "tensor"), "meta_sgd_per", f"must be 'element' or 'tensor', got {meta_sgd_per!r}")
        self.first_order = bool(first_order)
        self.checkpoint = bool(checkpoint)
        self.meta_sgd = bool(meta_sgd)
        self.meta_sgd_per = meta_sgd_per
        self.lrs = nn.ParameterDict()  # Meta-SGD learning rates, created by setup(model)
        self._register_load_state_dict_pre_hook(self._create_lrs_from_state)

    def setup(self, model: nn.Module) -> None:
        if self.meta_sgd and len(self.lrs) == 0:
            self.lrs = core.make_meta_sgd_lrs(core.trainable_params(model), self.inner_lr, self.meta_sgd_per)

    def inner_lrs(self, model: nn.Module) -> core.LearningRate:
        if not self.meta_sgd:
            return self.inner_lr
        self.setup(model)
        return core.meta_sgd_lr_dict(self.lrs, core.trainable_params(model))

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        self.setup(model)
        theta = core.trainable_params(model)
        fast, losses = core.inner_loop(
            self.support_loss(model, episode.support_x, episode.support_y), theta, self.inner_steps,
            self.inner_lrs(model), self.inner_optimizer, second_order=not self.first_order,
            checkpoint=self.checkpoint,
        )
        query_loss = self.loss_fn(core.forward(model, fast, episode.query_x), episode.query_y)
        meta = list(self.meta_parameters(model))
        core.add_grads(meta, torch.autograd.grad(query_loss, meta, allow_unused=True), scale)
        if not losses:  # inner_steps == 0: report the support loss all the same
            with torch.no_grad():
                losses = [float(self.support_loss(model, episode.support_x, episode.support_y)(theta))]
        return {"query_loss": float(query_loss.detach()), "support_loss": losses[0], "support_loss_last_step": losses[-1]}

    def _create_lrs_from_state(self, state_dict, prefix, *args) -> None:
        """Loading a Meta-SGD checkpoint into a fresh learner: create the lrs it holds."""
        keys = [k for k in state_dict if k.startswith(prefix + "lrs.")]
        if keys and len(self.lrs) == 0:
            self.lrs = nn.ParameterDict({k[len(prefix) + 4:]: nn.Parameter(torch.empty_like(state_dict[k])) for k in keys})


class FOMAML(MAML):
    """MAML with first_order=True (options as MAML's, except first_order and checkpoint)."""

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, meta_sgd: bool = False,
                 meta_sgd_per: str = "element", inner_optimizer: str = "sgd", loss: str = "bce_dice"):
        super().__init__(inner_steps, inner_lr, first_order=True, checkpoint=False, meta_sgd=meta_sgd,
                         meta_sgd_per=meta_sgd_per, inner_optimizer=inner_optimizer, loss=loss)
