"""One exception type for every problem a user can fix; the CLI prints it as one line.

How a message names an option depends on where the user can set it: a flag of the command being
run, or a key of an experiment config. The CLI records the flags of the command it runs
(`command_flags`), so that an error deep in the data layer suggests only options that command has.
"""
from __future__ import annotations

import contextvars
import numbers
from contextlib import contextmanager
from typing import Iterable, Iterator


class MetasegError(Exception):
    """A user-facing error: its message names the file or option at fault and is shown without a traceback."""


_FLAGS: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("metaseg_flags", default=None)
CONFIG_NAMES = {"cache_dir": "data.cache_dir", "layout": "layout in the task spec"}


def option(key: str) -> str | None:
    """`images_dir` -> '--images-dir' when the running command has that flag, None when it has not;
    outside a command (an experiment config, library code) the config key."""
    flags = _FLAGS.get()
    if flags is None:
        return CONFIG_NAMES.get(key, key)
    flag = "--" + key.replace("_", "-")
    return flag if flag in flags else None


@contextmanager
def command_flags(flags: Iterable[str]) -> Iterator[None]:
    """Within this block, `option()` names the flags of the command being run."""
    token = _FLAGS.set(frozenset(flags))
    try:
        yield
    finally:
        _FLAGS.reset(token)


def at_least(option: str, value: object, minimum: int) -> None:
    """The one check (and message) of a whole-number option with a lower bound; None = not given."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MetasegError(f"{option} must be a whole number (got {value!r})")
    if value < minimum:
        raise MetasegError(f"{option} must be >= {minimum} (got {value})")
