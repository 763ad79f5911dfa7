"""MAML / FOMAML / Meta-SGD / checkpointing / transfer: meta-gradients against independent
references (finite differences, `higher`, plain autograd)."""
from __future__ import annotations

import pytest
import torch

from metaseg.losses import bce_dice_loss
from metaseg.meta import core, create_learner
from metaseg.models import create_model
from tests.meta_helpers import meta_grads, random_episode, tiny_net


def query_loss_after_adapt(learner, model, ep) -> float:
    """The meta-objective's value, computed without any graph."""
    fast = learner.adapt(model, ep.support_x, ep.support_y)
    with torch.no_grad():
        return float(bce_dice_loss(learner.predict(model, fast, ep.query_x), ep.query_y))


def directional_fd(learner, model, ep, direction, eps=1e-5) -> float:
    """Central difference of the meta-objective along `direction` (one tensor per meta-parameter)."""
    params = list(learner.meta_parameters(model))

    def shifted(sign):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        value = query_loss_after_adapt(learner, model, ep)
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return value

    return (shifted(1) - shifted(-1)) / (2 * eps)


@pytest.mark.parametrize("options", [
    {},
    {"inner_optimizer": "adam", "inner_lr": 0.05},
    {"meta_sgd": True, "meta_sgd_per": "tensor"},
], ids=["sgd", "adam", "meta_sgd"])
def test_second_order_maml_equals_finite_differences(options):
    model, ep = tiny_net(), random_episode()
    learner = create_learner("maml", inner_steps=3, **options)
    grads = meta_grads(learner, model, ep)
    torch.manual_seed(3)
    directions = [[torch.randn_like(g) for g in grads]]
    # plus three single coordinates (the first weight of the first and last tensors, a bias)
    for i in (0, 1, len(grads) - 1):
        d = [torch.zeros_like(g) for g in grads]
        d[i].view(-1)[0] = 1.0
        directions.append(d)
    for d in directions:
        analytic = sum(float((g * di).sum()) for g, di in zip(grads, d))
        numeric = directional_fd(learner, model, ep, d)
        assert abs(analytic - numeric) <= 1e-4 * abs(numeric), (analytic, numeric)


def test_first_order_maml_is_query_gradient_at_adapted_weights():
    model, ep = tiny_net(), random_episode()
    learner = create_learner("fomaml", inner_steps=3)
    grads = meta_grads(learner, model, ep)
    fast = core.detached(learner.adapt(model, ep.support_x, ep.support_y), requires_grad=True)
    expected = torch.autograd.grad(bce_dice_loss(learner.predict(model, fast, ep.query_x), ep.query_y), list(fast.values()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    second = meta_grads(create_learner("maml", inner_steps=3), model, ep)
    assert any(not torch.allclose(g, s) for g, s in zip(grads, second))  # really first order


@pytest.mark.parametrize("options", [{}, {"inner_optimizer": "adam"}, {"meta_sgd": True}], ids=["sgd", "adam", "meta_sgd"])
def test_checkpointing_gives_the_same_gradient(options):
    model, ep = tiny_net(), random_episode()
    plain = meta_grads(create_learner("maml", inner_steps=4, **options), model, ep)
    checkpointed = meta_grads(create_learner("maml", inner_steps=4, checkpoint=True, **options), model, ep)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_meta_sgd_learning_rates_receive_gradients_and_round_trip():
    model, ep = tiny_net(), random_episode()
    learner = create_learner("maml", inner_steps=2, meta_sgd=True)
    meta_grads(learner, model, ep)
    assert len(learner.lrs) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        lr = learner.lrs[core.lr_key(name)]
        assert lr.shape == p.shape and lr.grad is not None and float(lr.grad.abs().sum()) > 0
    with torch.no_grad():
        next(iter(learner.lrs.values())).fill_(0.123)
    fresh = create_learner("maml", inner_steps=2, meta_sgd=True)
    fresh.load_state_dict(learner.state_dict())
    assert float(next(iter(fresh.lrs.values())).detach().flatten()[0]) == pytest.approx(0.123)


def test_adapt_runs_more_steps_than_training_and_needs_no_graph():
    model, ep = tiny_net(), random_episode()
    learner = create_learner("maml", inner_steps=1, inner_lr=0.5)
    loss_fn = core.loss_at(model, ep.support_x, ep.support_y, bce_dice_loss)
    fast1 = learner.adapt(model, ep.support_x, ep.support_y)
    fast10 = learner.adapt(model, ep.support_x, ep.support_y, steps=10)
    assert all(not t.requires_grad and t.grad_fn is None for t in fast10.values())
    with torch.no_grad():
        assert float(loss_fn(fast10)) < float(loss_fn(fast1)) < float(loss_fn(core.trainable_params(model)))
    assert all(p.grad is None for p in model.parameters())


def test_meta_backward_accumulates_scaled_gradients():
    model, ep = tiny_net(), random_episode()
    learner = create_learner("maml", inner_steps=2)
    once = meta_grads(learner, model, ep)
    learner.meta_backward(model, ep, scale=0.5)  # on top of the gradient left by meta_grads
    for g, p in zip(once, learner.meta_parameters(model)):
        torch.testing.assert_close(p.grad, 1.5 * g)


def test_transfer_meta_backward_is_the_joint_supervised_gradient():
    model, ep = tiny_net(), random_episode()
    learner = create_learner("transfer")
    grads = meta_grads(learner, model, ep)
    loss = bce_dice_loss(model(torch.cat([ep.support_x, ep.query_x])), torch.cat([ep.support_y, ep.query_y]))
    for g, e in zip(grads, torch.autograd.grad(loss, list(model.parameters()))):
        torch.testing.assert_close(g, e)
    stats = learner.meta_backward(model, ep)
    assert set(stats) >= {"query_loss", "support_loss"} and all(isinstance(v, float) for v in stats.values())


def test_second_order_maml_equals_higher_on_the_unet():
    higher = pytest.importorskip("higher", reason="optional peer `higher` not installed (bash benchmarks/install_peers.sh)")
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1)
    ep = random_episode(shots=2, queries=2, size=32, dtype=torch.float32)
    steps, lr = 2, 0.1
    ours = meta_grads(create_learner("maml", inner_steps=steps, inner_lr=lr), model, ep)
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(bce_dice_loss(fmodel(ep.support_x), ep.support_y))
        bce_dice_loss(fmodel(ep.query_x), ep.query_y).backward()
    theirs = [p.grad for p in model.parameters() if p.requires_grad]
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    assert diff <= 1e-5, diff
