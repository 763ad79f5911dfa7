"""Why SAM-Mix did (not) beat its baselines: the quality of the CAM box and of the presence gate,
classifier only (no segmenter: seconds, on the cached embeddings), one fix at a time.

    nice -n 10 python -m benchmarks.sam_mix_cam            # -> results/sam_mix_cam.{json,md}

For each dataset and N, the presence head is trained as benchmarks/sam_mix.py trains it (warm-up
steps on the pool's image-level labels, seeded) under cumulative variants: the original recipe
(uniform batches, labels only, CAM threshold 0.5, box over every pixel above it), then balanced
batches, the largest component's box, the threshold chosen on the N training masks, and the CAM
mask loss on those N masks (which needs the LSE pooling, added one step before it). Scored on test images: IoU of the CAM box with the mask's box (images
with the structure), and presence balanced accuracy at 0.5 and at the threshold chosen on the
validation split's labels. Validation masks are never used.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.sam_mix_data import BENCHMARK, CAPS, labelled_subset, split

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # cumulative: each adds one fix to the previous
    "original": dict(balance=False, component="all", auto=False, pooling="mean", mask_weight=0.0),
    "+balanced batches": dict(balance=True, component="all", auto=False, pooling="mean", mask_weight=0.0),
    "+largest component": dict(balance=True, component="largest", auto=False, pooling="mean", mask_weight=0.0),
    "+threshold from N masks": dict(balance=True, component="largest", auto=True, pooling="mean", mask_weight=0.0),
    "+LSE pooling": dict(balance=True, component="largest", auto=True, pooling="lse", mask_weight=0.0),
    "+CAM mask loss (N masks)": dict(balance=True, component="largest", auto=True, pooling="lse", mask_weight=1.0),
}


def balanced_accuracy(prob: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    call = prob >= threshold
    return float((call[truth].mean() + (~call[~truth]).mean()) / 2)


def evaluate(dataset: str, data, n: int, name: str, spec: dict, args) -> dict:
    from metaseg.models.cam import box_iou, cam_boxes, choose_presence_threshold, mask_boxes
    from metaseg.models.sam_mix import create_sam_mix
    from metaseg.training.sam_mix import SamMixBudget, embed_all, fit_sam_mix

    model = create_sam_mix(prompts="box+dense", image_size=args.size, seed=args.seed, box_component=spec["component"],
                            pooling=spec["pooling"])
    rows = labelled_subset(data.present["pool"], n, args.seed)
    budget = SamMixBudget(steps=0, warmup=args.warmup, balance=spec["balance"], cam_mask_weight=spec["mask_weight"],
                          auto_cam_threshold=spec["auto"])
    pool = data.images["pool"]
    fit_sam_mix(model, pool, data.present["pool"], pool[rows], data.masks["pool"][rows], budget, seed=args.seed)
    with torch.no_grad():
        out = {}
        for part in ("val", "test"):
            logits, cam = model.classify(embed_all(model, data.images[part]).float())
            out[part] = (torch.sigmoid(logits).numpy(), cam)
    truth = mask_boxes(data.masks["test"])
    has = ~np.isnan(truth[:, 0])
    boxes = cam_boxes(out["test"][1][torch.from_numpy(has)], model.cam_threshold, args.size, spec["component"]).numpy()
    iou = box_iou(boxes, truth[has])
    p_test, present_test = out["test"][0], data.present["test"].astype(bool)
    chosen = choose_presence_threshold(out["val"][0], data.present["val"])
    return {"dataset": dataset, "n_labelled": n, "variant": name, "seed": args.seed, "cam_threshold": model.cam_threshold,
            "box_iou_mean": float(iou.mean()), "box_iou_over_0.5": float((iou > 0.5).mean()),
            "box_area_fraction": float(np.mean((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)) / args.size ** 2),
            "presence_bal_acc_0.5": balanced_accuracy(p_test, present_test, 0.5),
            "presence_threshold_val": chosen, "presence_bal_acc_val_threshold": balanced_accuracy(p_test, present_test, chosen),
            "test_present": int(present_test.sum()), "test_absent": int((~present_test).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(BENCHMARK), choices=list(BENCHMARK))
    parser.add_argument("--n", nargs="+", type=int, default=[5, 50])
    parser.add_argument("--seed", type=int, default=0, help="training seed (which N images keep their masks, init)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fixed split (as benchmarks.sam_mix)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=150)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        data = split(dataset, size=args.size, seed=args.split_seed, caps=CAPS)
        for n in args.n:
            for name, spec in VARIANTS.items():
                rows.append(evaluate(dataset, data, n, name, spec, args))
                r = rows[-1]
                print(f"{dataset} N={n} {name}: box IoU {r['box_iou_mean']:.2f} (thr {r['cam_threshold']}), presence bal.acc "
                      f"{r['presence_bal_acc_0.5']:.2f} @0.5 / {r['presence_bal_acc_val_threshold']:.2f} @val", flush=True)
    command = "nice -n 10 python -m benchmarks.sam_mix_cam " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    (RESULTS / "sam_mix_cam.json").write_text(json.dumps({"command": command, "caps": CAPS, "rows": rows}, indent=1))
    md = ["# SAM-Mix CAM and presence diagnosis (generated by benchmarks/sam_mix_cam.py)", "", f"Command: `{command}`; "
          f"{args.size} px, CPU, classifier only ({args.warmup} steps), split caps {CAPS}. Box IoU: CAM box vs the mask's "
          "bounding box on test images with the structure. Presence: balanced accuracy on all test images at 0.5 and at the "
          "threshold chosen on the validation split's image-level labels.", "",
          "| dataset | N | variant (cumulative) | CAM thr. | box IoU | IoU > 0.5 | box area / image | presence bal. acc. @0.5 | val thr. | bal. acc. @val thr. |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['dataset']} | {r['n_labelled']} | {r['variant']} | {r['cam_threshold']:.2f} | {r['box_iou_mean']:.2f} | "
                  f"{r['box_iou_over_0.5']:.2f} | {r['box_area_fraction']:.2f} | {r['presence_bal_acc_0.5']:.2f} | "
                  f"{r['presence_threshold_val']:.2f} | {r['presence_bal_acc_val_threshold']:.2f} |")
    (RESULTS / "sam_mix_cam.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
