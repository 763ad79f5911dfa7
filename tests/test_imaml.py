"""iMAML: the CG meta-gradient equals the exact implicit gradient (I + H/λ)⁻¹ ∇L_query built
from the full Hessian of a tiny model; memory-relevant behaviour (no graph through the inner loop)."""
from __future__ import annotations

import pytest
import torch

from metaseg.losses import bce_dice_loss
from metaseg.meta import core, create_learner
from tests.meta_helpers import meta_grads, random_episode, tiny_net, unflattener


def flat(params: dict) -> torch.Tensor:
    return torch.cat([p.flatten() for p in params.values()])




@pytest.mark.parametrize("lam,damping", [(2.0, 0.0), (0.5, 0.1)])
def test_imaml_meta_gradient_equals_exact_implicit_gradient(lam, damping):
    model, ep = tiny_net(), random_episode()
    n = sum(p.numel() for p in model.parameters())
    learner = create_learner("imaml", inner_steps=20, inner_lr=0.3, lam=lam, damping=damping, cg_steps=2 * n)
    grads = meta_grads(learner, model, ep)
    stats = learner.meta_backward(model, ep)
    assert stats["cg_residual"] < 1e-6

    fast, _ = learner.solve_inner(model, ep.support_x, ep.support_y)
    unflatten = unflattener(fast)
    support = core.loss_at(model, ep.support_x, ep.support_y, bce_dice_loss)  # no proximal term
    hessian = torch.autograd.functional.hessian(lambda v: support(unflatten(v)), flat(fast))
    at = core.detached(fast, requires_grad=True)
    g_query = flat(core.grads(bce_dice_loss(core.forward(model, at, ep.query_x), ep.query_y), at))
    system = (1 + damping) * torch.eye(n, dtype=torch.float64) + hessian / lam
    exact = torch.linalg.solve(system, g_query)
    ours = torch.cat([g.flatten() for g in grads])
    assert float((ours - exact).norm() / exact.norm()) < 1e-3


def test_imaml_inner_problem_is_proximal_and_default_cg_reports_residual():
    model, ep = tiny_net(), random_episode()
    theta = core.detached(core.trainable_params(model))
    far = create_learner("imaml", inner_steps=30, inner_lr=0.3, lam=0.01)
    near = create_learner("imaml", inner_steps=30, inner_lr=0.3, lam=3.0)  # lr·λ < 2: stable
    dist = lambda fast: float(sum(((fast[k] - theta[k]) ** 2).sum() for k in theta))  # noqa: E731
    assert dist(near.solve_inner(model, ep.support_x, ep.support_y)[0]) < dist(far.solve_inner(model, ep.support_x, ep.support_y)[0])
    stats = create_learner("imaml").meta_backward(model, ep)  # paper defaults: λ=2, 5 CG steps
    assert set(stats) >= {"query_loss", "support_loss", "cg_residual"}
    assert all(isinstance(v, float) for v in stats.values()) and 0 <= stats["cg_residual"] < 1


def test_imaml_inner_tolerance_stops_early():
    model, ep = tiny_net(), random_episode()
    _, losses = create_learner("imaml", inner_steps=200, inner_lr=0.3, inner_tol=1e-4).solve_inner(model, ep.support_x, ep.support_y)
    assert 1 < len(losses) < 200
