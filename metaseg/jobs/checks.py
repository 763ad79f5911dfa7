"""Checks every job runs on its options before it builds a model or decodes an image.

Each failure is one MetasegError naming the option as the user typed it, so a wrong value costs
nothing (no model load, no cache fill, no half-written --out).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from metaseg.errors import MetasegError, at_least  # noqa: F401  (at_least: re-exported for the jobs)

MIN_SIZE = 8  # smallest network input side the cache accepts


def image_size(option: str, value: int | None) -> None:
    """--size: not given, or a square side >= MIN_SIZE (0 is refused, not read as 'not given')."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < MIN_SIZE):
        raise MetasegError(f"{option} must be an image side >= {MIN_SIZE} px, e.g. 128 (got {value!r})")


def unit_interval(option: str, value: float | None, open_ends: bool = False) -> None:
    """A number in [0, 1] (in (0, 1) with `open_ends`); None = not given."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (0 < value < 1 if open_ends else 0 <= value <= 1)
    if not ok:
        raise MetasegError(f"{option} must be a number {'strictly ' if open_ends else ''}between 0 and 1 (got {value!r})")


def existing_folder(option: str, value: str | Path) -> Path:
    """A folder the user named on the command line (relative to the working directory)."""
    path = Path(value).expanduser()
    if not path.exists():
        raise MetasegError(f"{option} {value}: no such folder")
    if not path.is_dir():
        raise MetasegError(f"{option} {value}: not a folder")
    return path


def checkpoint_file(option: str, value: str | Path) -> None:
    """A readable metaseg checkpoint (read with weights_only; no model is built)."""
    from metaseg.checkpoints import read_checkpoint

    read_checkpoint(value, option)


def cam_prompter_file(option: str, value: str | Path | None) -> None:
    """--cam-prompts: not given, or a prompter file `metaseg adapt --method sam_mix` wrote (read with
    weights_only; no model is built)."""
    if value is not None:
        from metaseg.models.sam_mix import read_cam_prompter

        read_cam_prompter(value, option)


def precision(option: str, value: str) -> None:
    """--precision: one of metaseg.meta.core.PRECISIONS."""
    from metaseg.meta.core import PRECISIONS

    if value not in PRECISIONS:
        raise MetasegError(f"{option} must be one of {', '.join(PRECISIONS)} (got {value!r})")
