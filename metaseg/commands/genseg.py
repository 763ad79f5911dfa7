"""`metaseg genseg`: a segmenter trained on a few real pairs plus Pix2Pix-generated pairs whose
generator follows the segmenter's validation loss (GenSeg; docs/genseg.md)."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from metaseg.jobs.genseg import GenSegConfig, HYPERGRADIENTS, METHODS, TOP_LEVEL

    d = GenSegConfig()
    p = subparsers.add_parser(
        "genseg", help="GenSeg: train a segmenter on N real pairs + generated pairs steered by its validation loss",
        description="Split --dataset by content hash into --train, --val and the rest (test); train a Pix2Pix mask->image "
        "generator and a segmenter by GenSeg's three-level optimisation (or a baseline, --method); write "
        "--out/model.ckpt (a checkpoint for `metaseg adapt` / `metaseg evaluate`), samples.png (augmented mask, "
        "generated image, nearest real image) and summary.json (test Dice). Rerunning the same command resumes "
        "from --out/last.ckpt. See docs/genseg.md.")
    p.add_argument("--dataset", required=True, help="dataset folder (any readable layout)")
    p.add_argument("--train", type=int, required=True, help="real training pairs")
    p.add_argument("--val", type=int, required=True, help="real validation pairs (GenSeg's top level)")
    p.add_argument("--out", required=True, help="run folder (new, or one to resume)")
    p.add_argument("--test", type=int, help="score at most this many of the remaining pairs (default: all)")
    p.add_argument("--method", default=d.method, help=f"{' | '.join(METHODS)} (default {d.method})")
    p.add_argument("--segmenter", default=d.segmenter,
                   help="unet (default; adapt-able), segformer or litemedsam (the pretrained LiteMedSAM base, frozen encoder)")
    p.add_argument("--size", type=int, default=d.size, help=f"side length, a power of two (default {d.size})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"segmenter steps (default {d.steps})")
    p.add_argument("--gan-steps", type=int, default=d.gan_steps, help=f"Pix2Pix pre-training steps (default {d.gan_steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"real (and generated) pairs per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"segmenter learning rate (default {d.lr}; litemedsam 3e-4)")
    p.add_argument("--gen-weight", type=float, default=d.gen_weight, help=f"weight of the generated pairs' loss (default {d.gen_weight})")
    p.add_argument("--hypergradient", default=d.hypergradient, help=f"{' | '.join(HYPERGRADIENTS)} (default {d.hypergradient})")
    p.add_argument("--top-level", default=d.top_level, help=f"what the validation loss moves: {' | '.join(TOP_LEVEL)} (default {d.top_level}; arch/both need --search)")
    p.add_argument("--search", action="store_true", help="generator convolutions as softmax mixtures of 4/2/1, 6/2/2, 8/2/3 kernels")
    p.add_argument("--hyper-lr", type=float, default=d.hyper_lr, help=f"top-level learning rate (default {d.hyper_lr})")
    p.add_argument("--hyper-every", type=int, default=d.hyper_every, help=f"a top-level step every N steps (default {d.hyper_every})")
    p.add_argument("--cg-steps", type=int, default=d.cg_steps, help=f"implicit: CG iterations (default {d.cg_steps})")
    p.add_argument("--damping", type=float, default=d.damping, help=f"implicit: Hessian damping (default {d.damping})")
    p.add_argument("--gen-width", type=int, default=d.gen_width, help=f"generator width (default {d.gen_width}; 64 in the paper)")
    p.add_argument("--disc-width", type=int, default=d.disc_width, help=f"discriminator width (default {d.disc_width}; 64 in the paper)")
    p.add_argument("--synthetic", type=int, default=d.synthetic, help=f"augmented masks in the pool (default {d.synthetic})")
    p.add_argument("--seed", type=int, default=d.seed, help="initialisation, batches and augmentation (default 0)")
    p.add_argument("--split-seed", type=int, default=0, help="the content-hash split (default 0)")
    p.add_argument("--category", help="one category of the dataset (e.g. BUSI benign)")
    p.add_argument("--layout", help="dataset layout (default: detected)")
    p.add_argument("--save-every", type=int, default=50, help="progress file every N steps (default 50)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaseg.errors import at_least
    from metaseg.jobs.genseg import GenSegConfig, run_genseg
    from metaseg.jobs.methods import resolve_device
    from metaseg.metrics import mean_ci_text

    from metaseg.generative.segmenters import DEFAULT_LR

    at_least("--save-every", args.save_every, 1)
    config = GenSegConfig(
        method=args.method, segmenter=args.segmenter, size=args.size, steps=args.steps, gan_steps=args.gan_steps,
        batch_size=args.batch_size, lr=args.lr if args.lr is not None else DEFAULT_LR.get(args.segmenter, GenSegConfig.lr), gen_weight=args.gen_weight, hypergradient=args.hypergradient,
        top_level=args.top_level, search=args.search, hyper_lr=args.hyper_lr, hyper_every=args.hyper_every,
        cg_steps=args.cg_steps, damping=args.damping, gen_width=args.gen_width, disc_width=args.disc_width,
        synthetic=args.synthetic, seed=args.seed).check()
    device = resolve_device(args.device)
    summary = run_genseg(args.dataset, args.out, args.train, args.val, config, n_test=args.test, layout=args.layout,
                         category=args.category, split_seed=args.split_seed, device=device, save_every=args.save_every,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"{summary['method']} ({summary['segmenter']}, {summary['n_train']} train + {summary['n_val']} val): test Dice "
          + mean_ci_text(summary["dice_mean"], summary["dice_ci95"], summary["n_test"]) + f"  -> {args.out}")
    return 0
