"""`metaseg synth train|sample|audit`: joint (image, mask) generators and their memorisation audit
(docs/synthetic.md)."""
from __future__ import annotations

import argparse

from metaseg.commands.reader_args import option_value
from metaseg.errors import MetasegError
from metaseg.generative.base import GENERATORS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="synthetic training data: train a GAN or diffusion generator of image-mask pairs, sample, audit",
        description="Generate (image, mask) pairs that can be shared instead of images, and check that they are not "
        "copies of the training images. See docs/synthetic.md.",
    )
    sub = parser.add_subparsers(dest="synth_command", metavar="{train,sample,audit}", required=True)

    t = sub.add_parser("train", help="train a joint generator on a dataset (resumes from --out/last.ckpt)",
                       description="Train a GAN (StyleGAN-lite or DCGAN) or a diffusion model (diffusers UNet2DModel + DDPM) on the "
                       "(image, mask) pairs of --dataset. A held-out split (by content hash) is kept away from the "
                       "generator. Progress lines go to stderr; --out/last.ckpt is rewritten atomically every "
                       "--save-every steps and every --save-minutes minutes, and rerunning the same command resumes from it.")
    t.add_argument("--dataset", required=True, help="dataset folder (any readable layout)")
    t.add_argument("--model", required=True, help="generator: " + " or ".join(GENERATORS))
    t.add_argument("--out", required=True, help="run folder: last.ckpt and samples.png (new, or one to resume)")
    t.add_argument("--steps", type=int, default=2000, help="total training steps (default 2000)")
    t.add_argument("--size", type=int, default=64, help="side length, a power of two (default 64)")
    t.add_argument("--width", type=int, default=32, help="network width (default 32)")
    t.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    t.add_argument("--lr", type=float, help="learning rate (default: gan 2e-4, diffusion 5e-4)")
    t.add_argument("--prediction", help="diffusion only: what the U-Net predicts, epsilon (default), v_prediction or sample")
    t.add_argument("--gan-arch", help="gan only: style (StyleGAN-lite generator, default) or dcgan")
    t.add_argument("--mbstd", action=argparse.BooleanOptionalAction, default=None,
                   help="gan only: minibatch-standard-deviation feature in the discriminator (default on)")
    t.add_argument("--r1", type=float, help="gan only: R1 gradient-penalty gamma on real samples (default 1; 0 = off)")
    t.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="gan only: sample from an exponential moving average of the generator (default on)")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="gan only: DiffAugment translation + cutout of what the discriminator sees (default off)")
    t.add_argument("--mode-seeking", type=float, help="gan only: weight of the mode-seeking (MSGAN) term (default 1; 0 = off)")
    t.add_argument("--n-train", type=int, help="train on this many images of the training split (default: all of it)")
    t.add_argument("--heldout-fraction", type=float, default=0.2, help="share of source files held out (default 0.2)")
    t.add_argument("--seed", type=int, default=0, help="split, initialisation and batches (default 0)")
    t.add_argument("--layout", help="dataset layout (default: detected)")
    t.add_argument("-o", "--option", action="append", type=option_value, metavar="KEY=VALUE",
                   help="reader option, e.g. -o label=1,2 (an MSD task with several labels: their union as one mask)")
    t.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (default 100)")
    t.add_argument("--save-minutes", type=float, default=2.0,
                   help="and at least every T minutes, whichever comes first (default 2; 0 = steps only)")
    t.add_argument("--log-every", type=int, default=20, help="progress line every N steps (default 20)")
    t.add_argument("--cache-dir", help="where decoded datasets are cached")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available); not part of the run's settings")
    t.set_defaults(func=run_train)

    s = sub.add_parser("sample", help="write N sampled pairs as an images/ + masks/ dataset",
                       description="Sample --n pairs; masks are thresholded to {0, 1} and written as 0/255 PNGs. "
                       "The folder is a dataset every metaseg command reads (generic layout).")
    s.add_argument("--checkpoint", required=True, help="last.ckpt of `metaseg synth train` (or its run folder)")
    s.add_argument("--n", type=int, required=True, help="number of pairs")
    s.add_argument("--out", required=True, help="new output folder (an existing non-empty one needs --overwrite)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--batch-size", type=int, default=64, help="pairs per batch (default 64)")
    s.add_argument("--sampler", default="ddim", help="diffusion only: ddim (default) or ddpm")
    s.add_argument("--sample-steps", type=int, default=50, help="diffusion only: DDIM denoising steps (default 50)")
    s.add_argument("--overwrite", action="store_true", help="replace this command's outputs in --out")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.set_defaults(func=run_sample)

    a = sub.add_parser("audit", help="memorisation audit of synthetic images against the training images",
                       description="For every synthetic image, the maximum Pearson correlation and SSIM against every "
                       "training image; fraction above --tau, histogram, closest pairs. With --checkpoint, --train is "
                       "narrowed to the images that generator saw and its held-out split is the no-memorisation "
                       "reference (or give --heldout).")
    a.add_argument("--synthetic", required=True, help="folder written by `metaseg synth sample` (or any dataset)")
    a.add_argument("--train", required=True, help="the generator's training dataset folder")
    a.add_argument("--out", required=True, help="report folder (new, or --overwrite)")
    a.add_argument("--checkpoint", help="the generator's last.ckpt: audit against its training split, reference = its held-out split")
    a.add_argument("--heldout", help="real images the generator never saw (the reference); overrides the checkpoint's split")
    a.add_argument("--tau", type=float, default=0.95, help="flag images whose max correlation exceeds this (default 0.95)")
    a.add_argument("--size", type=int, help="compare at this side length (default: the checkpoint's, else 64)")
    a.add_argument("--ssim-candidates", type=int, default=0,
                   help="SSIM against the K most correlated training images only (default 0 = all)")
    a.add_argument("--chunk", type=int, default=512, help="rows per correlation block (memory: chunk^2 floats)")
    a.add_argument("--top", type=int, default=8, help="closest pairs shown in the figure (default 8)")
    a.add_argument("--layout", help="layout of --train/--heldout (default: detected)")
    a.add_argument("-o", "--option", action="append", type=option_value, metavar="KEY=VALUE",
                   help="reader option of --train/--heldout (default: the --checkpoint's, e.g. label=1,2)")
    a.add_argument("--cache-dir", help="where decoded datasets are cached")
    a.add_argument("--overwrite", action="store_true", help="replace this command's outputs in --out")
    a.set_defaults(func=run_audit)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from metaseg.generative.trainer import RunConfig, pick_device, train
    from metaseg.models.generators import check_size

    if args.model not in GENERATORS:
        raise MetasegError(f"--model: unknown generator {args.model!r}; choose one of {', '.join(GENERATORS)}")
    config = RunConfig(model=args.model, dataset=str(Path(args.dataset).expanduser().resolve()), layout=args.layout,
                       size=check_size(args.size), width=args.width, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       n_train=args.n_train, heldout_fraction=args.heldout_fraction, reader_options=dict(args.option or []),
                       prediction=args.prediction, gan_options=gan_options(args))
    path = train(config, args.out, args.steps, args.save_every, args.log_every, args.cache_dir, device=pick_device(args.device),
                 save_minutes=args.save_minutes)
    print(path)
    return 0


