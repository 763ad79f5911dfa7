"""The shared U-Net's predictions do not depend on the other images in the batch (GroupNorm,
not transductive BatchNorm), neither at initialisation nor under adapted fast weights."""
from __future__ import annotations

import torch

from metaseg.meta import create_learner
from metaseg.models import create_model
from tests.meta_helpers import random_episode


def test_prediction_alone_equals_prediction_in_batch_also_after_adapt():
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1)
    ep = random_episode(shots=2, queries=4, size=32, dtype=torch.float32)
    learner = create_learner("maml", inner_steps=2)
    fast = learner.adapt(model, ep.support_x, ep.support_y)
    with torch.no_grad():
        for params in (None, fast):
            predict = (lambda x: model(x)) if params is None else (lambda x: learner.predict(model, params, x))
            batch = predict(ep.query_x)
            for i in range(ep.query_x.shape[0]):
                torch.testing.assert_close(predict(ep.query_x[i:i + 1]), batch[i:i + 1], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(p, fast[n]) for n, p in model.named_parameters())  # adapt really moved


def test_batchnorm_variant_would_fail_the_same_check():
    """Guard that the check above can fail: with norm='batch' in training mode predictions mix."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, norm="batch").train()
    ep = random_episode(shots=1, queries=4, size=32, dtype=torch.float32)
    with torch.no_grad():
        assert not torch.allclose(model(ep.query_x[:1]), model(ep.query_x)[:1], atol=1e-5)
