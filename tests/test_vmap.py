"""vmap_tasks: a meta-batch's inner loops run together under torch.func.vmap and give the
sequential loop's meta-gradient (fp32 on a small net: <= 1e-6; the U-Net in float64: to rounding)."""
import pytest
import torch

from metaseg.errors import MetasegError
from metaseg.meta import create_learner
from metaseg.models import create_model
from tests.meta_helpers import random_episode, tiny_net

CASES = [("maml", {}), ("fomaml", {}), ("imaml", {}), ("imaml", {"hvp": "jvp", "damping": 0.1, "cg_tol": 1e-3}),
         ("maml", {"meta_sgd": True}), ("maml", {"inner_optimizer": "adam"}), ("fomaml", {"meta_sgd": True, "meta_sgd_per": "tensor"})]


def _meta_grads(learner, model, episodes):
    params = list(learner.meta_parameters(model))
    for p in params:
        p.grad = None
    stats = learner.meta_backward_batch(model, episodes, scale=1.0 / len(episodes))
    return [p.grad.clone() for p in params], stats


def _compare(name, options, model, episodes):
    seq, seq_stats = _meta_grads(create_learner(name, inner_steps=3, **options), model, episodes)
    vm, vm_stats = _meta_grads(create_learner(name, inner_steps=3, vmap_tasks=True, **options), model, episodes)
    assert len(vm_stats) == len(episodes) and vm_stats[0].keys() == seq_stats[0].keys()
    for a, b in zip(seq_stats, vm_stats):
        assert all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])) for k in a), (a, b)
    return max(float((a - b).abs().max()) for a, b in zip(seq, vm)), max(float(a.abs().max()) for a in seq)


@pytest.mark.parametrize("name,options", CASES)
def test_vmap_meta_gradient_equals_the_sequential_loop_in_fp32(name, options):
    model = tiny_net(0, torch.float32)
    episodes = [random_episode(3, 2, 8, seed=s, dtype=torch.float32) for s in range(4)]
    diff, scale = _compare(name, options, model, episodes)
    assert diff <= 1e-6 and scale > 1e-3, (diff, scale)


@pytest.mark.parametrize("name,options", CASES[:3])
def test_vmap_meta_gradient_of_the_unet_equals_the_sequential_loop_to_rounding(name, options):
    """GroupNorm, the smp encoder/decoder and interpolation under vmap, in float64 (fp32 rounding of
    this small U-Net's second-order gradient is itself ~1e-3, so float64 is what shows equality)."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, encoder_depth=3, decoder_channels=[16, 8, 4]).double()
    episodes = [random_episode(2, 2, 32, seed=s, dtype=torch.float64) for s in range(3)]
    diff, scale = _compare(name, options, model, episodes)
    assert diff <= 1e-10 * scale, (diff, scale)


def test_vmap_refusals_are_one_line():
    with pytest.raises(MetasegError, match="learner.vmap_tasks: cannot be combined with checkpoint"):
        create_learner("maml", checkpoint=True, vmap_tasks=True)
    with pytest.raises(MetasegError, match="learner.vmap_tasks: needs inner_tol 0"):
        create_learner("imaml", inner_tol=1e-3, vmap_tasks=True)
    bn = create_model("unet", in_channels=1, encoder_depth=3, decoder_channels=[16, 8, 4], norm="batch").train()
    episodes = [random_episode(2, 2, 32, seed=s, dtype=torch.float32) for s in range(2)]
    with pytest.raises(MetasegError, match="learner.vmap_tasks: BatchNorm in train mode"):
        create_learner("maml", inner_steps=1, vmap_tasks=True).meta_backward_batch(bn, episodes)
    mixed = [random_episode(2, 2, 8, seed=0, dtype=torch.float32), random_episode(3, 2, 8, seed=1, dtype=torch.float32)]
    with pytest.raises(MetasegError, match="learner.vmap_tasks: the episodes of a meta-batch must share their shapes"):
        create_learner("fomaml", inner_steps=1, vmap_tasks=True).meta_backward_batch(tiny_net(0, torch.float32), mixed)
