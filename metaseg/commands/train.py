"""`metaseg meta-train --config experiments/<name>.yaml [--section.key value ...]` (LightningCLI).

Argument parsing only: the arguments go untouched to `metaseg.training.fit.meta_train`, the one
meta-training entry point (the benchmark uses it too). Fit selects on meta-validation, then reports
meta-test Dice/IoU of the best-on-validation checkpoint; `--ckpt_path` resumes a killed run.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = ("meta-train a learner from a YAML config (LightningCLI: --config FILE, dotted overrides, --ckpt_path to resume; "
        "--precision fp32|bf16-mixed)")


def add_parser(subparsers: Any) -> None:
    # Registered for `metaseg --help` only: cli.py hands meta-train's argv straight to run_argv.
    parser = subparsers.add_parser("meta-train", help=HELP, add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_argv(list(args.rest))


TRAINER_PRECISION = {"fp32": "32-true", "bf16-mixed": "bf16-mixed"}


def precision_argv(argv: list[str]) -> list[str]:
    """`--precision fp32|bf16-mixed` (the option adapt and evaluate have) as Lightning's
    `--trainer.precision 32-true|bf16-mixed`: under bf16-mixed Lightning runs every training and
    validation step in torch.autocast(bfloat16), CPU or CUDA (see metaseg.meta.core.autocast)."""
    from metaseg.errors import MetasegError

    out, extra, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--precision" or arg.startswith("--precision="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if value not in TRAINER_PRECISION:
                raise MetasegError(f"--precision must be one of {', '.join(TRAINER_PRECISION)} (got {value!r})")
            extra = ["--trainer.precision", TRAINER_PRECISION[value]]  # last: it wins over --config
            i += 1 if "=" in arg else 2
            continue
        out.append(arg)
        i += 1
    return out + extra


def run_argv(argv: list[str]) -> int:
    """Entry point of `metaseg meta-train`; MetasegError propagates to cli.py (one-line message)."""
    from metaseg.training.fit import meta_train

    argv = precision_argv(list(argv))
    try:
        meta_train(argv, parser_kwargs={"prog": "metaseg meta-train", "description": HELP})
    except SystemExit as exc:  # --help / --print_config
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(run_argv(sys.argv[1:]))
