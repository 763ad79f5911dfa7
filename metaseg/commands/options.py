"""--device, defined once for the commands that run a network (adapt, evaluate)."""
from __future__ import annotations

import argparse

from metaseg.jobs.methods import DEVICES


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto (default: cuda when available, else cpu), cpu or cuda")
