"""SAM-Mix validation probes behind the hippocampus diagnosis (validation split only, never test).

    nice -n 10 python -m benchmarks.sam_mix_gate_probe zeroshot Hippocampus        # structure size; untrained base, whole / oracle box
    nice -n 10 python -m benchmarks.sam_mix_gate_probe trained Hippocampus 50:0 5:0  # N:seed -> gate rules, trained decoder + oracle box
    nice -n 10 python -m benchmarks.sam_mix_gate_probe unet Hippocampus 50:0 5:0     # the benchmark's U-Net, validation Dice

`zeroshot`: mask area and box size at 128 px, and the LiteMedSAM base (decoder LoRA at its zero init)
prompted with the whole image, the mask's own box (+ a margin) and the union box of the pool's masks.
`trained`: sam_mix as the benchmark trains it (CAM threshold 0.7); Dice on validation present images
(raw = no gate), the gate threshold each rule picks on the validation labels (balanced accuracy, or
`presence_min_recall` 0.8-1.0) with the Dice it leaves on present images, its FP rate on empty ones
and Dice over all validation images as metaseg.metrics scores them; then the trained decoder given
the mask's own box (what a perfect box would add). Printed, not saved: see docs/sam_mix.md.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import metaseg.training.sam_mix as tr
from benchmarks.sam_mix_data import CAPS, labelled_subset, split
from metaseg.metrics import dice_iou_per_image
from metaseg.models.cam import box_iou, choose_presence_threshold, mask_boxes
from metaseg.models.sam_mix import create_sam_mix


def _decode(model, emb: torch.Tensor, boxes: torch.Tensor, cam: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder logits at 128 px for given boxes (and the CAM's dense prompt when `cam` is given)."""
    parts = []
    with torch.no_grad():
        for i in range(0, len(emb), 16):
            if cam is None:
                sparse, dense = model.base.prompt_encoder(points=None, boxes=boxes[i:i + 16], masks=None)
            else:
                sparse, dense = model.prompt_embeddings(cam[i:i + 16], boxes[i:i + 16])[:2]
            parts.append(model.base.decode_prompted(emb[i:i + 16], sparse, dense))
    return F.interpolate(torch.cat(parts), (128, 128), mode="bilinear", align_corners=False)


def zeroshot(dataset: str) -> None:
    data = split(dataset, size=128, seed=0, caps=CAPS)
    for part in ("pool", "val"):
        m = data.masks[part]
        has = m.reshape(len(m), -1).any(1)
        area = m.reshape(len(m), -1).sum(1)[has]
        b = mask_boxes(m[has])
        print(f"{part}: {len(m)} images, {has.sum()} present; area px at 128 median/min/max {np.median(area):.0f}/{area.min()}/"
              f"{area.max()} (median {100 * np.median(area) / 128 ** 2:.1f}% of the image); box w/h median "
              f"{np.median(b[:, 2] - b[:, 0] + 1):.0f}/{np.median(b[:, 3] - b[:, 1] + 1):.0f}", flush=True)
    m = data.masks["val"]
    has = m.reshape(len(m), -1).any(1)
    model = create_sam_mix(prompts="box", image_size=128, seed=0).eval()
    emb = tr.embed_all(model, data.images["val"][has]).float()
    truth = torch.from_numpy(m[has]).float()[:, None]

    def dice(boxes: np.ndarray) -> float:
        return 100 * float(dice_iou_per_image(_decode(model, emb, torch.as_tensor(boxes).float()), truth)[0].mean())

    own = mask_boxes(m[has]).astype(float)
    print(f"zero-shot whole box {dice(np.tile([0, 0, 127, 127.0], (len(own), 1))):.1f}; mask's own box {dice(own):.1f}", flush=True)
    for pad in (4, 8, 16):
        print(f"zero-shot own box + {pad} px {dice(np.clip(own + [-pad, -pad, pad, pad], 0, 127)):.1f}", flush=True)
    pm = data.masks["pool"]
    pb = mask_boxes(pm[pm.reshape(len(pm), -1).any(1)])
    prior = np.array([pb[:, 0].min(), pb[:, 1].min(), pb[:, 2].max(), pb[:, 3].max()], float)
    print(f"pool union box {prior}: zero-shot {dice(np.tile(prior, (len(own), 1))):.1f}", flush=True)


