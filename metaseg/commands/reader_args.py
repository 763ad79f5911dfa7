"""The dataset reader options, defined once for every command that reads a dataset (data check,
data sample: ROOT + these; adapt --support/--images; evaluate --dataset). Experiment configs take
the same names as task-spec keys (metaseg.data.tasks). One module that the commands import, so
no command module imports another."""
from __future__ import annotations

import argparse
from typing import Any

import yaml

# flag -> reader option (the task-spec key of an experiment config)
READER_FLAGS = {"--images-dir": "images_dir", "--masks-dir": "masks_dir", "--mask-suffix": "mask_suffix"}


def option_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE with a YAML value (so 2 -> int, true -> bool, [-160, 240] -> list)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def add_reader_options(parser: argparse.ArgumentParser, what: str = "the dataset") -> None:
    """--layout, --category and the reader options of `what`."""
    parser.add_argument("--layout", help=f"layout of {what} (default: detected; see `metaseg data list`)")
    parser.add_argument("--category", help="only this class, e.g. melanoma or non-melanoma (ISIC with a class CSV)")
    parser.add_argument("--images-dir", help="generic layout: images folder relative to the dataset folder")
    parser.add_argument("--masks-dir", help="generic layout: masks folder relative to the dataset folder")
    parser.add_argument("--mask-suffix", help="generic layout: mask stem suffix, e.g. _mask")
    parser.add_argument("-o", "--option", action="append", type=option_value, metavar="KEY=VALUE",
                        help="other reader option, e.g. -o split=training, -o label=2 (see `metaseg data list`)")


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """ROOT and the reader options: the data subcommands' dataset argument."""
    parser.add_argument("root", metavar="ROOT", help="dataset folder")
    add_reader_options(parser)


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """Reader options (and category) from the flags of `add_reader_options`, as task-spec keys."""
    options = dict(args.option or [])
    for key in (*READER_FLAGS.values(), "category"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    return options
