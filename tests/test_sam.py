"""SAM model kind + LoRA adapters + sam_adapter learner alias (issue 6).

Everything runs on CPU with the tiny configuration, except the vit_b checkpoint test, which
builds segment_anything's own vit_b once (no weights are downloaded: random init, saved locally).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from metaseg.errors import MetasegError
from metaseg.models import create_model
from metaseg.models.lora import LoRALinear, inject_lora
from metaseg.models.sam import VARIANTS, SamSegmenter, count_parameters

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are op-overhead bound: one intra-op thread is faster and immune to a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kw) -> SamSegmenter:
    return create_model(kind="sam", variant="tiny", **kw)


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_" not in k}


# ----------------------------------------------------------------------------- official checkpoints
@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state dict saved from segment_anything's own vit_b builder (random init, ~375 MB)."""
    from segment_anything import build_sam_vit_b

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        reference = build_sam_vit_b(checkpoint=None).state_dict()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_test.pth"
    torch.save(reference, path)
    return path, reference


def test_vit_b_state_dict_from_segment_anything_loads_with_no_missing_or_unexpected_keys(vit_b_checkpoint):
    path, reference = vit_b_checkpoint
    model = create_model(kind="sam", variant="vit_b", checkpoint=str(path))
    loaded = base_state(model)
    assert set(loaded) == set(reference), (sorted(set(reference) - set(loaded))[:3], sorted(set(loaded) - set(reference))[:3])
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    extra = set(model.state_dict()) - set(reference)
    assert extra and all(".lora_" in k for k in extra)
    fingerprint = model.base_fingerprint()
    assert fingerprint == {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    trainable, total = count_parameters(model)
    print(f"vit_b trainable {trainable:,} / {total:,} = {trainable / total:.2%}")
    assert trainable / total < 0.05
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n or n.startswith("mask_decoder.") for n in trainable_names)


def test_vit_b_with_proj_adapters_stays_under_five_percent(vit_b_checkpoint):
    path, _ = vit_b_checkpoint
    model = create_model(kind="sam", variant="vit_b", checkpoint=str(path), lora_targets=["qkv", "proj"], image_size=256)
    trainable, total = count_parameters(model)
    print(f"vit_b (qkv+proj, 256 px) trainable {trainable:,} / {total:,} = {trainable / total:.2%}")
    assert trainable / total < 0.05
    assert sum(".proj.lora_" in n for n, _ in model.named_parameters()) == 2 * 12


def test_checkpoint_at_another_input_size_interpolates_position_tables(tmp_path):
    source = tiny()
    path = tmp_path / "tiny_base.pth"
    torch.save(base_state(source), path)
    model = tiny(checkpoint=str(path), image_size=128)
    assert model.image_encoder.pos_embed.shape[1:3] == (16, 16)
    assert model(torch.rand(1, 3, 40, 40)).shape == (1, 1, 40, 40)


def test_bad_checkpoints_are_one_line_errors_naming_the_file(tmp_path, vit_b_checkpoint):
    with pytest.raises(MetasegError, match="no such file .*absent.pth"):
        tiny(checkpoint=str(tmp_path / "absent.pth"))

    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(MetasegError, match="garbage.pth"):
        tiny(checkpoint=str(garbage))

    state = base_state(tiny())
    state.pop("mask_decoder.iou_token.weight")
    state["foo.bar"] = torch.zeros(1)
    partial_file = tmp_path / "partial.pth"
    torch.save(state, partial_file)
    with pytest.raises(MetasegError, match=r"partial.pth is not a SAM tiny checkpoint .*iou_token.*foo.bar"):
        tiny(checkpoint=str(partial_file))

    path, _ = vit_b_checkpoint  # a vit_b checkpoint for vit_l: shapes differ
    with pytest.raises(MetasegError, match=f"{path.name} does not fit SAM vit_l") as info:
        create_model(kind="sam", variant="vit_l", checkpoint=str(path))
    assert "\n" not in str(info.value)


def test_medsam_style_wrapped_checkpoint_loads(tmp_path):
    """MedSAM training checkpoints nest the weights under 'model' next to optimiser state."""
    source = tiny(seed=5)
    path = tmp_path / "medsam_tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in base_state(source).items()}, "epoch": 3}, path)
    model = tiny(checkpoint=str(path))
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model(x), source(x))


# ----------------------------------------------------------------------------- LoRA
def test_lora_linear_starts_equal_to_base_and_trains_only_adapters():
    base = nn.Linear(12, 36)
    layer = LoRALinear.wrap(base, rank=4, alpha=8.0)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), base(x))
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(MetasegError, match="lora_targets"):
        inject_lora(nn.Sequential(nn.Linear(2, 2)), ["qkv"])


def test_lora_model_initially_equals_base_model():
    model = tiny(lora_targets=["qkv", "proj"])
    plain = SamSegmenter("tiny", VARIANTS["tiny"], 64, "none", 3)
    plain.load_state_dict(base_state(model), strict=True)
    x = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(model(x), plain(x))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.1)
    assert not torch.allclose(model(x), plain(x), atol=1e-4)


