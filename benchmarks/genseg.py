"""GenSeg benchmark: real_only, real_aug, separate, genseg on ultra-low-data splits (issue 13).

    python -m benchmarks.genseg run    [--seeds 0 1 2] [--steps 150] [--size 64] [--test-cap 100]
    python -m benchmarks.genseg report                      # results/genseg.{json,md} + figures

`run` appends one JSON row per finished (method, dataset, seed) to results/genseg_rows.jsonl and
skips rows already there, so a killed run resumes where it stopped. Order: seed-major, so the
first seed covers every dataset and method before the second starts.

Splits are by content hash (seed 0 for every training seed; the training seed changes the
initialisation, the minibatches and the augmentations): the first n_train pairs train, the next
n_val are the validation split (GenSeg's level 3; the baselines do not use it), the in-domain
test set is the next `--test-cap` pairs of the rest. Out-of-domain: the same model on
CVC-ClinicDB (Kvasir-SEG) and Montgomery (Shenzhen), capped the same way.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ROWS = RESULTS / "genseg_rows.jsonl"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
METHODS = ("real_only", "real_aug", "separate", "genseg")
DATASETS = ("isic2017", "kvasir", "busi", "cxr")
N_SPLIT = {"isic2017": (32, 8), "kvasir": (32, 8), "busi": (32, 8), "cxr": (7, 2)}


def _concat(tasks):
    from metaseg.jobs.genseg import Pairs

    return Pairs(np.concatenate([t.images for t in tasks]), np.concatenate([t.masks for t in tasks]),
                 sum((list(t.ids) for t in tasks), []))


def load(name: str, size: int, n_train: int, n_val: int, cap: int, data: Path) -> dict:
    """train, val, test (in-domain) and, where there is one, ood (out-of-domain) Pairs."""
    from metaseg.data.cache import load_task
    from metaseg.data.types import TaskArrays
    from metaseg.jobs.genseg import ordered_rows, take

    def task(folder: str, category: str | None = None) -> TaskArrays:
        return load_task(data / folder, size=size, category=category)

    ood = None
    if name == "isic2017":
        t = task("ISIC-2017-256sq")
    elif name == "kvasir":
        t = task("Kvasir-SEG")
        o = task("CVC-ClinicDB")
        ood = take(o, ordered_rows(o.hashes, 0)[:cap])
    elif name == "busi":
        b, m = task("BUSI", "benign"), task("BUSI", "malignant")
        t = TaskArrays("BUSI:benign+malignant", np.concatenate([b.images, m.images]), np.concatenate([b.masks, m.masks]),
                       list(b.ids) + list(m.ids), list(b.hashes) + list(m.hashes), list(b.sources) + list(m.sources))
    elif name == "cxr":
        full = task("CXR-Lungs-Shenzhen-Montgomery")
        keep = lambda prefix: [i for i, x in enumerate(full.ids) if x.startswith(prefix)]  # noqa: E731
        sz, mc = keep("CHNCXR"), keep("MCUCXR")
        sub = lambda rows: TaskArrays(full.name, full.images[rows], full.masks[rows], [full.ids[i] for i in rows],  # noqa: E731
                                      [full.hashes[i] for i in rows], [full.sources[i] for i in rows])
        t = sub(sz)
        o = sub(mc)
        ood = take(o, ordered_rows(o.hashes, 0)[:cap])
    else:
        raise SystemExit(f"unknown dataset {name}")
    order = ordered_rows(t.hashes, 0)
    out = {"train": take(t, order[:n_train]), "val": take(t, order[n_train:n_train + n_val]),
           "test": take(t, order[n_train + n_val:n_train + n_val + cap])}
    if ood is not None:
        out["ood"] = ood
    return out


def done_keys() -> set[tuple]:
    if not ROWS.is_file():
        return set()
    keys = set()
    for line in ROWS.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            keys.add((r["method"], r["dataset"], r["seed"], r["segmenter"], r["n_real"]))
    return keys


def run(args: argparse.Namespace) -> None:
    import torch

    from metaseg.jobs.genseg import GenSegConfig, dice_scores, fit, sample_figure
    from metaseg.metrics import mean_ci95

    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache: dict[str, dict] = {}
    for seed in args.seeds:
        for name in args.datasets:
            n_train, n_val = N_SPLIT[name]
            for method in args.methods:
                key = (method, name, seed, args.segmenter, n_train + n_val)
                if key in done_keys():
                    continue
                if name not in cache:
                    cache[name] = load(name, args.size, n_train, n_val, args.test_cap, Path(args.data))
                d = cache[name]
                cfg = GenSegConfig(method=method, segmenter=args.segmenter, size=args.size, steps=args.steps,
                                   gan_steps=args.gan_steps, batch_size=args.batch_size, hyper_every=args.hyper_every,
                                   hypergradient=args.hypergradient, seed=seed)
                started = time.time()
                r = fit(cfg, d["train"], d["val"])
                seconds = time.time() - started
                rows = []
                for domain, split in (("in", "test"), ("out", "ood")):
                    if split not in d:
                        continue
                    scores = dice_scores(r.seg, d[split])
                    mean, ci = mean_ci95(scores.tolist())
                    rows.append({"method": method, "dataset": name, "domain": domain, "n_real": n_train + n_val,
                                 "n_train": n_train, "n_val": n_val, "segmenter": args.segmenter, "seed": seed,
                                 "dice_mean": mean, "dice_ci95": ci, "n_test": int(len(scores)),
                                 "train_seconds": round(seconds, 1), "config": asdict(cfg)})
                if method == "genseg" and seed == args.seeds[0]:
                    sample_figure(r, RESULTS / f"genseg_samples_{name}.png")
                with ROWS.open("a") as f:
                    for row in rows:
                        f.write(json.dumps(row) + "\n")
                print(f"{name} {method} seed {seed}: " + ", ".join(f"{x['domain']} {x['dice_mean']:.3f}" for x in rows)
                      + f" ({seconds:.0f} s)", flush=True)


def report(args: argparse.Namespace) -> None:
    from metaseg.metrics import mean_ci95

    rows = [json.loads(x) for x in ROWS.read_text().splitlines() if x.strip()]
    (RESULTS / "genseg.json").write_text(json.dumps({
        "protocol": args.protocol, "command": "python -m benchmarks.genseg run && python -m benchmarks.genseg report",
        "rows": [{k: v for k, v in r.items() if k != "config"} | {"steps": r["config"]["steps"], "size": r["config"]["size"]}
                 for r in rows]}, indent=1) + "\n")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["domain"], r["segmenter"], r["n_real"]), []).append(r)
    lines = ["# GenSeg benchmark (generated by `python -m benchmarks.genseg report`)", "", args.protocol, "",
             "Dice (x100) mean over seeds of each run's mean test Dice; ± = 95% t-interval over seeds (n seeds in brackets).", "",
             "| dataset | domain | n_real | segmenter | " + " | ".join(METHODS) + " | genseg - real_only | genseg - separate |",
             "|---|---|---|---|" + "---|" * (len(METHODS) + 2)]
    for (ds, dom, seg, n), rs in sorted(groups.items()):
        means = {}
        cells = []
        for m in METHODS:
            vals = [r["dice_mean"] * 100 for r in rs if r["method"] == m]
            if vals:
                mu, ci = mean_ci95(vals)
                means[m] = mu
                cells.append(f"{mu:.1f} ± {ci:.1f} ({len(vals)})")
            else:
                cells.append("–")
        gap = lambda a, b: f"{means[a] - means[b]:+.1f}" if a in means and b in means else "–"  # noqa: E731
        lines.append(f"| {ds} | {dom} | {n} | {seg} | " + " | ".join(cells) + f" | {gap('genseg', 'real_only')} | {gap('genseg', 'separate')} |")
    secs: dict[str, list[float]] = {}
    for r in rows:
        if r["domain"] == "in":
            secs.setdefault(r["method"], []).append(r["train_seconds"])
    lines += ["", "Training wall time per run (s, mean over runs, one thread, shared 2-core CPU, nice 10): "
              + ", ".join(f"{m} {np.mean(v):.0f}" for m, v in secs.items()), ""]
    (RESULTS / "genseg.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _figure(rows)


def _figure(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ins = [r for r in rows if r["domain"] == "in"]
    datasets = sorted({r["dataset"] for r in ins})
    if not datasets:
        return
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.2
    for j, m in enumerate(METHODS):
        mu = [np.mean([r["dice_mean"] for r in ins if r["dataset"] == d and r["method"] == m] or [np.nan]) for d in datasets]
        ax.bar(np.arange(len(datasets)) + (j - 1.5) * width, mu, width, label=m)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("test Dice (in-domain)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(RESULTS / "genseg_dice.png", dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--segmenter", default="unet")
    r.add_argument("--size", type=int, default=64)
    r.add_argument("--steps", type=int, default=150)
    r.add_argument("--gan-steps", type=int, default=150)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--hyper-every", type=int, default=5)
    r.add_argument("--hypergradient", default="unrolled_fd")
    r.add_argument("--test-cap", type=int, default=100)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--data", default=str(DATA))
    q = sub.add_parser("report")
    q.add_argument("--protocol", default="")
    args = p.parse_args()
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
