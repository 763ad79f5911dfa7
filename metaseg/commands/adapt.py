"""`metaseg adapt`: adapt a checkpoint (or train from scratch) on K labelled images, segment a folder."""
from __future__ import annotations

import argparse

from metaseg.commands.options import add_cam_prompts_option, add_device_option, add_precision_option
from metaseg.commands.reader_args import add_reader_options, reader_options
from metaseg.jobs.methods import BASELINES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt",
        help="adapt to a new dataset from K labelled images and write masks for a folder of images",
        description="Adapt a meta-trained checkpoint (or, without --checkpoint, a randomly initialised U-Net: "
        "the scratch baseline; a transfer checkpoint is fine-tuned) on K labelled pairs of --support, "
        "then write binary masks at each image's original size, overlays and per-image Dice/IoU. "
        "Every option and path is checked before any work.",
    )
    parser.add_argument("--checkpoint", help="a .ckpt written by `metaseg meta-train` (omit or 'none': scratch baseline)")
    parser.add_argument("--method", choices=["sam_mix", *BASELINES],
                        help="instead of --checkpoint: incontext_sam_transfer = segment from the K supports with nothing trained "
                             "(LiteMedSAM label transfer, docs/incontext.md); medsam_lite_zeroshot / medsam_lite_finetune = the "
                             "pretrained base (whole-image box; fine-tuned --steps, default 10); support_prior; scratch; "
                             "sam_mix: see below")
    parser.add_argument("--support", required=True, help="labelled dataset folder (any readable layout, incl. generic images/ + masks/)")
    parser.add_argument("--images", required=True, help="images to segment: a plain folder, or a dataset folder (its masks are ground truth)")
    add_reader_options(parser, "--support (and --images)")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--shots", type=int, default=5, help="number of support pairs K (default 5)")
    parser.add_argument("--steps", type=int, help="adaptation steps (default: the learner's; scratch: 100)")
    parser.add_argument("--seed", type=int, default=0, help="which K support pairs are drawn; scratch init (default 0)")
    parser.add_argument("--size", type=int, help="network input size (default: the checkpoint's training size, else 128)")
    parser.add_argument("--cache-dir", help="where decoded datasets are cached (default $METASEG_CACHE or ~/.cache/metaseg)")
    add_cam_prompts_option(parser)
    add_device_option(parser)
    add_precision_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace this command's outputs in a non-empty --out")
    sam_mix = parser.add_argument_group("--method sam_mix (no checkpoint: K masks + image-level labels, docs/sam_mix.md)")
    sam_mix.add_argument("--labels", help="CSV of image-level labels: an id or file-name column and a label column "
                         "(1/0, a number >= 0.5 = present, yes/no, present/absent or a class name); default: the dataset's class folders")
    sam_mix.add_argument("--label-column", help="--labels column (header name) holding the label (default: the non-id column of a two-column CSV)")
    sam_mix.add_argument("--id-column", help="--labels column (header name) holding the image id or file name "
                         "(default: the first named id/image/image_id/filename/name, else the first column)")
    sam_mix.add_argument("--absent-class", default="normal", help="the class without the structure (default normal, as in BUSI)")
    sam_mix.add_argument("--warmup", type=int, help="classifier-only steps before the joint ones (default 100; --steps: joint steps, default 200)")
    sam_mix.add_argument("--prompts", default="box+dense", choices=["box+dense", "box", "dense", "whole"], help="what the CAM gives the decoder")
    sam_mix.add_argument("--cam-threshold", type=float, help="CAM level (of its maximum) that makes the prompt mask (default 0.7, chosen on validation masks: docs/sam_mix.md)")
    sam_mix.add_argument("--presence-threshold", type=float, help="presence probability below which a mask is empty; 0 = no gate, labels may all be present "
                         "(default: chosen by balanced accuracy on a held-out --val-fraction of the labelled images without a mask)")
    sam_mix.add_argument("--refine", type=int, default=0, help="box-refinement rounds at inference: the predicted mask's box "
                         "replaces the CAM box, the decoder runs again (default 0: the CAM box only)")
    sam_mix.add_argument("--val-fraction", type=float, default=0.2, help="share of each class's unmasked labelled images held out to choose the presence threshold (default 0.2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaseg.jobs.adapt import run_adapt

    if args.method == "sam_mix":
        from metaseg.errors import MetasegError
        from metaseg.jobs.sam_mix import run_sam_mix_adapt

        if args.checkpoint:
            raise MetasegError("--method sam_mix trains from the packaged LiteMedSAM base; drop --checkpoint")
        run_sam_mix_adapt(
            support=args.support, images=args.images, out=args.out, shots=args.shots, labels=args.labels,
            absent_class=args.absent_class, label_column=args.label_column, id_column=args.id_column, steps=args.steps, warmup=args.warmup, layout=args.layout, seed=args.seed,
            size=args.size, prompts=args.prompts, cam_threshold=args.cam_threshold,
            presence_threshold=args.presence_threshold, val_fraction=args.val_fraction, refine=args.refine, overwrite=args.overwrite,
            cache_dir=args.cache_dir,
        )
        return 0

    run_adapt(
        checkpoint=args.checkpoint, support=args.support, images=args.images, out=args.out, shots=args.shots,
        steps=args.steps, layout=args.layout, seed=args.seed, size=args.size, overwrite=args.overwrite,
        cache_dir=args.cache_dir, device=args.device, precision=args.precision, reader_options=reader_options(args),
        cam_prompts=args.cam_prompts, method=args.method,
    )
    return 0
