"""Synthetic-only training vs real training, and the memorisation audit (issue 14; docs/synthetic.md).

For one dataset: a seeded content-hash split holds out 20 % of the source files (the real test
set and the audit's no-memorisation reference). For each generator-training-set size and each
generator (gan, diffusion), train the generator with `metaseg.generative.trainer.train` (the code
behind `metaseg synth train`), sample N pairs to a folder (`metaseg synth sample`), read that
folder back like any dataset, audit it (`metaseg synth audit`), then train each segmenter on the
synthetic pairs and on the same number of real training pairs, and score both on the real
held-out images. Writes <out>.json / <out>.md and figures in <out>/.

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m benchmarks.synthetic --dataset CXR-Lungs-Shenzhen-Montgomery
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metaseg.data.cache import load_task
from metaseg.data.tasks import resolve_data_root
from metaseg.generative.audit import run_audit
from metaseg.generative.data import split_by_hash
from metaseg.generative.sample import sample_to_folder
from metaseg.generative.segmenters import SEGMENTERS, fit_segmenter, mean_dice
from metaseg.generative.trainer import RunConfig, train


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="CXR-Lungs-Shenzhen-Montgomery", help="folder, or a name under the data root")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", nargs="+", default=["64", "all"], help="generator training-set sizes ('all' = the whole training split)")
    p.add_argument("--generators", nargs="+", default=["gan", "diffusion"])
    p.add_argument("--segmenters", nargs="+", default=list(SEGMENTERS))
    p.add_argument("--gan-steps", type=int, default=300)
    p.add_argument("--gan-width", type=int, default=32)
    p.add_argument("--diffusion-steps", type=int, default=200)
    p.add_argument("--diffusion-width", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps when sampling the diffusion model")
    p.add_argument("--n-synthetic", type=int, default=100, help="synthetic pairs per generator")
    p.add_argument("--seg-steps", type=int, default=60, help="segmenter training steps (batch 16)")
    p.add_argument("--tau", type=float, default=0.95)
    p.add_argument("--ssim-candidates", type=int, default=16, help="SSIM against the K most correlated training images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/metaseg-synthetic-bench", help="generator runs and sample folders (resumable)")
    p.add_argument("--out", default="benchmarks/results/synthetic", help="writes OUT.json, OUT.md and figures in OUT/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    root = Path(args.dataset)
    if not root.is_dir():
        root = resolve_data_root(required=True) / args.dataset
    work, out = Path(args.work), Path(args.out)
    figures = out
    figures.mkdir(parents=True, exist_ok=True)
    task = load_task(root, size=args.size)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows, timings = [], []
    for n_arg in args.n_train:
        n = None if n_arg == "all" else int(n_arg)
        split = split_by_hash(task.hashes, 0.2, n, args.seed)
        test_x, test_y = task.images[split.heldout], task.masks[split.heldout]
        real = {}
        for seg in args.segmenters:
            t0 = time.perf_counter()
            model = fit_segmenter(seg, task.images[split.train], task.masks[split.train], args.seg_steps, seed=args.seed)
            real[seg] = mean_dice(model, test_x, test_y)
            timings.append({"what": f"{seg} on {len(split.train)} real", "seconds": round(time.perf_counter() - t0, 1)})
            log(f"[bench] n={len(split.train)} {seg} real: Dice {real[seg]:.4f}")
        for gen in args.generators:
            steps = args.gan_steps if gen == "gan" else args.diffusion_steps
            width = args.gan_width if gen == "gan" else args.diffusion_width
            name = f"{gen}_n{len(split.train)}"
            config = RunConfig(model=gen, dataset=str(root.resolve()), size=args.size, width=width, seed=args.seed, n_train=n)
            t0 = time.perf_counter()
            ckpt = train(config, work / name, steps, save_every=50, log_every=50, echo=log)
            timings.append({"what": f"train {name} ({steps} steps)", "seconds": round(time.perf_counter() - t0, 1)})
            synth_dir = work / f"{name}_samples"
            t0 = time.perf_counter()
            if synth_dir.exists():
                shutil.rmtree(synth_dir)  # ours: regenerated each run
            sample_to_folder(ckpt, args.n_synthetic, synth_dir, seed=args.seed, echo=lambda _: None, steps=args.sample_steps)
            timings.append({"what": f"sample {args.n_synthetic} from {name}", "seconds": round(time.perf_counter() - t0, 1)})
            audit_dir = work / f"{name}_audit"
            if audit_dir.exists():
                shutil.rmtree(audit_dir)
            t0 = time.perf_counter()
            report = run_audit(synth_dir, root, audit_dir, checkpoint=ckpt, tau=args.tau, ssim_candidates=args.ssim_candidates, echo=log)
            timings.append({"what": f"audit {name}", "seconds": round(time.perf_counter() - t0, 1)})
            shutil.copy(synth_dir / "grid.png", figures / f"{name}_samples.png")
            shutil.copy(audit_dir / "closest_pairs.png", figures / f"{name}_closest_pairs.png")
            shutil.copy(audit_dir / "histogram.png", figures / f"{name}_histogram.png")
            synth = load_task(synth_dir, size=args.size)  # read back like any dataset (generic layout)
            s, r = report["synthetic_vs_train"], report["heldout_vs_train"]
            for seg in args.segmenters:
                t0 = time.perf_counter()
                model = fit_segmenter(seg, synth.images, synth.masks, args.seg_steps, seed=args.seed)
                dice = mean_dice(model, test_x, test_y)
                timings.append({"what": f"{seg} on {len(synth)} {gen}", "seconds": round(time.perf_counter() - t0, 1)})
                log(f"[bench] {name} {seg}: synthetic Dice {dice:.4f} vs real {real[seg]:.4f}")
                rows.append({
                    "generator": gen, "dataset": root.name, "segmenter": seg, "n_generator_train": len(split.train),
                    "n_synthetic": len(synth), "n_test": len(split.heldout), "generator_steps": steps,
                    "dice_synthetic": round(dice, 4), "dice_real": round(real[seg], 4), "dice_ratio": round(dice / real[seg], 4),
                    "tau": args.tau, "frac_above_tau": s["frac_above_tau"], "max_corr_median": round(s["max_corr_median"], 4),
                    "max_corr_p99": round(s["max_corr_p99"], 4), "heldout_frac_above_tau": r["frac_above_tau"],
                    "heldout_max_corr_median": round(r["max_corr_median"], 4), "heldout_max_corr_p99": round(r["max_corr_p99"], 4),
                })
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 python -m benchmarks.synthetic " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "device": f"cpu ({platform.machine()}, 1 torch thread)", "image_size": args.size,
              "segmenter_steps": args.seg_steps, "seed": args.seed, "rows": rows, "timings_s": timings}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, figures.name))
    log(f"[bench] wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def markdown(result: dict, fig_dir: str) -> str:
    lines = [f"# Synthetic-only training and memorisation ({result['device']}, {result['image_size']} px)", "",
             f"Command: `{result['command']}`", "",
             "| dataset | generator | n gen. train | segmenter | Dice synthetic | Dice real | ratio | frac > tau | max-r median | max-r p99 | held-out frac > tau | held-out median | held-out p99 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['dataset']} | {r['generator']} ({r['generator_steps']} steps) | {r['n_generator_train']} | {r['segmenter']} | "
                     f"{r['dice_synthetic']:.3f} | {r['dice_real']:.3f} | {100 * r['dice_ratio']:.0f} % | {r['frac_above_tau']:.3f} | "
                     f"{r['max_corr_median']:.3f} | {r['max_corr_p99']:.3f} | {r['heldout_frac_above_tau']:.3f} | "
                     f"{r['heldout_max_corr_median']:.3f} | {r['heldout_max_corr_p99']:.3f} |")
    lines += ["", f"tau = {result['rows'][0]['tau'] if result['rows'] else ''}; Dice = mean per-image Dice on the real held-out images; "
              "max-r = each synthetic (or held-out real) image's maximum Pearson correlation with the generator's training images.", "",
              "Figures: " + ", ".join(sorted({f"[{n}]({fig_dir}/{n})" for r in result["rows"] for n in
                                              (f"{r['generator']}_n{r['n_generator_train']}_samples.png",
                                               f"{r['generator']}_n{r['n_generator_train']}_closest_pairs.png")})), "",
              "| step | seconds |", "|---|---|"] + [f"| {t['what']} | {t['seconds']} |" for t in result["timings_s"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
