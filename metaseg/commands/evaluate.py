"""`metaseg evaluate`: K-shot episodes on a held-out dataset, per-episode CSV and a summary with 95% CIs."""
from __future__ import annotations

import argparse

from metaseg.commands.options import add_cam_prompts_option, add_device_option, add_precision_option
from metaseg.commands.reader_args import add_reader_options, reader_options
from metaseg.jobs.methods import BASELINES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="few-shot evaluation of a checkpoint (or the scratch baseline) on a dataset",
        description="For each K in --shots, draw --episodes episodes (K support + disjoint queries) from --dataset "
        "with --seed, adapt on the support, score the queries per image; writes episodes.csv, images.csv and "
        "summary.md (mean ± 95%% CI over per-image scores pooled across episodes). Every option and every K "
        "is checked against the dataset before any work.",
    )
    parser.add_argument("--checkpoint", help="a .ckpt written by `metaseg meta-train`; 'none' (or omitted) = scratch baseline")
    parser.add_argument("--method", choices=BASELINES,
                        help="a baseline instead of --checkpoint: scratch trains a random init on each support; "
                             "support_prior predicts the mean support mask cut to the supports' mean area (the floor to beat); "
                             "medsam_lite_zeroshot = the pretrained LiteMedSAM base with a whole-image box; "
                             "medsam_lite_finetune = that base fine-tuned on each support (Adam, lr 3e-4, --steps, default 10); "
                             "incontext_sam_transfer = in-context, nothing trained (LiteMedSAM label transfer, docs/incontext.md)")
    parser.add_argument("--dataset", required=True, help="dataset folder (or a name under the data root, or synthetic:<family>)")
    add_reader_options(parser, "--dataset")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="K values (default 1 5 10)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per K (default 20)")
    parser.add_argument("--queries", type=int, default=15, help="query images per episode (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed: the same seed gives the same episodes (default 0)")
    parser.add_argument("--steps", type=int, help="adaptation steps (default: the learner's; scratch: 100)")
    parser.add_argument("--size", type=int, help="image size (default: the checkpoint's training size, else 128)")
    parser.add_argument("--cache-dir", help="where decoded datasets are cached")
    add_cam_prompts_option(parser)
    add_device_option(parser)
    add_precision_option(parser)
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace this command's outputs in a non-empty --out")
    parser.add_argument("--allow-seen", action="store_true",
                        help="score images the checkpoint was meta-trained or meta-validated on (refused by default; "
                             "the summary then says how many query images were seen)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaseg.jobs.evaluate import run_evaluate

    run_evaluate(
        checkpoint=args.checkpoint, dataset=args.dataset, out=args.out, shots=args.shots, episodes=args.episodes,
        seed=args.seed, steps=args.steps, size=args.size, layout=args.layout, queries=args.queries,
        method=args.method, overwrite=args.overwrite, cache_dir=args.cache_dir, device=args.device,
        reader_options=reader_options(args), allow_seen=args.allow_seen, cam_prompts=args.cam_prompts,
    )
    return 0
