"""torch.load(weights_only=True) for files users hand in, with one-line errors that say what a file
is not (rather than torch's internal cause) and never pass on torch's advice to allowlist globals.

Shared by every reader of a checkpoint (meta-training checkpoints, `metaseg synth` checkpoints), so
it lives below both.
"""
from __future__ import annotations

import pickle
import pickletools
import re
from pathlib import Path
from typing import Any

import torch

from metaseg.errors import MetasegError


def load_weights_only(path: Path, what: str = "--checkpoint") -> Any:
    """torch.load(weights_only=True) with one-line errors that say what the file is (not torch's internals,
    and never torch's advice on how to load a refused file anyway)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals that are not tensors/containers: code or custom classes.
        # torch's own advice (allowlist the global, or weights_only=False) is not passed on.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None and not _builds_objects(path):  # damaged, or opcodes the safe loader does not read
            raise MetasegError(f"{what}: {path} {_what_it_is_not(path)}") from None
        held = f" ({found.group(1)})" if found else ""
        raise MetasegError(
            f"{what}: {path} was refused: it holds code or Python objects{held}, not only tensors and plain "
            "values, and metaseg never loads those"
        ) from None
    except Exception:  # noqa: BLE001 - torch raises many types for garbage (IndexError, KeyError, EOFError, ...)
        raise MetasegError(f"{what}: {path} {_what_it_is_not(path)}") from None


OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _builds_objects(path: Path) -> bool:
    """Whether a pickle stream imports or calls anything (parsed with pickletools, never executed)."""
    try:
        with open(path, "rb") as fh:
            for opcode, _, _ in pickletools.genops(fh):
                if opcode.name in OBJECT_OPCODES:
                    return True
    except Exception:  # noqa: BLE001 - a damaged stream: what was parsed so far is the answer
        pass
    return False


def _what_it_is_not(path: Path) -> str:
    """Why torch could not read a file, from its first bytes (torch's internal error says nothing useful)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "is a zip file but not a readable torch checkpoint (corrupt or truncated)"
    if head[:1] == b"\x80":
        return "is a pickle file but not a readable torch checkpoint (corrupt, truncated or not written by torch.save)"
    if not head:
        return "is empty, not a torch checkpoint"
    return "is not a torch checkpoint (neither a zip archive nor a pickle file)"
