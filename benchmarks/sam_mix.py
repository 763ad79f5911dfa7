"""SAM-Mix benchmark: BUSI and hippocampus slices, N masks + image-level labels of the whole pool.

    nice -n 10 python -m benchmarks.sam_mix                 # resumable: finished runs are kept
    nice -n 10 python -m benchmarks.sam_mix --seed 1        # another training seed, same split and test images
    nice -n 10 python -m benchmarks.sam_mix --cross-domain --n 50 --methods sam_mix unet_scratch medsam_whole_box
    python -m benchmarks.sam_mix --report-only              # rebuild sam_mix.{json,md} (every saved run) and the figure

Every method sees the same N masked pool images (seeded, drawn among images with the structure)
and is scored on the same test images (fixed content-hash split, benchmarks/sam_mix_data.py).
Methods: sam_mix (CAM box + dense prompt, multitask), sam_mix_nogate (same model, classifier gate
off), ablation_cam_box (CAM box only, classifier trained first and frozen: no multitask),
medsam_whole_box (the base + decoder LoRA fine-tuned with the whole-image box, no classifier),
unet_scratch (smp U-Net from random init). Dice is over test images WITH the structure; test
images without it are reported as a false-positive rate (any predicted pixel) and scored as
metaseg.metrics does (Dice 1 for an empty prediction, else 0) in dice_all.

Seeds: --seed changes the training seed only (which N images keep their masks, initialisation,
batches); the split (--split-seed, default 0) and so the test images stay fixed, and the report
pools every saved run: per-image Dice averaged over seeds, paired differences on the same images.
Cross-domain (--cross-domain): trained on a dataset of CROSS_DOMAIN (its pool, N masks) and tested
without retraining on its partner's test split, plus its own test split for reference.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._rows import write_atomic
from benchmarks.sam_mix_data import BENCHMARK, CAPS, IN_DOMAIN, labelled_subset, split
from metaseg.losses import bce_dice_loss
from metaseg.metrics import dice_iou_per_image, mean_ci95, paired_ci95
from metaseg.models.sam_mix import CAM_THRESHOLD  # 0.7, chosen on validation masks (docs/sam_mix.md)

DEFAULT_RESULTS = Path(__file__).parent / "results"
RESULTS = DEFAULT_RESULTS  # set by --out
METHODS = ("sam_mix", "ablation_cam_box", "medsam_whole_box", "unet_scratch")
BASELINES = ("ablation_cam_box", "medsam_whole_box", "unet_scratch")
TARGET_GAIN = {5: 10.0, 50: 5.0}  # points of Dice over the best baseline (issue 11)
# train -> test without retraining, same lesion. Kvasir-SEG has no image without a polyp, so its
# image-level labels are all "present": the presence classifier learns no gate (threshold 0) and
# its CAM is shaped by the N masks (cam_mask_weight) and the focal loss on present images only.
CROSS_DOMAIN = {"Kvasir-SEG": "CVC-ClinicDB"}
FIGURE_SEED = 0  # the CAM -> box -> mask figure is always this training seed's (not the last one run)


PRESENCE_MIN_RECALL: float | None = None  # None = "balanced" (see --presence-min-recall)


def _cam_threshold(text: str) -> float | str:
    """--cam-threshold: 'auto' or a number strictly between 0 and 1 (argparse turns the error into one line)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 1), got {text!r}")
    return value


def _min_recall(text: str) -> float | None:
    """--presence-min-recall: 'balanced' (None) or a share in (0, 1]."""
    if text == "balanced":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or a number in (0, 1], got {text!r}")
    return value


