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


class _Tied(torch.nn.Module):
    """Two layers sharing one weight (registered under two names)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 3, bias=False)
        self.b = torch.nn.Linear(3, 3, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_tied_weights_are_substituted_under_every_name():
    torch.manual_seed(0)
    model, x = _Tied(), torch.randn(4, 3)
    assert core.has_tied_tensors(model) and not core.has_tied_tensors(tiny_net())
    params = core.trainable_params(model)
    assert list(params) == ["a.weight"]  # the tie is one parameter
    w = torch.randn(3, 3)
    expected = torch.tanh(x @ w.T) @ w.T
    torch.testing.assert_close(core.forward(model, {"a.weight": w}, x), expected)
    torch.testing.assert_close(core.loss_at(model, x, x, lambda out, y: (out - y).pow(2).sum())({"a.weight": w}),
                               (expected - x).pow(2).sum())
    # the flag matters: told "untied", the second use of the weight keeps the module's own
    assert not torch.allclose(core.forward(model, {"a.weight": w}, x, tied=False), expected)


def test_untied_forward_skips_the_tie_search_with_the_same_result():
    model, ep = tiny_net(), random_episode()
    shifted = {n: p + 0.1 for n, p in core.trainable_params(model).items()}
    assert torch.equal(core.forward(model, shifted, ep.support_x, tied=False), core.forward(model, shifted, ep.support_x))


def test_float_lr_update_is_bit_identical_to_phi_minus_lr_d_with_the_same_gradients():
    torch.manual_seed(0)
    p, d = torch.randn(1000, requires_grad=True), torch.randn(1000, requires_grad=True)
    w = torch.randn(1000)
    new = core.apply_update({"p": p}, {"p": d}, 0.1)["p"]
    ref = p - 0.1 * d
    assert torch.equal(new, ref)
    g_new = torch.autograd.grad((new * w).sum(), (p, d))
    g_ref = torch.autograd.grad((ref * w).sum(), (p, d))
    assert all(torch.equal(a, b) for a, b in zip(g_new, g_ref))


def test_sgd_step_is_plain_gradient_descent():
    model, ep = tiny_net(), random_episode()
    params = core.trainable_params(model)
    loss_fn = core.loss_at(model, ep.support_x, ep.support_y, bce_dice_loss)
    new, _, loss = core.inner_step(loss_fn, params, 0.3, second_order=False)
    g = torch.autograd.grad(loss_fn(params), list(params.values()))
    for (n, p), gn in zip(params.items(), g):
        assert torch.equal(new[n], p - 0.3 * gn)  # bit for bit
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


def _spd_system(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    return a @ a.T + n * torch.eye(n, dtype=torch.float64), {"x": torch.randn(n, dtype=torch.float64, generator=gen)}


class CountingMatvec:
    """A·v that counts how often it is called (each call is one Hessian-vector product in iMAML)."""

    def __init__(self, a: torch.Tensor):
        self.a, self.calls = a, 0

    def __call__(self, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"x": self.a @ v["x"]}


def test_conjugate_gradient_solves_spd_system_with_one_product_per_step():
    a, b = _spd_system()
    matvec = CountingMatvec(a)
    result = core.conjugate_gradient(matvec, b, steps=6)
    torch.testing.assert_close(result.x["x"], torch.linalg.solve(a, b["x"]))
    true_residual = float(torch.linalg.norm(b["x"] - a @ result.x["x"]) / torch.linalg.norm(b["x"]))
    assert result.residual < 1e-8 and true_residual < 1e-8
    assert (matvec.calls, result.matvecs, result.steps) == (6, 6, 6)  # no extra product for the residual
    assert not result.negative_curvature


def test_conjugate_gradient_stops_and_reports_negative_curvature():
    a = torch.diag(torch.tensor([1.0, -3.0], dtype=torch.float64))
    b = {"x": torch.tensor([1.0, 1.0], dtype=torch.float64)}  # bᵀAb = -2 < 0: the first direction
    result = core.conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=5)
    assert result.negative_curvature and result.steps == 0 and result.matvecs == 1
    assert torch.equal(result.x["x"], b["x"])  # first direction: A taken as I (truncated Newton), not -b/2
    assert result.residual == pytest.approx(float(torch.linalg.norm(b["x"] - a @ b["x"]) / 2**0.5))
    # later on, the iterate before the bad direction is kept: A = diag(1, 1, -3) from b = (1, 1, 0.1)
    a3 = torch.diag(torch.tensor([1.0, 1.0, -3.0], dtype=torch.float64))
    b3 = {"x": torch.tensor([1.0, 1.0, 0.1], dtype=torch.float64)}
    result = core.conjugate_gradient(lambda v: {"x": a3 @ v["x"]}, b3, steps=5)
    assert result.negative_curvature and result.steps == 1
    assert torch.isfinite(result.x["x"]).all() and float(result.x["x"][:2].sum()) > 0


def test_conjugate_gradient_warm_start_converges_in_fewer_steps():
    a, b = _spd_system(n=12, seed=1)
    exact = torch.linalg.solve(a, b["x"])
    near = {"x": exact + 1e-3 * torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))}
    cold = core.conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=50, tol=1e-6)
    warm = core.conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=50, tol=1e-6, x0=near)
    assert cold.residual < 1e-6 and warm.residual < 1e-6
    assert warm.steps < cold.steps
    torch.testing.assert_close(warm.x["x"], exact, rtol=1e-5, atol=1e-6)


def test_learner_options_are_validated_with_one_line_errors():
    with pytest.raises(MetasegError, match="learner.inner_lr"):
        create_learner("maml", inner_lr=-1)
    with pytest.raises(MetasegError, match="learner.inner_optimizer"):
        create_learner("imaml", inner_optimizer="rmsprop")
    with pytest.raises(MetasegError, match="learner.name"):
        create_learner("reptile-ish")
    with pytest.raises(MetasegError, match="learner.cg_steps"):
        create_learner("imaml", cg_steps=0)
