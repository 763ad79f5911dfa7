"""`metaseg` console script: dispatches to one module per subcommand.

Every user-fixable problem is a MetasegError and is printed as one line (exit code 2),
never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from metaseg.errors import MetasegError, command_flags

# subcommand -> module in metaseg.commands (imported lazily so `metaseg data list` starts fast)
SUBCOMMANDS = {
    "data": "data",
    "meta-train": "train",
    "adapt": "adapt",
    "evaluate": "evaluate",
    "synth": "synth",
    "genseg": "genseg",
}


class Parser(argparse.ArgumentParser):
    """Every metaseg parser (subcommands inherit the class): a usage error is one line naming the
    option (exit code 2), and an option must be typed in full (no silent abbreviations: `--query`
    is not taken for `--queries`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flags_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The option strings of the (sub)command that parsed `args` (e.g. `metaseg data check`)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen is None:
            return {flag for action in parser._actions for flag in action.option_strings}
        parser = subs[0].choices[chosen]


def pop_threads(argv: list[str]) -> tuple[int | None, list[str]]:
    """`metaseg --threads N <command> ...`: the one option every subcommand shares, taken off the
    front before dispatch (meta-train hands the rest to LightningCLI untouched)."""
    if not argv or not (argv[0] == "--threads" or argv[0].startswith("--threads=")):
        return None, argv
    value, rest = (argv[0].split("=", 1)[1], argv[1:]) if "=" in argv[0] else (argv[1] if len(argv) > 1 else "", argv[2:])
    if not value.isdigit() or int(value) < 1:
        raise MetasegError(f"--threads: expected a whole number >= 1, got {value!r}")
    return int(value), rest


def set_threads(threads: int) -> None:
    """Pin torch's CPU threads: on a small or shared CPU, fewer intra-op threads than cores is
    often several times faster for metaseg's small convolutions (README, "CPU threads")."""
    import torch

    torch.set_num_threads(threads)


def add_unavailable(sub: argparse._SubParsersAction, name: str, module: str, exc: BaseException) -> None:
    """A subcommand whose module failed to import stays listed and says why in one line when run
    (argparse would otherwise call it an invalid choice)."""
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    parser = sub.add_parser(name, help=f"(unavailable: {reason})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def fail(args: argparse.Namespace) -> int:
        raise MetasegError(f"{name}: unavailable, importing {module} failed ({reason})")

    parser.set_defaults(func=fail)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        threads, argv = pop_threads(argv)
    except MetasegError as exc:
        print(f"metaseg: error: {exc}", file=sys.stderr)
        return 2
    if threads:
        set_threads(threads)
    parser = Parser(prog="metaseg", description="Few-shot meta-learning of medical image segmentation",
                    epilog="Global option, before the command: --threads N pins torch's CPU threads.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    modules = {}
    for name, mod in SUBCOMMANDS.items():
        try:
            modules[name] = importlib.import_module(f"metaseg.commands.{mod}")
        except Exception as exc:  # noqa: BLE001 - any import failure: the other commands still work
            add_unavailable(sub, name, f"metaseg.commands.{mod}", exc)
            continue
        modules[name].add_parser(sub)
    # meta-train hands its arguments to LightningCLI untouched
    if argv and argv[0] == "meta-train" and "meta-train" in modules:
        try:
            return modules["meta-train"].run_argv(argv[1:])
        except MetasegError as exc:
            print(f"metaseg: error: {exc}", file=sys.stderr)
            return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (one line, see Parser) or --help
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with command_flags(flags_of(parser, args)):  # errors suggest only options this command has
            return int(args.func(args) or 0)
    except MetasegError as exc:
        print(f"metaseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metaseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
