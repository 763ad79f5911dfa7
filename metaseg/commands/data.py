"""`metaseg data check|list` (`sample` lives in metaseg.commands.data_sample)."""
from __future__ import annotations

import argparse
import json

from metaseg.commands.reader_args import add_reader_arguments, reader_options
from metaseg.jobs import checks


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="check and list datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="{check,list,sample}")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    check = sub.add_parser("check", help="validate a dataset folder and name every problem file")
    add_reader_arguments(check)
    check.add_argument("--size", type=int, help="report the cached size (size x size) too")
    check.add_argument("--fast", action="store_true", help="only list pairs and missing masks (no decoding)")
    check.add_argument("--limit", type=int, default=10, help="files listed per finding (0 = all; errors are always all)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=run_check)

    lst = sub.add_parser("list", help="show the known dataset layouts")
    lst.set_defaults(func=run_list)

    from metaseg.commands.data_sample import add_sample_parser

    add_sample_parser(sub)


def run_check(args: argparse.Namespace) -> int:
    from metaseg.data.check import check_dataset, format_report

    checks.image_size("--size", args.size)
    checks.at_least("--limit", args.limit, 0)
    options = reader_options(args)
    report = check_dataset(args.root, args.layout, decode=not args.fast, **options)
    if args.json:
        print(json.dumps({**report.to_dict(), "size": args.size}, indent=1))
    else:
        print(format_report(report, limit=args.limit, size=args.size))
    return 0 if report.usable else 1


def run_list(args: argparse.Namespace) -> int:
    from metaseg.data.readers import LAYOUTS

    width = max(map(len, LAYOUTS))
    for layout in LAYOUTS.values():
        opts = f" [options: {', '.join(layout.options)}]" if layout.options else ""
        print(f"{layout.name:<{width}}  {layout.description}{opts}")
    return 0


def run(args: argparse.Namespace) -> int:
    return args.func(args)
