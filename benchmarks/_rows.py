"""JSON-lines rows files of the resumable benchmarks (one finished run per line, skipped when rerun),
and the atomic write of the reports made from them. Shared by benchmarks.synthetic and
benchmarks.genseg, so both survive a kill the same way."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of the rows file; a torn last line (a kill during a write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """One line in one write (O_APPEND), so invocations running side by side do not interleave; after a
    torn last line (a kill mid-write) the row starts on a new line, so only the torn one is lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(row) + "\n")


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
