"""The functional core: forward, inner steps, HVPs and CG against plain autograd on a tiny model."""
from __future__ import annotations

import pytest
import torch

from metaseg.errors import MetasegError
from metaseg.losses import bce_dice_loss
from metaseg.meta import core, create_learner
from tests.meta_helpers import random_episode, tiny_net, unflattener


def test_functional_forward_equals_module_forward_and_substitutes_params():
    model, ep = tiny_net(), random_episode()
    params = core.trainable_params(model)
    assert torch.equal(core.forward(model, params, ep.support_x), model(ep.support_x))
    shifted = {n: p + 0.1 for n, p in params.items()}
    assert not torch.allclose(core.forward(model, shifted, ep.support_x), model(ep.support_x))


def test_sgd_step_is_plain_gradient_descent():
    model, ep = tiny_net(), random_episode()
    params = core.trainable_params(model)
    loss_fn = core.loss_at(model, ep.support_x, ep.support_y, bce_dice_loss)
    new, _, loss = core.inner_step(loss_fn, params, 0.3, second_order=False)
    g = torch.autograd.grad(loss_fn(params), list(params.values()))
    for (n, p), gn in zip(params.items(), g):
        torch.testing.assert_close(new[n], p - 0.3 * gn)
    assert float(loss) == pytest.approx(float(loss_fn(params).detach()))


def test_adam_direction_matches_torch_adam():
    """Three functional Adam steps equal torch.optim.Adam's on the same parameters."""
    model, ep = tiny_net(), random_episode()
    loss_fn = core.loss_at(model, ep.support_x, ep.support_y, bce_dice_loss)
    fast, _ = core.inner_loop(loss_fn, core.detached(core.trainable_params(model)), 3, 0.01, "adam", second_order=False)
    reference = tiny_net()
    opt = torch.optim.Adam(reference.parameters(), lr=0.01, eps=1e-8)
    for _ in range(3):
        opt.zero_grad()
        bce_dice_loss(reference(ep.support_x), ep.support_y).backward()
        opt.step()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(fast[n], p.detach(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", sorted(core.HVP_METHODS))
def test_hvp_equals_full_hessian_product(method):
    model, ep = tiny_net(), random_episode()
    params = core.detached(core.trainable_params(model))
    loss_fn = core.loss_at(model, ep.support_x, ep.support_y, bce_dice_loss)
    flat = torch.cat([p.flatten() for p in params.values()])
    unflatten = unflattener(params)

    hessian = torch.autograd.functional.hessian(lambda vec: loss_fn(unflatten(vec)), flat)
    v = torch.randn_like(flat)
    hv = core.HVP_METHODS[method](loss_fn, params)(unflatten(v))
    torch.testing.assert_close(torch.cat([hv[n].flatten() for n in params]), hessian @ v)


def test_conjugate_gradient_solves_spd_system():
    a = torch.randn(6, 6, dtype=torch.float64)
    a = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = {"x": torch.randn(6, dtype=torch.float64)}
    x, residual = core.conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=6)
    torch.testing.assert_close(x["x"], torch.linalg.solve(a, b["x"]))
    assert residual < 1e-8


def test_learner_options_are_validated_with_one_line_errors():
    with pytest.raises(MetasegError, match="learner.inner_lr"):
        create_learner("maml", inner_lr=-1)
    with pytest.raises(MetasegError, match="learner.inner_optimizer"):
        create_learner("imaml", inner_optimizer="rmsprop")
    with pytest.raises(MetasegError, match="learner.name"):
        create_learner("reptile-ish")
    with pytest.raises(MetasegError, match="learner.cg_steps"):
        create_learner("imaml", cg_steps=0)
