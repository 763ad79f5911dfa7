"""How many diffusion training steps give image-like samples on a CPU (issue 14 (d); docs/synthetic.md).

Trains one diffusion run (ISIC-2017-256sq, 100 training images, 64 px) in stages: after each stage
(a resume of the same run, so stage k extends stage k-1) sample 64 pairs with 10 and 25 DDIM steps
and audit them against the generator's training images. "Image-like" is read off the audit: the
synthetic images' median max-correlation with the training set against the held-out real images'
(pure noise scores ~0.1, a real image ~0.9). Appends one JSON line per (stage, DDIM steps) to OUT.

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m benchmarks.synthetic_probe --prediction v_prediction --work /tmp/probe-v
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from metaseg.data.tasks import resolve_data_root
from metaseg.generative.audit import run_audit
from metaseg.generative.sample import sample_to_folder
from metaseg.generative.trainer import RunConfig, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ISIC-2017-256sq")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--prediction", default="epsilon", help="epsilon, v_prediction or sample")
    p.add_argument("--stages", default="250,500,1000,1500", help="cumulative training steps to sample at")
    p.add_argument("--ddim", default="10,25", help="DDIM step counts to sample with")
    p.add_argument("--work", required=True)
    p.add_argument("--out", default="benchmarks/results/synthetic_probe.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = resolve_data_root(required=True) / args.dataset
    work = Path(args.work)
    cfg = RunConfig(model="diffusion", dataset=str(root.resolve()), size=64, width=args.width, lr=args.lr, seed=0,
                    n_train=args.n_train, prediction=None if args.prediction == "epsilon" else args.prediction)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    for steps in (int(s) for s in args.stages.split(",")):
        t0 = time.perf_counter()
        ckpt = train(cfg, work / "run", steps, save_every=250, log_every=100, echo=log)
        train_s = time.perf_counter() - t0
        for ddim in (int(s) for s in args.ddim.split(",")):
            folder = work / f"s{steps}_ddim{ddim}"
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.perf_counter()
            sample_to_folder(ckpt, 64, folder, seed=0, echo=lambda _: None, steps=ddim)
            sample_s = time.perf_counter() - t0
            a = run_audit(folder, root, work / f"a{steps}_ddim{ddim}", checkpoint=ckpt, tau=0.95, ssim_candidates=8,
                          overwrite=True, echo=log)
            s, r = a["synthetic_vs_train"], a["heldout_vs_train"]
            row = {"dataset": args.dataset, "n_train": args.n_train, "width": args.width, "lr": args.lr, "prediction": args.prediction,
                   "steps": steps, "ddim_steps": ddim, "stage_train_s": round(train_s, 1), "sample_64_s": round(sample_s, 1),
                   "max_corr_median": round(s["max_corr_median"], 4), "max_corr_p99": round(s["max_corr_p99"], 4),
                   "max_ssim_median": round(s["max_ssim_median"], 4), "heldout_max_corr_median": round(r["max_corr_median"], 4),
                   "grid": str(folder / "grid.png")}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
