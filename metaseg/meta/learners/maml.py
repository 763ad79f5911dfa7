"""MAML (Finn et al. 2017): differentiate the query loss through `inner_steps` optimiser steps
on the support set. Second order by default; `first_order=True` is FOMAML (the meta-gradient is
the query gradient at the adapted weights); `checkpoint=True` recomputes each inner step during
the backward instead of storing it (same gradient, less memory, ~1 extra step of compute);
`meta_sgd=True` learns the inner learning rates (Li et al. 2017); `vmap_tasks=True` runs the
inner loops of a meta-batch's episodes together under torch.func.vmap (same meta-gradient;
not with checkpoint, nor with BatchNorm in train mode: metaseg.meta.core)."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.meta import core
from metaseg.meta.learners.common import InnerLoopLearner, check_option


class MAML(InnerLoopLearner):
    """Options: inner_steps, inner_lr (initial value when meta_sgd), inner_optimizer ("sgd" or
    "adam"), first_order, checkpoint, meta_sgd, meta_sgd_per ("element": one lr per weight,
    "tensor": one lr per parameter tensor), vmap_tasks, loss."""

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, first_order: bool = False,
                 checkpoint: bool = False, meta_sgd: bool = False, meta_sgd_per: str = "element",
                 inner_optimizer: str = "sgd", loss: str = "bce_dice", vmap_tasks: bool = False):
        super().__init__(inner_steps, inner_lr, inner_optimizer, loss)
        check_option(meta_sgd_per in ("element", "tensor"), "meta_sgd_per", f"must be 'element' or 'tensor', got {meta_sgd_per!r}")
        check_option(not (vmap_tasks and checkpoint), "vmap_tasks", "cannot be combined with checkpoint (torch.utils.checkpoint does not run under vmap)")
        self.vmap_tasks = bool(vmap_tasks)
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

    def meta_backward_batch(self, model: nn.Module, episodes: list[Episode], scale: float = 1.0) -> list[dict[str, float]]:
        if not self.vmap_tasks or self.inner_steps == 0:
            return super().meta_backward_batch(model, episodes, scale)
        core.check_vmappable(model)
        self.setup(model)
        theta = core.trainable_params(model)
        g_theta, g_lr, query, support = core.vmap_maml_grads(
            model, self.loss_fn, theta, self.inner_lrs(model), episodes, self.inner_steps, self.inner_optimizer,
            second_order=not self.first_order, scale=scale)
        core.add_grads(list(theta.values()), [g_theta[n] for n in theta])
        if g_lr is not None:
            core.add_grads([self.lrs[core.lr_key(n)] for n in g_lr], list(g_lr.values()))
        return [{"query_loss": float(q), "support_loss": float(s[0]), "support_loss_last_step": float(s[-1])}
                for q, s in zip(query, support)]

    def _create_lrs_from_state(self, state_dict, prefix, *args) -> None:
        """Loading a Meta-SGD checkpoint into a fresh learner: create the lrs it holds."""
        keys = [k for k in state_dict if k.startswith(prefix + "lrs.")]
        if keys and len(self.lrs) == 0:
            self.lrs = nn.ParameterDict({k[len(prefix) + 4:]: nn.Parameter(torch.empty_like(state_dict[k])) for k in keys})


class FOMAML(MAML):
    """MAML with first_order=True (options as MAML's, except first_order and checkpoint)."""

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, meta_sgd: bool = False,
                 meta_sgd_per: str = "element", inner_optimizer: str = "sgd", loss: str = "bce_dice",
                 vmap_tasks: bool = False):
        super().__init__(inner_steps, inner_lr, first_order=True, checkpoint=False, meta_sgd=meta_sgd,
                         meta_sgd_per=meta_sgd_per, inner_optimizer=inner_optimizer, loss=loss, vmap_tasks=vmap_tasks)