def trained(dataset: str, specs: list[str]) -> None:
    data = split(dataset, size=128, seed=0, caps=CAPS)
    vm, vp = data.masks["val"], data.present["val"]
    has = vm.reshape(len(vm), -1).any(1)
    truth = torch.from_numpy(vm).float()[:, None]
    for spec in specs:
        n, seed = map(int, spec.split(":"))
        rows = labelled_subset(data.present["pool"], n, seed)
        start = time.time()
        model = create_sam_mix(prompts="box+dense", image_size=128, seed=seed, cam_threshold=0.7)
        tr.fit_sam_mix(model, data.images["pool"], data.present["pool"], data.images["pool"][rows], data.masks["pool"][rows],
                       tr.SamMixBudget(steps=80, warmup=150, auto_cam_threshold=False), seed=seed,
                       val_images=data.images["val"], val_present=vp)
        out = tr.predict_sam_mix(model, data.images["val"])
        raw = dice_iou_per_image(torch.from_numpy(out["raw"]).float(), truth)[0].numpy()
        print(f"{dataset} N={n} seed {seed} ({time.time() - start:.0f}s) raw present {100 * raw[has].mean():.1f} box IoU "
              f"{box_iou(out['boxes'][has], mask_boxes(vm[has])).mean():.2f}", flush=True)
        fired = (out["raw"].reshape(len(vm), -1) > 0).any(1)
        for rule in (None, 0.8, 0.9, 0.95, 1.0):
            thr = choose_presence_threshold(out["presence"], vp, rule)
            keep = out["presence"] >= thr
            d_all = np.where(has, raw * keep, 1.0 - (keep & fired)).mean()
            print(f"  gate {rule or 'balanced'}: thr {thr:.3f} Dice present {100 * (raw * keep)[has].mean():.1f} "
                  f"FP {(keep & fired)[~has].mean():.2f} Dice(all) {100 * d_all:.1f}", flush=True)
        emb = tr.embed_all(model, data.images["val"][has]).float()
        with torch.no_grad():
            cam = model.classify(emb)[1]
        own = _decode(model, emb, torch.as_tensor(mask_boxes(vm[has])).float(), cam)
        print(f"  trained decoder + the mask's own box: {100 * float(dice_iou_per_image(own, truth[torch.from_numpy(has)])[0].mean()):.1f}", flush=True)


def unet(dataset: str, specs: list[str]) -> None:
    """The benchmark's U-Net baseline (same N masks, steps) scored on the validation present images."""
    from types import SimpleNamespace

    from benchmarks.sam_mix import _train_unet

    data = split(dataset, size=128, seed=0, caps=CAPS)
    vm = data.masks["val"]
    has = vm.reshape(len(vm), -1).any(1)
    for spec in specs:
        n, seed = map(int, spec.split(":"))
        start = time.time()
        rows = labelled_subset(data.present["pool"], n, seed)
        out = _train_unet(data, rows, SimpleNamespace(seed=seed, unet_steps=200), [data.images["val"]])[0]
        dice = dice_iou_per_image(torch.from_numpy(out["logits"]).float(), torch.from_numpy(vm).float()[:, None])[0].numpy()
        print(f"{dataset} N={n} seed {seed} U-Net validation present Dice {100 * dice[has].mean():.1f} ({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "zeroshot":
        zeroshot(sys.argv[2])
    elif sys.argv[1] == "unet":
        unet(sys.argv[2], sys.argv[3:])
    else:
        trained(sys.argv[2], sys.argv[3:])
