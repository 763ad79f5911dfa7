"""iMAML (Rajeswaran et al. 2019): implicit meta-gradients.

Inner problem: φ = argmin L_support(φ) + λ/2 ‖φ − θ‖², solved approximately by `inner_steps`
optimiser steps from θ (stopping early when the objective changes by less than `inner_tol`).
At the solution dφ/dθ = (I + H/λ)⁻¹ with H the Hessian of the support loss (without the
proximal term) at φ, so the meta-gradient is v = (I + H/λ)⁻¹ ∇_φ L_query(φ), found by
`cg_steps` of conjugate gradient. Nothing is differentiated through the inner loop, so memory
does not grow with inner_steps. `damping` adds δ·I to the system, (1 + δ) I + H/λ, which keeps
CG stable when H has large negative curvature; `cg_residual` (relative) is reported, and
`cg_negative_curvature` is 1 when CG met pᵀAp ≤ 0 and stopped there (raise damping or λ).
`vmap_tasks=True` solves a meta-batch's inner problems and CG systems together under
torch.func.vmap (HVPs forward-over-reverse; needs inner_tol 0)."""
from __future__ import annotations

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.meta import core
from metaseg.meta.learners.common import InnerLoopLearner, check_option


class IMAML(InnerLoopLearner):
    """Options: inner_steps, inner_lr, inner_optimizer, inner_tol, lam (λ), cg_steps, cg_tol,
    damping, hvp ("double_backward" or "jvp"), vmap_tasks, loss."""

    def __init__(self, inner_steps: int = 10, inner_lr: float = 0.1, lam: float = 2.0, cg_steps: int = 5,
                 damping: float = 0.0, inner_tol: float = 0.0, cg_tol: float = 0.0,
                 inner_optimizer: str = "sgd", hvp: str = "double_backward", loss: str = "bce_dice",
                 vmap_tasks: bool = False):
        super().__init__(inner_steps, inner_lr, inner_optimizer, loss)
        check_option(float(lam) > 0, "lam", f"must be > 0, got {lam!r}")
        check_option(isinstance(cg_steps, int) and cg_steps >= 1, "cg_steps", f"must be an integer >= 1, got {cg_steps!r}")
        check_option(float(damping) >= 0, "damping", f"must be >= 0, got {damping!r}")
        check_option(hvp in core.HVP_METHODS, "hvp", f"must be one of {sorted(core.HVP_METHODS)}, got {hvp!r}")
        self.lam, self.cg_steps, self.damping = float(lam), cg_steps, float(damping)
        self.inner_tol, self.cg_tol, self.hvp = float(inner_tol), float(cg_tol), hvp
        check_option(not (vmap_tasks and self.inner_tol > 0), "vmap_tasks",
                     "needs inner_tol 0 (a per-task early stop of the inner loop cannot run under vmap)")
        self.vmap_tasks = bool(vmap_tasks)

    def adaptation_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, anchor: core.Params) -> core.LossFn:
        base = self.support_loss(model, x, y)
        anchor = core.detached(anchor)
        half_lam = 0.5 * self.lam
        return lambda p: base(p) + half_lam * sum(((p[n] - anchor[n]) ** 2).sum() for n in p)

    def solve_inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[core.Params, list[float]]:
        theta = core.detached(core.trainable_params(model))
        with torch.no_grad():
            fast, losses = core.inner_loop(self.adaptation_loss(model, x, y, theta), theta, self.inner_steps,
                                           self.inner_lr, self.inner_optimizer, second_order=False, tol=self.inner_tol)
        return core.detached(fast), losses

    def implicit_gradient(self, model: nn.Module, episode: Episode, fast: core.Params) -> tuple[core.Params, float, core.CGResult]:
        """(I(1+δ) + H/λ)⁻¹ ∇_φ L_query(φ) by CG; returns (v, query loss, the CG result)."""
        at = core.detached(fast, requires_grad=True)
        with torch.enable_grad():
            query_loss = self.loss_fn(core.forward(model, at, episode.query_x), episode.query_y)
            g_query = core.grads(query_loss, at)
        hvp = core.HVP_METHODS[self.hvp](self.support_loss(model, episode.support_x, episode.support_y), fast)
        scale_i, inv_lam = 1.0 + self.damping, 1.0 / self.lam

        def matvec(v: core.Params) -> core.Params:
            hv = hvp(v)
            return {n: scale_i * v[n] + inv_lam * hv[n] for n in v}

        cg = core.conjugate_gradient(matvec, g_query, self.cg_steps, self.cg_tol)
        return cg.x, float(query_loss.detach()), cg

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        fast, losses = self.solve_inner(model, episode.support_x, episode.support_y)
        v, query_loss, cg = self.implicit_gradient(model, episode, fast)
        theta = core.trainable_params(model)
        core.add_grads(list(theta.values()), [v[n] for n in theta], scale)
        if not losses:
            with torch.no_grad():
                losses = [float(self.support_loss(model, episode.support_x, episode.support_y)(theta))]
        return {"query_loss": query_loss, "support_loss": losses[0], "support_loss_last_step": losses[-1],
                "cg_residual": cg.residual, "cg_negative_curvature": float(cg.negative_curvature)}

    def meta_backward_batch(self, model: nn.Module, episodes: list[Episode], scale: float = 1.0) -> list[dict[str, float]]:
        if not self.vmap_tasks or self.inner_steps == 0:
            return super().meta_backward_batch(model, episodes, scale)
        core.check_vmappable(model)
        sx, sy, qx, qy = core.stack_episodes(episodes)
        theta = core.trainable_params(model)
        half_lam, loss = 0.5 * self.lam, self.loss_fn

        def objective(p: core.Params, anchor: core.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return core.loss_at(model, x, y, loss)(p) + half_lam * sum(((p[n] - anchor[n]) ** 2).sum() for n in p)

        fast, support = core.vmap_inner_solve(model, objective, theta, self.inner_lr, sx, sy, self.inner_steps,
                                              self.inner_optimizer)
        query_grad = torch.func.vmap(lambda f, x, y: torch.func.grad_and_value(core.loss_at(model, x, y, loss))(f))
        g_query, query = query_grad(fast, qx, qy)
        hvp = core.vmap_hvp(model, loss, fast, sx, sy)
        scale_i, inv_lam = 1.0 + self.damping, 1.0 / self.lam

        def matvec(v: core.Params) -> core.Params:
            hv = hvp(v)
            return {n: scale_i * v[n] + inv_lam * hv[n] for n in v}

        cg = core.batched_conjugate_gradient(matvec, {n: t.detach() for n, t in g_query.items()}, self.cg_steps, self.cg_tol)
        core.add_grads(list(theta.values()), [cg.x[n].sum(0) for n in theta], scale)
        return [{"query_loss": float(query[t]), "support_loss": float(support[t, 0]),
                 "support_loss_last_step": float(support[t, -1]), "cg_residual": float(cg.residual[t]),
                 "cg_negative_curvature": float(cg.negative_curvature[t])} for t in range(len(episodes))]
