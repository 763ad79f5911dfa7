"""`metaseg data sample ROOT --shots K --queries Q --episodes N --seed S`: show which images episodes use.

Prints one JSON line per episode: {"episode", "task", "support", "query"} with example ids.
The ids are exactly those that `EpisodeSampler(...).sample(i)` (stream "train", no task mixing)
would use for the same task, seed and index; no pixels are converted to tensors.
"""
from __future__ import annotations

import argparse
import json
import sys

from metaseg.commands.reader_args import add_reader_arguments, reader_options


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `sample` under `metaseg data` (called by metaseg/commands/data.py)."""
    parser = subparsers.add_parser(
        "sample",
        help="print the support/query ids of seeded episodes as JSON lines",
        description="Print one JSON line per episode. ROOT is a dataset folder or synthetic:<family> "
        "(e.g. synthetic:dark_blob; -o n=32 sets its size).",
    )
    add_reader_arguments(parser)
    parser.add_argument("--shots", type=int, default=5, help="support images per episode (K)")
    parser.add_argument("--queries", type=int, default=15, help="query images per episode (Q; the same option as evaluate's)")
    parser.add_argument("--episodes", type=int, default=5, help="number of episodes to print")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (same seed, same episodes)")
    parser.add_argument("--size", type=int, default=128, help="cached image size (as used for meta-training)")
    parser.add_argument("--cache-dir", help="cache folder (default: metaseg's cache)")
    parser.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from metaseg.data.episodes import EpisodeSampler, check_episode_counts
    from metaseg.data.tasks import SYNTHETIC_PREFIX, TaskSpec, count_images, load_spec
    from metaseg.jobs import checks

    checks.at_least("--episodes", args.episodes, 1)
    checks.at_least("--seed", args.seed, 0)
    checks.image_size("--size", args.size)
    check_episode_counts([args.shots], args.queries, {})
    root = args.root
    if not root.startswith(SYNTHETIC_PREFIX):
        root = str(checks.existing_folder("ROOT", root).resolve())  # a folder typed on the command line is relative to the cwd
    spec = TaskSpec.coerce({"root": root, "layout": args.layout, **reader_options(args)})
    check_episode_counts([args.shots], args.queries, {spec.name: count_images(spec)}, cap_queries=False)
    task = load_spec(spec, size=args.size, cache_dir=args.cache_dir)
    sampler = EpisodeSampler([task], shots=args.shots, queries=args.queries, seed=args.seed)
    for i in range(args.episodes):
        ids = sampler.sample_ids(i)
        line = {"episode": i, "task": ids["task"], "support": ids["support"], "query": ids["query"]}
        sys.stdout.write(json.dumps(line) + "\n")
    return 0
