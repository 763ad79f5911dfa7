"""Does the GAN still collapse? Before/after of the GAN options on one dataset (docs/synthetic.md).

For each variant (generator architecture, minibatch std-dev, R1 gamma, EMA): train the GAN exactly as
`benchmarks.synthetic` does (n real pairs, same steps and width), sample n pairs, measure their
diversity (`metaseg.generative.audit.diversity`, beside the real training images' value) and train
the U-Net on them for the synthetic-only Dice on the real held-out images (paired with the real-data
U-Net row of the same n in benchmarks/results/synthetic_rows.jsonl when there is one). One JSON line
per variant in OUT; variants already there are skipped (resumable).

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m benchmarks.synthetic_gan_probe --work /tmp/gan-probe
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._rows import append_row, read_rows
from benchmarks.synthetic import READER_OPTIONS, ROWS

# name -> GAN options; "dcgan" is the generator of the first study (metaseg.generative.gan.LEGACY)
_OFF = {"augment": False, "mode_seeking": 0.0}
VARIANTS = {
    "dcgan": {"arch": "dcgan", "mbstd": False, "r1": 0.0, "ema": False, **_OFF},
    "dcgan+mbstd+ema": {"arch": "dcgan", "mbstd": True, "r1": 0.0, "ema": True, **_OFF},
    "dcgan+mbstd+ema+r1": {"arch": "dcgan", "mbstd": True, "r1": 1.0, "ema": True, **_OFF},
    "style+mbstd+ema": {"arch": "style", "mbstd": True, "r1": 0.0, "ema": True, **_OFF},
    "style+mbstd+ema+r1": {"arch": "style", "mbstd": True, "r1": 1.0, "ema": True, **_OFF},
    "dcgan+mbstd+ema+r1+aug": {"arch": "dcgan", "mbstd": True, "r1": 1.0, "ema": True, "augment": True, "mode_seeking": 0.0},
    "dcgan+mbstd+ema+r1+ms": {"arch": "dcgan", "mbstd": True, "r1": 1.0, "ema": True, "augment": False, "mode_seeking": 1.0},
    "style+mbstd+ema+r1+ms": {"arch": "style", "mbstd": True, "r1": 1.0, "ema": True, "augment": False, "mode_seeking": 1.0},
    "dcgan+mbstd+ema+r1+ms+aug": {"arch": "dcgan", "mbstd": True, "r1": 1.0, "ema": True, "augment": True, "mode_seeking": 1.0},
}
LR = {}  # variant -> learning rate (default: the GAN's 2e-4)


def main(argv: list[str] | None = None) -> int:
    from metaseg.data.cache import load_task
    from metaseg.data.tasks import resolve_data_root
    from metaseg.generative.audit import diversity
    from metaseg.generative.data import load_dataset, split_by_hash
    from metaseg.generative.sample import sample_to_folder
    from metaseg.generative.segmenters import dice_per_image, fit_segmenter
    from metaseg.generative.trainer import RunConfig, train
    from metaseg.metrics import mean_ci95, mean_ci_text, paired_ci95

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="MSD-Task04-Hippocampus")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seg-steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True)
    p.add_argument("--out", default="benchmarks/results/synthetic_gan_probe.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    root = resolve_data_root(required=True) / args.dataset
    options = READER_OPTIONS.get(args.dataset, {})
    task = load_dataset(root, 64, reader_options=options)
    split = split_by_hash(task.hashes, 0.2, args.n_train, args.seed)
    test_x, test_y = task.images[split.heldout], task.masks[split.heldout]
    real = next((r for r in read_rows(ROWS) if (r["dataset"], r["generator"], r["n_generator_train"], r["segmenter"], r["seed"])
                 == (args.dataset, "real", args.n_train, "unet", args.seed)), None)
    real_div = diversity(task.images[split.train], task.masks[split.train])
    for name in args.variants:
        if any(r["variant"] == name and r["dataset"] == args.dataset and r["n_train"] == args.n_train and r["seed"] == args.seed
               for r in read_rows(args.out)):
            continue
        config = RunConfig(model="gan", dataset=str(root.resolve()), size=64, seed=args.seed, n_train=args.n_train, width=args.width,
                           reader_options=options or None, gan_options=VARIANTS[name], lr=LR.get(name))
        work = Path(args.work) / f"{args.dataset}_{name}_n{args.n_train}_s{args.seed}"
        t0 = time.perf_counter()
        ckpt = train(config, work / "run", args.steps, save_every=50, log_every=50, echo=log)
        train_s = time.perf_counter() - t0
        shutil.rmtree(work / "samples", ignore_errors=True)
        sample_to_folder(ckpt, args.n_train, work / "samples", seed=args.seed, echo=lambda _: None)
        synth = load_task(work / "samples", size=64)
        t0 = time.perf_counter()
        model = fit_segmenter("unet", synth.images, synth.masks, args.seg_steps, seed=args.seed)
        scores = dice_per_image(model, test_x, test_y).numpy()
        row = {"dataset": args.dataset, "variant": name, "gan_options": VARIANTS[name], "n_train": args.n_train, "seed": args.seed,
               "steps": args.steps, "width": args.width, "train_s": round(train_s, 1), "segmenter_s": round(time.perf_counter() - t0, 1),
               "synthetic": {k: round(v, 4) for k, v in diversity(synth.images, synth.masks).items()},
               "real_train": {k: round(v, 4) for k, v in real_div.items()},
               "unet_dice_synthetic": round(float(scores.mean()), 4), "unet_dice_synthetic_text": mean_ci_text(*mean_ci95(scores), len(scores))}
        if real is not None and len(real["dice_per_image"]) == len(scores):
            ref = np.asarray(real["dice_per_image"])
            diff, ci, _ = paired_ci95(scores, ref)
            row.update(unet_dice_real=round(float(ref.mean()), 4), dice_ratio=round(float(scores.mean() / ref.mean()), 4),
                       paired_difference=f"{diff:+.3f} ± {ci:.3f}")
        shutil.copy(work / "samples" / "grid.png", Path(args.out).parent / "synthetic" / f"gan_probe_{args.dataset}_{name}_n{args.n_train}.png")
        append_row(args.out, row)
        log(f"[probe] {name}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
