"""`metaseg meta-train --config experiments/<name>.yaml [--section.key value ...]` (LightningCLI).

Argument parsing only: the arguments go untouched to `metaseg.training.fit.meta_train`, the one
meta-training entry point (the benchmark uses it too). Fit selects on meta-validation, then reports
meta-test Dice/IoU of the best-on-validation checkpoint; `--ckpt_path` resumes a killed run.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "meta-train a learner from a YAML config (LightningCLI: --config FILE, dotted overrides, --ckpt_path to resume)"


def add_parser(subparsers: Any) -> None:
    # Registered for `metaseg --help` only: cli.py hands meta-train's argv straight to run_argv.
    parser = subparsers.add_parser("meta-train", help=HELP, add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_argv(list(args.rest))


def run_argv(argv: list[str]) -> int:
    """Entry point of `metaseg meta-train`; MetasegError propagates to cli.py (one-line message)."""
    from metaseg.training.fit import meta_train

    try:
        meta_train(argv, parser_kwargs={"prog": "metaseg meta-train", "description": HELP})
    except SystemExit as exc:  # --help / --print_config
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(run_argv(sys.argv[1:]))
