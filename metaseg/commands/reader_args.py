"""The dataset arguments every `metaseg data` subcommand shares (ROOT, --layout, reader options):
one module that data.py and data_sample.py both import, so neither imports the other back."""
from __future__ import annotations

import argparse
from typing import Any

import yaml


def _option(text: str) -> tuple[str, Any]:
    """KEY=VALUE with a YAML value (so 2 -> int, true -> bool, [-160, 240] -> list)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """Reader options from --images-dir/--masks-dir/--mask-suffix and repeated -o KEY=VALUE."""
    options = dict(args.option or [])
    for name in ("images_dir", "masks_dir", "mask_suffix"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """ROOT, --layout, --category and reader options; shared by the data subcommands."""
    parser.add_argument("root", metavar="ROOT", help="dataset folder")
    parser.add_argument("--layout", help="dataset layout (default: detected; see `metaseg data list`)")
    parser.add_argument("--category", help="only this class, e.g. melanoma or non-melanoma (ISIC with a class CSV)")
    parser.add_argument("--images-dir", help="generic layout: images folder relative to ROOT")
    parser.add_argument("--masks-dir", help="generic layout: masks folder relative to ROOT")
    parser.add_argument("--mask-suffix", help="generic layout: mask stem suffix, e.g. _mask")
    parser.add_argument("-o", "--option", action="append", type=_option, metavar="KEY=VALUE",
                        help="other reader option, e.g. -o split=training, -o label=2 (see `metaseg data list`)")