def _train_sam(method: str, data, rows: np.ndarray, args, tests: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    from metaseg.models.sam_mix import create_sam_mix
    from metaseg.training.sam_mix import SamMixBudget, fit_sam_mix, predict_sam_mix

    prompts = {"sam_mix": "box+dense", "ablation_cam_box": "box", "medsam_whole_box": "whole"}[method]
    auto = args.cam_threshold == "auto"  # the old rule: the threshold whose boxes best fit the N training masks' boxes
    model = create_sam_mix(prompts=prompts, image_size=args.size, seed=args.seed, refine=args.refine,
                           cam_threshold=0.5 if auto else float(args.cam_threshold))
    # no image without the structure (Kvasir-SEG, ISIC-2017): nothing to gate with, threshold 0
    one_class = len(np.unique(data.present["pool"])) < 2
    labels = data.targets("pool")  # ISIC-2017: melanoma vs not (its CAM is the prompt source); else = present
    budget = SamMixBudget(steps=args.steps, warmup=args.warmup, multitask=method == "sam_mix",
                          classifier=method != "medsam_whole_box", absent_labels=len(np.unique(labels)) > 1,
                          auto_cam_threshold=auto, presence_min_recall=args.presence_min_recall)
    pool = data.images["pool"]
    val = {} if one_class else {"val_images": data.images["val"], "val_present": data.present["val"]}
    if one_class:
        model.presence_threshold = 0.0
    fit_sam_mix(model, pool if budget.classifier else None, labels if budget.classifier else None,
                pool[rows], data.masks["pool"][rows], budget, seed=args.seed, **val)  # val labels: the presence threshold
    outs = [predict_sam_mix(model, images) for images in tests]
    for out in outs:
        out["fit_info"] = dict(model.fit_info, presence_threshold=model.presence_threshold, cam_threshold=model.cam_threshold)
    return outs


def _train_unet(data, rows: np.ndarray, args, tests: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    from metaseg.models import create_model

    torch.manual_seed(args.seed)
    with torch.enable_grad():
        net = create_model("unet", in_channels=data.images["pool"].shape[1])
    x = torch.from_numpy(data.images["pool"][rows]).float() / 255
    y = torch.from_numpy(data.masks["pool"][rows]).float()[:, None]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    net.train()
    for _ in range(args.unet_steps):
        batch = torch.randperm(len(x), generator=gen)[:8]
        opt.zero_grad()
        bce_dice_loss(net(x[batch]), y[batch]).backward()
        opt.step()
    net.eval()
    outs = []
    for images in tests:
        test = torch.from_numpy(images).float() / 255
        with torch.no_grad():
            outs.append({"logits": torch.cat([net(test[i:i + 16]) for i in range(0, len(test), 16)]).numpy()})
    return outs


def score(logits: np.ndarray, masks: np.ndarray) -> dict[str, list[float]]:
    """Per-image Dice on images with the structure; false positives on images without it."""
    dice, _ = dice_iou_per_image(torch.from_numpy(logits).float(), torch.from_numpy(masks).float()[:, None])
    has = masks.reshape(len(masks), -1).any(1)
    fired = (logits.reshape(len(logits), -1) > 0).any(1)
    return {"dice_present": dice[torch.from_numpy(has)].tolist(), "dice_all": dice.tolist(),
            "false_positive": fired[~has].astype(float).tolist()}


def run_path(dataset: str, n: int, method: str, seed: int, test_on: str | None = None) -> Path:
    stem = dataset if test_on is None else f"{dataset}_to_{test_on}"
    return RESULTS / "sam_mix_runs" / f"{stem}_N{n}_{method}_seed{seed}.json"


def run_one(dataset: str, data, n: int, method: str, args, cross=None) -> list[dict]:
    """Train + score one method (two rows for sam_mix: gated and not); cached in results/sam_mix_runs/.
    With `cross` (the Split of another dataset) the same trained model is also scored, without
    retraining, on that dataset's test split (rows with cross_domain True)."""
    path = run_path(dataset, n, method, args.seed, cross.name if cross is not None else None)
    if path.is_file() and not args.rerun:
        return json.loads(path.read_text())
    rows = labelled_subset(data.present["pool"], n, args.seed)
    tests = [data] + ([cross] if cross is not None else [])
    start = time.perf_counter()
    train = _train_unet if method == "unet_scratch" else lambda *a: _train_sam(method, *a)
    outs = train(data, rows, args, [t.images["test"] for t in tests])
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for test, out in zip(tests, outs):
        extra = {} if cross is None else {"train_dataset": dataset, "cross_domain": test is cross}
        records += _records(test, len(data.ids["pool"]), n, method, args, out, seconds, extra,
                            path if test is data and cross is None else None)
    path.write_text(json.dumps(records))
    return records


def _records(data, n_pool: int, n: int, method: str, args, out: dict, seconds: float, extra: dict,
             npz: Path | None) -> list[dict]:
    """The run's rows on one test set (`data`: the Split whose test part was scored)."""
    # the whole-box baseline has no classifier: its (untrained) head must not gate its masks
    variants = {method: out["raw"] if method == "medsam_whole_box" else out["logits"]}
    if method == "sam_mix" and out["fit_info"]["presence_threshold"] > 0:  # threshold 0: no gate, same masks
        variants["sam_mix_nogate"] = out["raw"]
    if method == "sam_mix" and npz is not None:
        np.savez_compressed(npz.with_suffix(".npz"), cam=out["cam"], boxes=out["boxes"], logits=out["logits"],
                            presence=out["presence"])
    records = []
    for name, logits in variants.items():
        rec = {"method": name, "dataset": data.name, "n_labelled": n, "seed": args.seed, "seconds": round(seconds, 1),
               "budget": {"size": args.size, "steps": args.steps, "warmup": args.warmup, "unet_steps": args.unet_steps,
                          "split_seed": args.split_seed, "refine": args.refine,
                          "cam_threshold": args.cam_threshold, "presence_min_recall": args.presence_min_recall},
               "n_pool_labels": n_pool, "n_test": len(data.ids["test"]), "test_ids": data.ids["test"],
               **extra, **score(logits, data.masks["test"])}
        if "presence" in out and method != "medsam_whole_box":
            from metaseg.models.cam import box_iou, mask_boxes

            truth = data.masks["test"].reshape(len(logits), -1).any(1)
            call = out["presence"] >= out["fit_info"]["presence_threshold"]
            rec["presence_accuracy"] = float((call == truth).mean())
            if truth.any() and not truth.all():
                rec["presence_balanced_accuracy"] = float((call[truth].mean() + (~call[~truth]).mean()) / 2)
            rec["cam_box_iou"] = box_iou(out["boxes"][truth], mask_boxes(data.masks["test"][truth])).tolist()
            if data.labels is not None:  # the classifier learnt another label (ISIC: melanoma): how well
                rec["label_auc"] = rank_auc(out["presence"], data.labels["test"])
            rec["fit_info"] = out["fit_info"]
        records.append(rec)
    return records


def rank_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of `score` for the binary `label` (Mann-Whitney U / n1 n0, ties averaged); NaN for one class."""
    from scipy.stats import rankdata

    label = np.asarray(label).astype(bool)
    if label.all() or not label.any():
        return float("nan")
    ranks = rankdata(score)
    n1, n0 = int(label.sum()), int((~label).sum())
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def summary_row(rec: dict) -> dict:
    dm, dci = mean_ci95(rec["dice_present"])
    am, aci = mean_ci95(rec["dice_all"])
    fp = rec["false_positive"]
    row = {k: rec[k] for k in ("method", "dataset", "n_labelled", "seed", "n_pool_labels", "n_test", "seconds")}
    row.update(train_dataset=rec.get("train_dataset", rec["dataset"]), cross_domain=bool(rec.get("cross_domain", False)))
    row.update(dice_mean=100 * dm, dice_ci95=100 * dci, n_present=len(rec["dice_present"]),
               dice_all=100 * am, dice_all_ci95=100 * aci, n_empty=len(fp),
               false_positive_rate=float(np.mean(fp)) if fp else float("nan"))
    for key in ("presence_accuracy", "presence_balanced_accuracy", "label_auc"):
        if key in rec:
            row[key] = rec[key]
    if "cam_box_iou" in rec:
        row["cam_box_iou"] = float(np.mean(rec["cam_box_iou"]))
    if "fit_info" in rec:
        row.update({k: rec["fit_info"][k] for k in ("presence_threshold", "cam_threshold") if k in rec["fit_info"]})
    return row


def load_runs(results: Path) -> list[dict]:
    """Every saved run record (all seeds, in-domain and cross-domain)."""
    return [rec for path in sorted((results / "sam_mix_runs").glob("*.json")) for rec in json.loads(path.read_text())]


def group_key(rec: dict) -> tuple[str, str, int]:
    """(trained on, tested on, N): the runs one comparison is made in."""
    return rec.get("train_dataset", rec["dataset"]), rec["dataset"], rec["n_labelled"]


def by_method_seed(records: list[dict]) -> dict[tuple, dict[str, dict[int, dict]]]:
    """group -> method -> seed -> record; the test images of a group must be the same for every run."""
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for rec in records:
        groups.setdefault(group_key(rec), {}).setdefault(rec["method"], {})[rec["seed"]] = rec
    for key, methods in groups.items():
        ids = {tuple(r["test_ids"]) for seeds in methods.values() for r in seeds.values()}
        if len(ids) > 1:
            raise SystemExit(f"sam_mix report: runs of {key} were scored on different test images (split seed?)")
    return groups


def seed_mean(runs: dict[int, dict], seeds: list[int], key: str = "dice_present") -> np.ndarray:
    """Per-image score averaged over `seeds` (same test images in every seed)."""
    return np.mean([runs[s][key] for s in seeds], axis=0)


def paired(a: dict[int, dict], b: dict[int, dict]) -> tuple[float, float, list[int], list[float]]:
    """Mean and 95% CI (points) of the per-image Dice difference a - b on the same test images, each
    image's difference averaged over the seeds both have; those seeds and each one's mean difference."""
    seeds = sorted(set(a) & set(b))
    mean, ci, _ = paired_ci95(seed_mean(a, seeds), seed_mean(b, seeds))
    per_seed = [100 * float(np.mean(np.subtract(a[s]["dice_present"], b[s]["dice_present"]))) for s in seeds]
    return 100 * mean, 100 * ci, seeds, per_seed


def pooled_rows(groups: dict) -> list[dict]:
    """One row per (group, method): per-image Dice averaged over the method's seeds, then mean ± CI."""
    rows = []
    for (train, test, n), methods in sorted(groups.items()):
        for method, runs in sorted(methods.items()):
            seeds = sorted(runs)
            dm, dci = mean_ci95(seed_mean(runs, seeds))
            fp = [np.mean(runs[s]["false_positive"]) for s in seeds if runs[s]["false_positive"]]
            rows.append({"method": method, "dataset": test, "train_dataset": train, "cross_domain": train != test,
                         "n_labelled": n, "seeds": seeds, "dice_mean": 100 * dm, "dice_ci95": 100 * dci,
                         "n_present": len(runs[seeds[0]]["dice_present"]),
                         "false_positive_rate": float(np.mean(fp)) if fp else float("nan")})
    return rows


def _diff_text(name: str, a: dict, b: dict) -> tuple[str, float, float]:
    diff, ci, seeds, per_seed = paired(a, b)
    each = ", ".join(f"seed {s}: {d:+.1f}" for s, d in zip(seeds, per_seed))
    return f"sam_mix − {name} = {diff:+.1f} ± {ci:.1f} points (paired, seeds {seeds} pooled; {each})", diff, ci


def targets(records: list[dict]) -> list[str]:
    """Issue 11's targets in-domain (best baseline by seed-pooled Dice), and the cross-domain gain over U-Net."""
    lines = []
    for (train, test, n), group in sorted(by_method_seed(records).items()):
        if "sam_mix" not in group or not any(b in group for b in BASELINES):
            continue
        present = [b for b in BASELINES if b in group]
        best = max(present, key=lambda b: float(np.mean(seed_mean(group[b], sorted(group[b])))))
        seeds_note = "; baseline seeds: " + ", ".join(f"{b} {sorted(group[b])}" for b in present)
        missing = [b for b in BASELINES if b not in group]
        missing_note = f" (not run, so not among the baselines: {missing})" if missing else ""
        text, diff, ci = _diff_text(f"{best} (best baseline)", group["sam_mix"], group[best])
        if train != test:  # cross-domain: the issue asks for the gain over U-Net, whatever it is
            lines.append(f"cross-domain {train} → {test} (no retraining), N={n}: {text}"
                         + (f"; vs unet_scratch: {_diff_text('unet_scratch', group['sam_mix'], group['unet_scratch'])[0]}"
                            if "unet_scratch" in group and best != "unet_scratch" else "") + seeds_note + missing_note)
            continue
        if test not in IN_DOMAIN:  # e.g. Kvasir-SEG's own test split, next to its cross-domain rows
            lines.append(f"in-domain reference {test}, N={n}: {text}{seeds_note}{missing_note}")
            continue
        if test not in BENCHMARK:  # benchmarked in-domain without an issue target (ISIC-2017)
            lines.append(f"{test}, N={n} (no target in issue 11): {text}{seeds_note}{missing_note}")
            continue
        need = TARGET_GAIN.get(n, 5.0)
        met = diff >= need and diff - ci > 0
        lines.append(f"{test}, N={n}: {'MET' if met else 'MISSED'} — {text}, test images with the structure; target "
                     f"≥ +{need:.0f} with CI above 0{'' if met else f'; short by {max(0.0, need - diff):.1f} points'}"
                     + seeds_note + missing_note)
    return lines


def _rate(row: dict) -> str:
    """The FP rate, or '-' for a test set without empty images (polyps)."""
    return "-" if np.isnan(row["false_positive_rate"]) else f"{row['false_positive_rate']:.2f}"


def write_report(records: list[dict], args) -> None:
    rows = [summary_row(r) for r in records]
    pooled = pooled_rows(by_method_seed(records))
    lines_t = targets(records)
    write_atomic(RESULTS / "sam_mix.json", json.dumps({
        "command": "python -m benchmarks.sam_mix " + " ".join(args.argv), "caps": CAPS,
        "size": args.size, "steps": args.steps, "warmup": args.warmup, "unet_steps": args.unet_steps,
        "budgets": sorted({json.dumps(r.get("budget", "not recorded (seed-0 runs: steps 80, warmup 150, unet 200)"))
                           for r in records}),
        "rows": rows, "pooled": pooled, "targets": lines_t}, indent=1))  # atomic: a kill leaves the old report
    md = ["# SAM-Mix benchmark (generated by benchmarks/sam_mix.py)", "",
          f"Report: `python -m benchmarks.sam_mix {' '.join(args.argv)}` over every run saved in sam_mix_runs/; "
          f"{args.size} px, CPU, classifier warm-up {args.warmup} steps + {args.steps} segmenter/joint steps, U-Net "
          f"{args.unet_steps} steps; split caps (content-hash order, split seed 0 for every training seed) {CAPS}. Dice in "
          "points over test images WITH the structure (mean ± 95% t-CI); FP rate = share of test images WITHOUT it where "
          "any pixel is predicted; Dice(all) scores those as metaseg.metrics does (1 for an empty prediction, 0 otherwise).",
          "",
          "CAM box IoU: the CAM box vs the mask's bounding box on test images with the structure. Presence "
          "threshold chosen on the validation split's image-level labels (balanced accuracy, or --presence-min-recall where a "
          "run's budget records one); CAM threshold fixed at 0.7 (--cam-threshold, chosen on validation masks, docs/sam_mix.md; "
          "runs whose budget records no cam_threshold used 'auto', the N training masks' box fit; the CAM thr. column is "
          "what each run used); test images never choose anything. Cross-domain rows (train → test): trained on the "
          "first dataset's pool and N masks, scored without retraining on the second's test split. Kvasir-SEG has no "
          "image without a polyp, so its image-level labels are all 'present': no presence gate is learnt (threshold 0). "
          "ISIC-2017: every image has a lesion (no gate, threshold 0, no FP rate); the classifier is trained on the "
          "class CSVs' melanoma label (melanoma 1 / not 0) and its CAM, shaped by the N masks, gives the prompts; "
          "label AUC = the classifier's melanoma ROC AUC on the test images.",
          "", "Targets (issue 11):", ""] + [f"- {t}" for t in lines_t] + [
          "", "## Pooled over seeds (per-image Dice averaged over the seeds, then mean ± 95% CI over images)", "",
          "| trained on → tested on | N | method | seeds | Dice | FP rate (empty images) |", "|---|---:|---|---|---|---|"]
    for r in pooled:
        domain = f"{r['train_dataset']} → {r['dataset']}" if r["cross_domain"] else r["dataset"]
        md.append(f"| {domain} | {r['n_labelled']} | {r['method']} | {','.join(map(str, r['seeds']))} | "
                  f"{r['dice_mean']:.1f} ± {r['dice_ci95']:.1f} | {_rate(r)} |")
    md += ["", "## Per run (one row per seed)", "",
           "| trained on → tested on | N | method | seed | Dice | Dice (all test) | FP rate (empty images) | presence acc. / balanced | "
           "presence thr. | CAM thr. | CAM box IoU | label AUC | pool labels | test (present/empty) | s |",
           "|---|---:|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]

    def fmt(r: dict, key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "-"

    for r in sorted(rows, key=lambda r: (r["cross_domain"], r["dataset"], r["n_labelled"], r["method"], r["seed"])):
        acc = f"{r['presence_accuracy']:.2f} / {fmt(r, 'presence_balanced_accuracy')}" if "presence_accuracy" in r else "-"
        domain = f"{r['train_dataset']} → {r['dataset']} (cross-domain)" if r["cross_domain"] else r["dataset"]
        md.append(f"| {domain} | {r['n_labelled']} | {r['method']} | {r['seed']} | {r['dice_mean']:.1f} ± {r['dice_ci95']:.1f} | "
                  f"{r['dice_all']:.1f} ± {r['dice_all_ci95']:.1f} | {_rate(r)} | {acc} | "
                  f"{fmt(r, 'presence_threshold')} | {fmt(r, 'cam_threshold')} | {fmt(r, 'cam_box_iou')} | {fmt(r, 'label_auc')} | "
                  f"{r['n_pool_labels']} | {r['n_present']}/{r['n_empty']} | {r['seconds']:.0f} |")
    write_atomic(RESULTS / "sam_mix.md", "\n".join(md) + "\n")



def figure(dataset: str, data, n: int, seed: int = FIGURE_SEED, count: int = 4) -> Path | None:
    """CAM -> box -> mask for the first `count` test images with the structure (sam_mix, N masks, one
    training seed: FIGURE_SEED, so running another seed does not replace the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    saved = RESULTS / "sam_mix_runs" / f"{dataset}_N{n}_sam_mix_seed{seed}.npz"
    if not saved.is_file():
        return None
    out = np.load(saved)
    picks = [i for i in range(len(data.ids["test"])) if data.masks["test"][i].any()][:count]
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.5 * len(picks)))
    for row, i in zip(np.atleast_2d(axes), picks):
        image = data.images["test"][i].transpose(1, 2, 0).squeeze()
        size = image.shape[0]
        x0, y0, x1, y1 = out["boxes"][i]
        row[0].imshow(image, cmap="gray")
        row[0].imshow(np.kron(out["cam"][i], np.ones((size // out["cam"].shape[-1],) * 2)), alpha=0.45, cmap="jet")
        row[0].set_title(f"CAM (P={out['presence'][i]:.2f})", fontsize=8)
        row[1].imshow(image, cmap="gray")
        row[1].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow"))
        row[1].contour(data.masks["test"][i], levels=[0.5], colors="lime", linewidths=0.8)
        row[1].set_title("CAM box (yellow), truth (green)", fontsize=8)
        row[2].imshow(image, cmap="gray")
        row[2].imshow(np.ma.masked_less_equal(out["logits"][i, 0], 0), alpha=0.5, cmap="autumn")
        row[2].contour(data.masks["test"][i], levels=[0.5], colors="lime", linewidths=0.8)
        row[2].set_title("SAM-Mix mask (red), truth (green)", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.suptitle(f"{dataset}: SAM-Mix, N={n} masks, training seed {seed}", fontsize=9)
    fig.tight_layout()
    path = RESULTS / f"sam_mix_{dataset}.png"
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=80, format="png")
    tmp.replace(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(IN_DOMAIN), choices=list(IN_DOMAIN))
    parser.add_argument("--cross-domain", action="store_true",
                        help=f"train on each of {list(CROSS_DOMAIN)} and test on its partner {list(CROSS_DOMAIN.values())} "
                             "(instead of --datasets)")
    parser.add_argument("--n", nargs="+", type=int, default=[5, 50])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed: which N pool images keep their masks, initialisation, batches")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the content-hash split (fixed across training seeds: same test images)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=80, help="segmenter (joint) steps")
    parser.add_argument("--warmup", type=int, default=150, help="classifier-only steps")
    parser.add_argument("--unet-steps", type=int, default=200)
    parser.add_argument("--refine", type=int, default=0,
                        help="SAM methods: box-refinement rounds at inference (the predicted mask's box replaces the "
                             "CAM / whole-image box); default 0 (off)")
    parser.add_argument("--cam-threshold", type=_cam_threshold, default=CAM_THRESHOLD,
                        help=f"SAM methods: CAM level (of its maximum) for the prompt mask, or 'auto' (the one whose boxes "
                             f"best fit the N training masks' boxes, the rule before); default {CAM_THRESHOLD} (validation, docs/sam_mix.md)")
    parser.add_argument("--presence-min-recall", type=_min_recall, default=PRESENCE_MIN_RECALL,
                        help="presence threshold: the highest keeping this share of the validation split's present images; "
                             f"'balanced' = best balanced accuracy on its labels (the rule before); default {PRESENCE_MIN_RECALL}")
    parser.add_argument("--rerun", action="store_true", help="recompute runs already saved")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the saved runs, train nothing")
    parser.add_argument("--out", default=str(DEFAULT_RESULTS), help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    given = list(argv) if argv is not None else __import__("sys").argv[1:]
    args.argv = [a for a in given if a != "--report-only"]
    global RESULTS
    RESULTS = Path(args.out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.report_only:
        write_report(load_runs(RESULTS), args)
        return 0
    pairs = list(CROSS_DOMAIN.items()) if args.cross_domain else [(d, None) for d in args.datasets]
    for dataset, partner in pairs:
        data = split(dataset, size=args.size, seed=args.split_seed, caps=CAPS)
        cross = split(partner, size=args.size, seed=args.split_seed, caps=CAPS) if partner else None
        for n in args.n:
            for method in args.methods:
                for r in run_one(dataset, data, n, method, args, cross):
                    s = summary_row(r)
                    print(f"{group_key(r)} {s['method']}: Dice {s['dice_mean']:.1f} ± {s['dice_ci95']:.1f}, "
                          f"FP rate {s['false_positive_rate']:.2f} ({s['seconds']} s)", flush=True)
                write_report(load_runs(RESULTS), args)
        done = [n for n in (50, 5) if run_path(dataset, n, "sam_mix", FIGURE_SEED).with_suffix(".npz").is_file()]
        if done and partner is None:  # N=50 when measured (else 5), always FIGURE_SEED's run
            figure(dataset, data, done[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