# ----------------------------------------------------------------------------- model behaviour
def test_trainable_parameters_are_adapters_and_used_decoder_parts_and_all_receive_gradients():
    model = tiny(prompt="box")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_A" in n for n in trainable) and any(n.startswith("mask_decoder.transformer") for n in trainable)
    assert not any(n.startswith(("prompt_encoder.", "mask_decoder.iou_prediction_head")) for n in trainable)
    assert all(n.startswith("mask_decoder.") or n.startswith("image_encoder.") and ".lora_" in n for n in trainable)
    x, y = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    unused = [n for n, p in trainable.items() if p.grad is None]
    assert not unused, unused  # torch.autograd.grad in the learners would fail on unused tensors


@pytest.mark.parametrize("prompt", ["none", "box"])
def test_prediction_does_not_depend_on_other_images_in_the_batch(prompt):
    model = tiny(prompt=prompt).eval()
    with torch.no_grad():  # make the adapters non-trivial
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.1)
    x = torch.rand(4, 3, 64, 64)
    batched = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    swapped = model(torch.cat([x[:1], torch.rand(3, 3, 64, 64)]))
    torch.testing.assert_close(swapped[:1], batched[:1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("with_boxes", [False, True])
def test_batched_decoder_equals_segment_anythings_mask_decoder_image_by_image(with_boxes):
    model = tiny()
    with torch.no_grad():
        for p in model.mask_decoder.parameters():  # SAM zero-inits nothing here, but be explicit
            p.add_(0.01 * torch.randn_like(p))
        embeddings = torch.randn(3, 32, 8, 8)
        boxes = torch.tensor([[4.0, 8.0, 40.0, 30.0], [0.0, 0.0, 64.0, 64.0], [20.0, 10.0, 30.0, 60.0]]) if with_boxes else None
        batched = model.decode(embeddings, boxes)
        for i in range(3):
            sparse, dense = model.prompt_encoder(points=None, boxes=None if boxes is None else boxes[i : i + 1], masks=None)
            reference, _ = model.mask_decoder(
                image_embeddings=embeddings[i : i + 1], image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            )
            torch.testing.assert_close(batched[i : i + 1], reference, atol=1e-5, rtol=1e-4)


def test_output_is_logits_at_input_resolution_and_grayscale_is_repeated():
    model = tiny()
    assert model(torch.rand(2, 3, 48, 80)).shape == (2, 1, 48, 80)
    gray = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(model(gray), model(gray.repeat(1, 3, 1, 1)))
    with pytest.raises(MetasegError, match="channels"):
        model(torch.rand(1, 2, 64, 64))


def test_box_prompt_comes_from_the_coarse_prediction():
    model = tiny(prompt="box")
    low = torch.full((2, 1, 16, 16), -5.0)
    low[0, 0, 2:5, 3:9] = 5.0  # foreground rows 2..4, cols 3..8 at stride 4
    boxes = model.boxes_from_logits(low, 64, 64)
    assert boxes.tolist() == [[12.0, 8.0, 36.0, 20.0], [0.0, 0.0, 64.0, 64.0]]  # second: empty -> whole image
    x = torch.rand(2, 3, 64, 64)
    assert not torch.allclose(model(x), tiny(prompt="none")(x))


def test_bad_options_are_one_line_errors():
    for kwargs, option in [
        ({"variant": "vit_x"}, "model.variant"),
        ({"prompt": "points"}, "model.prompt"),
        ({"lora_targets": ["mlp"]}, "model.lora_targets"),
        ({"image_size": 70}, "model.image_size"),
        ({"in_channels": 4}, "model.in_channels"),
        ({"lora_rank": 0}, "model.lora_rank"),
    ]:
        with pytest.raises(MetasegError, match=option):
            create_model(kind="sam", **{"variant": "tiny", **kwargs})


# ----------------------------------------------------------------------------- trainable state / fingerprint
def test_trainable_state_round_trips_onto_the_same_base_and_refuses_another():
    trained = tiny(seed=0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    state, base = trained.trainable_state_dict(), trained.base_fingerprint()
    assert set(state) == {n for n, p in trained.named_parameters() if p.requires_grad}
    assert base["name"] == "random-init:tiny:0" and len(base["sha256"]) == 64

    fresh = tiny(seed=0)
    assert fresh.base_fingerprint() == base
    fresh.load_trainable_state_dict(state, base=base)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(fresh(x), trained(x))

    other = tiny(seed=1)
    with pytest.raises(MetasegError, match=r"trained on base random-init:tiny:0 \(sha256 [0-9a-f]{12}\), refusing to load onto random-init:tiny:1"):
        other.load_trainable_state_dict(state, base=base)
    with pytest.raises(MetasegError, match="lora_rank"):
        tiny(seed=0, lora_rank=4).load_trainable_state_dict(state, base=base)


def test_checkpoint_fingerprint_is_the_file_hash(tmp_path):
    path = tmp_path / "medsam_tiny.pth"
    torch.save(base_state(tiny(seed=3)), path)
    model = tiny(checkpoint=str(path))
    assert model.base_fingerprint() == {"name": "medsam_tiny.pth", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with pytest.raises(MetasegError, match="refusing to load onto medsam_tiny.pth"):
        model.check_base_fingerprint(tiny(seed=3).base_fingerprint() | {"sha256": "0" * 64})


# ----------------------------------------------------------------------------- meta-learning
@pytest.fixture(scope="module")
def episode():
    from metaseg.data.episodes import EpisodeSampler
    from metaseg.data.synthetic import make_synthetic_task

    return EpisodeSampler([make_synthetic_task("bright_ellipse", n=16, size=64, seed=0)], shots=4, queries=4, seed=0).sample(0)


def sam_learner(algorithm: str, **options):
    from metaseg.meta import create_learner

    return create_learner("sam_adapter", algorithm=algorithm, inner_optimizer="adam", inner_lr=0.01, **options)


@pytest.mark.parametrize("algorithm, options", [
    ("maml", {"inner_steps": 2}),
    ("fomaml", {"inner_steps": 2}),
    # Adam inner steps move every parameter by ~inner_lr, so iMAML's proximal term lam/2 |phi - theta|^2
    # over ~36 k parameters swamps the support loss unless lam is small (lam=2 barely adapts).
    ("imaml", {"inner_steps": 5, "cg_steps": 3, "lam": 0.3}),
])
def test_tiny_sam_meta_trains_adapters_and_decoder_only(episode, algorithm, options):
    from metaseg.metrics import dice_iou_per_image

    model = tiny()
    learner = sam_learner(algorithm, **options)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    meta = list(learner.meta_parameters(model))
    assert {id(p) for p in meta} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(meta, lr=3e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        losses.append(learner.meta_backward(model, episode)["query_loss"])
        optimizer.step()
    print(algorithm, "query loss", [round(v, 4) for v in losses])
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fast = learner.adapt(model, episode.support_x, episode.support_y, steps=15)
    with torch.no_grad():
        before = dice_iou_per_image(learner.predict(model, theta, episode.support_x), episode.support_y)[0].mean()
        after = dice_iou_per_image(learner.predict(model, fast, episode.support_x), episode.support_y)[0].mean()
    print(algorithm, f"support Dice before/after adapt {float(before):.3f} -> {float(after):.3f}")
    assert after > before + 0.2


def test_sam_adapter_alias_checks_algorithm_and_model(episode):
    with pytest.raises(MetasegError, match="learner.algorithm"):
        sam_learner("transfer")
    learner = sam_learner("fomaml", inner_steps=1)
    unet = create_model(kind="unet")
    with pytest.raises(MetasegError, match="needs model.kind=sam"):
        learner.meta_backward(unet, episode)
    with pytest.raises(MetasegError, match="needs model.kind=sam"):
        learner.adapt(unet, episode.support_x, episode.support_y)


def test_sam_adapter_setup_creates_the_inner_meta_sgd_lrs_with_the_module():
    """MetaSegModule calls learner.setup(model) before any optimiser exists: the Meta-SGD lrs of
    sam_adapter must be there (in the state dict) then, not appear in configure_optimizers."""
    from metaseg.training.module import MetaSegModule

    module = MetaSegModule(model={"kind": "sam", "variant": "tiny"},
                           learner={"name": "sam_adapter", "algorithm": "maml", "meta_sgd": True, "meta_sgd_per": "tensor"})
    lrs = [k for k in module.state_dict() if k.startswith("learner.inner.lrs.")]
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert len(lrs) == len(trainable) > 0
    assert {id(p) for p in module.learner.inner.lrs.parameters()} <= {id(p) for p in module.learner.meta_parameters(module.model)}


# ----------------------------------------------------------------------------- meta-train command
def test_meta_train_demo_config_saves_trainable_only_checkpoint_that_refuses_another_base(tmp_path, monkeypatch):
    if not (REPO / "metaseg" / "commands" / "train.py").is_file():
        pytest.skip("metaseg meta-train (metaseg/commands/train.py, helper 'train') is not there yet")
    from metaseg.checkpoints import load_module
    from metaseg.commands.train import run_argv

    monkeypatch.chdir(tmp_path)
    code = run_argv([
        "--config", str(REPO / "experiments" / "sam_adapter_demo.yaml"), "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2", "--data.val_episodes", "1", "--data.test_episodes", "1",
        "--data.synthetic_n", "12", "--model.learner.inner_steps", "2", "--trainer.logger", "false",
    ])
    assert code == 0
    ckpt_path = next((tmp_path / "runs").rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model_keys = {k for k in ckpt["state_dict"] if k.startswith("model.")}
    module = load_module(ckpt_path)
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert model_keys == trainable  # the frozen base is not in the checkpoint
    assert ckpt["metaseg"]["base_fingerprint"] == module.model.base_fingerprint()

    ckpt["hyper_parameters"]["model"]["seed"] = 1  # same config, another random base
    other = tmp_path / "other_base.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(MetasegError, match=r"trained on .*base"):
        load_module(other)