def gan_options(args: argparse.Namespace) -> dict | None:
    """The GAN options given on the command line (the rest keep metaseg.generative.gan's defaults)."""
    given = {"arch": args.gan_arch, "mbstd": args.mbstd, "r1": args.r1, "ema": args.ema, "augment": args.augment,
             "mode_seeking": args.mode_seeking}
    return {k: v for k, v in given.items() if v is not None} or None


def run_sample(args: argparse.Namespace) -> int:
    from metaseg.generative.diffusion import SAMPLERS
    from metaseg.generative.sample import sample_to_folder
    from metaseg.generative.trainer import pick_device

    if args.sampler not in SAMPLERS:
        raise MetasegError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {args.sampler!r}")
    out = sample_to_folder(args.checkpoint, args.n, args.out, seed=args.seed, batch_size=args.batch_size,
                           overwrite=args.overwrite, device=pick_device(args.device), sampler=args.sampler, steps=args.sample_steps)
    print(out)
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from metaseg.generative.audit import run_audit as audit

    audit(args.synthetic, args.train, args.out, heldout=args.heldout, checkpoint=args.checkpoint, tau=args.tau,
          size=args.size, layout=args.layout, ssim_candidates=args.ssim_candidates, chunk=args.chunk, top=args.top,
          overwrite=args.overwrite, cache_dir=args.cache_dir, reader_options=dict(args.option) if args.option else None)
    return 0
