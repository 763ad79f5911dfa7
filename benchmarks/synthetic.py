"""Synthetic-only training vs real training, and the memorisation audit (issue 14; docs/synthetic.md).

For one dataset: a seeded content-hash split holds out 20 % of the source files (volumes, for MSD)
as the real test set and the audit's no-memorisation reference. For each generator-training-set
size n and each generator (gan, diffusion): train the generator on n real training pairs with
`metaseg.generative.trainer.train` (the code behind `metaseg synth train`), sample n pairs
(`--n-synthetic same`, the default: as many synthetic pairs as the generator saw real ones) to a
folder (`metaseg synth sample`), read it back like any dataset, audit it (`metaseg synth audit`),
then train each segmenter on the n synthetic pairs and, once per (n, segmenter), on the same n
real pairs, with the same steps, and score both on the same real held-out images (per image:
the ratio and a paired difference with a 95 % CI).

Resumable, and datasets can run in separate invocations: every finished (dataset, generator,
n_generator_train, segmenter, seed) - generator "real" for the real-data segmenter - is appended
as one JSON line to ROWS (default benchmarks/results/synthetic_rows.jsonl) and skipped when the
key is already there; generator runs resume from their checkpoints, finished sample folders and
audits are reused. OUT.json / OUT.md are regenerated from all rows after every row (and by
`--report`), figures go to OUT/<dataset>_<generator>_n<n>_*.png.

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m benchmarks.synthetic --dataset MSD-Task04-Hippocampus
    PYTHONPATH=. python -m benchmarks.synthetic --report      # only rebuild OUT.json / OUT.md from ROWS
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._rows import append_row, read_rows, write_atomic

# Reader options per dataset: the study needs ONE binary mask. MSD Task04 labels the hippocampus
# head 1 and body+tail 2; the MSD reader's default (label 1) would keep the head only, so the two
# are merged (metaseg.generative.data.check_single_mask refuses the dataset without a choice).
READER_OPTIONS: dict[str, dict[str, Any]] = {"MSD-Task04-Hippocampus": {"label": "1,2"}}
KEY = ("dataset", "generator", "n_generator_train", "segmenter", "seed")
ROWS = Path("benchmarks/results/synthetic_rows.jsonl")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="CXR-Lungs-Shenzhen-Montgomery", help="folder, or a name under the data root")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", nargs="+", default=["100", "all"], help="generator training-set sizes ('all' = the training split, capped)")
    p.add_argument("--cap", type=int, default=500, help="'all' means min(training split, CAP) images (CPU budget)")
    p.add_argument("--generators", nargs="+", default=["gan", "diffusion"])
    p.add_argument("--segmenters", nargs="+", default=["unet", "segformer"])
    p.add_argument("--gan-steps", type=int, default=300)
    p.add_argument("--gan-width", type=int, default=32)
    p.add_argument("--gan-arch", help="style (StyleGAN-lite) or dcgan (default: metaseg.generative.gan.DEFAULTS)")
    p.add_argument("--mbstd", action=argparse.BooleanOptionalAction, default=None, help="GAN minibatch std-dev (default: on)")
    p.add_argument("--r1", type=float, help="GAN R1 gamma (default: 1; 0 = off)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="GAN EMA generator (default: on)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="gan only: DiffAugment translation + cutout of what the discriminator sees (default off)")
    p.add_argument("--mode-seeking", type=float, help="gan only: weight of the mode-seeking (MSGAN) term (default 1; 0 = off)")
    p.add_argument("--diffusion-steps", type=int, default=250)
    p.add_argument("--diffusion-width", type=int, default=16)
    p.add_argument("--diffusion-lr", type=float, default=2e-3)
    p.add_argument("--prediction", default="v_prediction", help="diffusion target: epsilon, v_prediction or sample")
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps when sampling the diffusion model")
    p.add_argument("--n-synthetic", default="same", help="synthetic pairs per generator: 'same' = n_generator_train, or a number")
    p.add_argument("--seg-steps", type=int, default=60, help="segmenter training steps (batch 16), synthetic and real alike")
    p.add_argument("--tau", type=float, default=0.95)
    p.add_argument("--ssim-candidates", type=int, default=16, help="SSIM against the K most correlated training images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="reader option (beside READER_OPTIONS)")
    p.add_argument("--work", default="/tmp/metaseg-synthetic-bench", help="generator runs, sample folders, audits (resumable)")
    p.add_argument("--rows", default=str(ROWS), help="the appended rows file (one JSON line per finished key)")
    p.add_argument("--out", default="benchmarks/results/synthetic", help="writes OUT.json, OUT.md and figures in OUT/")
    p.add_argument("--device", default="cpu", help="cpu or cuda: generators, sampling and segmenters (not part of the row key)")
    p.add_argument("--report", action="store_true", help="only regenerate OUT.json / OUT.md from --rows")
    return p.parse_args(argv)


# ---------------------------------------------------------------- rows file


def key_of(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in KEY)


def done_keys(path: str | Path, settings: dict[str, Any] | None = None) -> set[tuple]:
    """Keys already in the rows file; with `settings`, only rows made with those generator settings
    (a row of an older generator, e.g. the DCGAN before the GAN options, is redone and replaced)."""
    return {key_of(r) for r in read_rows(path) if settings is None or r.get("generator_settings") == settings}


def gan_options(args: argparse.Namespace) -> dict[str, Any]:
    """The GAN options of this invocation, defaults filled in (they are part of the rows' settings)."""
    from metaseg.generative.gan import DEFAULTS

    given = {"arch": args.gan_arch, "mbstd": args.mbstd, "r1": args.r1, "ema": args.ema, "augment": args.augment,
             "mode_seeking": args.mode_seeking}
    return {k: DEFAULTS[k] if v is None else v for k, v in given.items()}


# ---------------------------------------------------------------- the study


def reader_options(dataset: str, options: list[str]) -> dict[str, Any]:
    out = dict(READER_OPTIONS.get(dataset, {}))
    for text in options:
        if "=" not in text:
            raise SystemExit(f"-o/--option: expected KEY=VALUE, got {text!r}")
        k, v = text.split("=", 1)
        out[k.strip()] = v
    return out


def training_sizes(n_args: list[str], n_split: int, cap: int) -> list[int]:
    """'all' -> min(n_split, cap); numbers above the split are refused (one line naming the option)."""
    sizes = []
    for a in n_args:
        n = min(n_split, cap) if a == "all" else int(a)
        if not 1 <= n <= n_split:
            raise SystemExit(f"--n-train {a}: must be between 1 and {n_split} (the training split) or 'all'")
        sizes.append(n)
    return list(dict.fromkeys(sizes))


def run_name(generator: str, n: int, seed: int, gan: dict[str, Any] | None = None) -> str:
    """The work folder of one generator run; GAN variants get their own (a run refuses changed settings)."""
    if gan:
        generator += f"-{gan['arch']}" + "-mbstd" * gan["mbstd"] + (f"-r1_{gan['r1']:g}" if gan["r1"] else "") + "-ema" * gan["ema"]
        generator += "-aug" * gan.get("augment", False) + (f"-ms_{gan['mode_seeking']:g}" if gan.get("mode_seeking") else "")
    return f"{generator}_n{n}_s{seed}"


def figure_name(dataset: str, generator: str, n: int, seed: int, what: str) -> str:
    return f"{dataset}_{generator}_n{n}{'' if seed == 0 else f'_s{seed}'}_{what}.png"


def _reuse_or_remove(folder: Path, done: Callable[[Path], bool]) -> bool:
    """True if `folder` holds a finished result; otherwise clear what a killed run left."""
    if folder.is_dir() and done(folder):
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def run_dataset(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    import torch

    from metaseg.data.cache import load_task
    from metaseg.data.tasks import resolve_data_root
    from metaseg.generative.audit import diversity, run_audit
    from metaseg.generative.data import load_dataset, split_by_hash
    from metaseg.generative.sample import sample_to_folder
    from metaseg.generative.segmenters import dice_per_image, fit_segmenter
    from metaseg.generative.trainer import RunConfig, read_synth_checkpoint, train

    from metaseg.generative.trainer import pick_device

    torch.set_num_threads(1)
    device = pick_device(args.device)
    root = Path(args.dataset)
    if not root.is_dir():
        root = resolve_data_root(required=True) / args.dataset
    name = root.name
    options = reader_options(name, args.option)
    task = load_dataset(root, args.size, reader_options=options)  # refuses an MSD task with several labels and no choice
    n_split = len(split_by_hash(task.hashes, 0.2, None, args.seed).train)
    sizes = training_sizes(args.n_train, n_split, args.cap)
    work, figures = Path(args.work) / name, Path(args.out)
    figures.mkdir(parents=True, exist_ok=True)
    base = {"dataset": name, "seed": args.seed, "device": device, "image_size": args.size, "segmenter_steps": args.seg_steps,
            "reader_options": options, "n_train_split": n_split, "cap": args.cap}
    for n in sizes:
        split = split_by_hash(task.hashes, 0.2, n, args.seed)
        test_x, test_y = task.images[split.heldout], task.masks[split.heldout]
        for seg in args.segmenters:  # the real-data reference: same n, same steps, same test images
            if (name, "real", n, seg, args.seed) in done_keys(args.rows):
                continue
            t0 = time.perf_counter()
            model = fit_segmenter(seg, task.images[split.train], task.masks[split.train], args.seg_steps, seed=args.seed, device=device)
            scores = dice_per_image(model, test_x, test_y, device=device)
            row = {**base, "generator": "real", "n_generator_train": n, "segmenter": seg, "n_segmenter_train": n,
                   "n_test": len(split.heldout), "dice": round(float(scores.mean()), 4),
                   "dice_per_image": [round(float(v), 4) for v in scores], "segmenter_s": round(time.perf_counter() - t0, 1)}
            append_row(args.rows, row)
            log(f"[bench] {name} n={n} {seg} real: Dice {row['dice']:.4f} ({row['segmenter_s']} s)")
            report(args.rows, args.out)
        for gen in args.generators:
            diffusion = gen == "diffusion"
            gan = None if diffusion else gan_options(args)
            config = RunConfig(model=gen, dataset=str(root.resolve()), size=args.size, seed=args.seed, n_train=n,
                               width=args.diffusion_width if diffusion else args.gan_width,
                               lr=args.diffusion_lr if diffusion else None, reader_options=options or None,
                               prediction=(None if args.prediction == "epsilon" else args.prediction) if diffusion else None,
                               gan_options=gan)
            settings = {"width": config.width, "lr": config.lr, "batch_size": config.batch_size,
                        **({"prediction": args.prediction, "ddim_steps": args.sample_steps} if diffusion else gan)}
            if all((name, gen, n, seg, args.seed) in done_keys(args.rows, settings) for seg in args.segmenters):
                continue
            steps = args.diffusion_steps if diffusion else args.gan_steps
            n_synth = n if args.n_synthetic == "same" else int(args.n_synthetic)
            run = work / run_name(gen, n, args.seed, gan)
            timing: dict[str, float] = {}
            t0 = time.perf_counter()
            ckpt = train(config, run / "run", steps, save_every=50, log_every=50, echo=log, device=device)
            timing["generator_train_s"] = round(time.perf_counter() - t0, 1)
            step = int(read_synth_checkpoint(ckpt)["step"])
            sample_opts = {"steps": args.sample_steps} if diffusion else {}

            def finished(folder: Path) -> bool:
                info = json.loads((folder / "synth.json").read_text()) if (folder / "synth.json").is_file() else {}
                return info.get("n") == n_synth and info.get("step") == step and info.get("options") == sample_opts

            samples, audit_dir = run / "samples", run / "audit"
            t0 = time.perf_counter()
            if not _reuse_or_remove(samples, finished):
                shutil.rmtree(audit_dir, ignore_errors=True)
                sample_to_folder(ckpt, n_synth, samples, seed=args.seed, echo=lambda _: None, device=device, **sample_opts)
            timing["sample_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            if not _reuse_or_remove(audit_dir, lambda f: (f / "audit.json").is_file()):
                run_audit(samples, root, audit_dir, checkpoint=ckpt, tau=args.tau, ssim_candidates=args.ssim_candidates, echo=log)
            audit = json.loads((audit_dir / "audit.json").read_text())
            timing["audit_s"] = round(time.perf_counter() - t0, 1)
            for what, src in (("samples", samples / "grid.png"), ("closest_pairs", audit_dir / "closest_pairs.png"),
                              ("histogram", audit_dir / "histogram.png")):
                shutil.copy(src, figures / figure_name(name, gen, n, args.seed, what))
            synth = load_task(samples, size=args.size)  # read back like any dataset (generic layout)
            s, r = audit["synthetic_vs_train"], audit["heldout_vs_train"]
            spread = {f"synthetic_{k}": round(v, 4) for k, v in diversity(synth.images, synth.masks).items()}
            spread.update({f"real_{k}": round(v, 4) for k, v in diversity(task.images[split.train], task.masks[split.train]).items()})
            for seg in args.segmenters:
                if (name, gen, n, seg, args.seed) in done_keys(args.rows, settings):
                    continue
                t0 = time.perf_counter()
                model = fit_segmenter(seg, synth.images, synth.masks, args.seg_steps, seed=args.seed, device=device)
                scores = dice_per_image(model, test_x, test_y, device=device)
                row = {**base, "generator": gen, "n_generator_train": n, "segmenter": seg, "n_segmenter_train": len(synth),
                       "n_synthetic": len(synth), "n_test": len(split.heldout), "generator_steps": step,
                       "generator_settings": settings, **spread,
                       "dice": round(float(scores.mean()), 4), "dice_per_image": [round(float(v), 4) for v in scores],
                       "tau": args.tau, "frac_above_tau": s["frac_above_tau"], "max_corr_median": round(s["max_corr_median"], 4),
                       "max_corr_p99": round(s["max_corr_p99"], 4), "max_ssim_median": round(s["max_ssim_median"], 4),
                       "heldout_frac_above_tau": r["frac_above_tau"], "heldout_max_corr_median": round(r["max_corr_median"], 4),
                       "heldout_max_corr_p99": round(r["max_corr_p99"], 4), "heldout_max_ssim_median": round(r["max_ssim_median"], 4),
                       **timing, "segmenter_s": round(time.perf_counter() - t0, 1)}
                append_row(args.rows, row)
                log(f"[bench] {name} {gen} n={n} {seg}: synthetic Dice {row['dice']:.4f} ({row['segmenter_s']} s)")
                report(args.rows, args.out)


# ---------------------------------------------------------------- report


def joined_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic rows with their real reference (same dataset, n, segmenter, seed, test images):
    the issue's fields plus mean ± 95 % CI and the paired per-image difference."""
    from metaseg.metrics import mean_ci95, paired_ci95

    latest = {key_of(r): r for r in rows}  # a key written twice: the later row wins
    out = []
    for key, r in latest.items():
        if r["generator"] == "real":
            continue
        real = latest.get((r["dataset"], "real", r["n_generator_train"], r["segmenter"], r["seed"]))
        if real is None or len(real["dice_per_image"]) != len(r["dice_per_image"]):
            continue
        syn, ref = np.asarray(r["dice_per_image"]), np.asarray(real["dice_per_image"])
        (ms, cs), (mr, cr), (md, cd, _) = mean_ci95(syn), mean_ci95(ref), paired_ci95(syn, ref)
        keep = {k: v for k, v in r.items() if k not in ("dice", "dice_per_image")}
        out.append({**keep, "dice_synthetic": round(ms, 4), "dice_synthetic_ci95": round(cs, 4), "dice_real": round(mr, 4),
                    "dice_real_ci95": round(cr, 4), "dice_ratio": round(ms / mr, 4) if mr > 0 else None,
                    "dice_difference": round(md, 4), "dice_difference_ci95": round(cd, 4),
                    "real_segmenter_s": real.get("segmenter_s")})
    order = {"gan": 0, "diffusion": 1, "unet": 0, "segformer": 1}
    return sorted(out, key=lambda r: (r["dataset"], r["n_generator_train"], order.get(r["generator"], 9), r["generator"],
                                      order.get(r["segmenter"], 9), r["segmenter"], r["seed"]))


def report(rows_path: str | Path, out: str | Path) -> dict[str, Any]:
    out = Path(out)
    rows = joined_rows(read_rows(rows_path))
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    result = {"description": "synthetic-only vs real training (same n, same steps, same real test images) and the memorisation "
                             "audit; regenerated from " + Path(rows_path).name + " by benchmarks/synthetic.py",
              "device": f"cpu ({platform.machine()}, 1 torch thread)", "rows": rows,
              # rows of the first (CXR-only) protocol, until their dataset has rows of the current one
              "legacy_rows": [r for r in previous.get("legacy_rows", []) if r["dataset"] not in {x["dataset"] for x in rows}]}
    if result["legacy_rows"]:
        result["legacy_protocol"] = previous.get("legacy_protocol", "")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    write_atomic(out.with_suffix(".md"), markdown(result, out.name))
    return result


def generator_label(r: dict[str, Any]) -> str:
    """'gan-style' / 'gan-dcgan' (rows from before the GAN options have no arch: the DCGAN), 'diffusion'."""
    if r["generator"] != "gan":
        return r["generator"]
    return f"gan-{r.get('generator_settings', {}).get('arch', 'dcgan')}"


def _fmt(r: dict[str, Any], k: str) -> str:
    return f"{r[k]:.3f} ± {r[k + '_ci95']:.3f}"


def markdown(result: dict[str, Any], fig_dir: str) -> str:
    rows = result["rows"]
    lines = [f"# Synthetic-only training and memorisation ({result['device']})", "",
             "Each row: a segmenter trained on n synthetic pairs (sampled from a generator trained on n real pairs) vs the same "
             "segmenter trained on those n real pairs, same steps, scored on the same real held-out images "
             "(mean per-image Dice ± 95 % CI; difference = paired per-image synthetic − real).", "",
             "| dataset | generator (steps) | n gen. train = n seg. train | segmenter | Dice synthetic | Dice real | ratio | "
             "paired diff. | n test |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {generator_label(r)} ({r['generator_steps']}) | {r['n_generator_train']} | {r['segmenter']} | "
                     f"{_fmt(r, 'dice_synthetic')} | {_fmt(r, 'dice_real')} | **{100 * r['dice_ratio']:.0f} %** | "
                     f"{_fmt(r, 'dice_difference')} | {r['n_test']} |")
    lines += ["", f"Memorisation (tau = {rows[0]['tau'] if rows else 0.95}; max-r = an image's maximum Pearson correlation with the "
              "generator's training images; reference = real held-out images vs the same training images; "
              "pairwise r = mean Pearson r over pairs of distinct generated images, beside the same for the real training images "
              "(near 1 = mode collapse); empty masks = share of generated masks with no foreground):", "",
              "| dataset | generator | n gen. train | synthetic frac > tau | median max-r | p99 max-r | median max-SSIM | "
              "held-out frac > tau | held-out median | held-out p99 | pairwise r synthetic / real | empty masks |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        k = (r["dataset"], r["generator"], r["n_generator_train"], r["seed"])
        if k in seen:
            continue
        seen.add(k)
        spread = (f"{r['synthetic_pairwise_r_mean']:.3f} / {r['real_pairwise_r_mean']:.3f} | {r['synthetic_empty_mask_frac']:.2f}"
                  if "synthetic_pairwise_r_mean" in r else "- | -")
        lines.append(f"| {r['dataset']} | {generator_label(r)} | {r['n_generator_train']} | {r['frac_above_tau']:.3f} | "
                     f"{r['max_corr_median']:.3f} | {r['max_corr_p99']:.3f} | {r['max_ssim_median']:.3f} | "
                     f"{r['heldout_frac_above_tau']:.3f} | {r['heldout_max_corr_median']:.3f} | {r['heldout_max_corr_p99']:.3f} | {spread} |")
    lines += ["", "Settings and CPU seconds (1 torch thread, a shared 2-core machine: ±50 %):", "",
              "| dataset | generator | n | settings | train s | sample s | audit s | segmenter s (synthetic / real) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {generator_label(r)} | {r['n_generator_train']} | {json.dumps(r.get('generator_settings', {}))} | "
                     f"{r.get('generator_train_s')} | {r.get('sample_s')} | {r.get('audit_s')} | {r['segmenter']}: "
                     f"{r.get('segmenter_s')} / {r.get('real_segmenter_s')} |")
    lines += ["", "Figures (per dataset, generator and n): "
              + ", ".join(f"[{n}]({fig_dir}/{n})" for n in sorted({figure_name(r["dataset"], r["generator"], r["n_generator_train"],
                                                                                r["seed"], w) for r in rows
                                                                    for w in ("samples", "closest_pairs")}))]
    if result.get("legacy_rows"):
        lines += ["", f"## Earlier protocol (kept, not comparable): {result['legacy_protocol']}", "",
                  "| dataset | generator (steps) | n gen. train | n synthetic | segmenter | Dice synthetic | Dice real (n gen. train real) | ratio | "
                  "frac > tau | max-r median | held-out median |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["legacy_rows"]:
            lines.append(f"| {r['dataset']} | {r['generator']} ({r['generator_steps']}) | {r['n_generator_train']} | {r['n_synthetic']} | "
                         f"{r['segmenter']} | {r['dice_synthetic']:.3f} | {r['dice_real']:.3f} | {100 * r['dice_ratio']:.0f} % | "
                         f"{r['frac_above_tau']:.3f} | {r['max_corr_median']:.3f} | {r['heldout_max_corr_median']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if not args.report:
        run_dataset(args, log)
    report(args.rows, args.out)
    log(f"[bench] wrote {Path(args.out).with_suffix('.json')} and {Path(args.out).with_suffix('.md')} from {args.rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
