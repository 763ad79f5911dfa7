"""The one way a command prepares its output folder (--out).

`OutputFolder(path, owned, overwrite).check()` refuses, before any work, a path that is a file or a
non-empty folder without --overwrite; it creates nothing. `with folder.writing():` then creates the
folder and, with --overwrite, sets this command's previous outputs (`owned` names) aside. If the
block fails, everything the run created is removed and what was set aside is put back, so a failed
or interrupted run leaves --out exactly as it found it; on success the old outputs are deleted.
Files in --out that the command does not own are never touched.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from metaseg.errors import MetasegError


@dataclass
class OutputFolder:
    path: Path
    owned: Sequence[str]  # top-level names this command writes in the folder
    overwrite: bool = False
    option: str = "--out"

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()

    def check(self) -> "OutputFolder":
        """Refuse an unusable --out; no side effects."""
        if self.path.exists() and not self.path.is_dir():
            raise MetasegError(f"{self.option} {self.path} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.overwrite:
            raise MetasegError(f"{self.option} {self.path} already exists and is not empty; choose a new folder or pass --overwrite "
                               f"(which replaces only {', '.join(self.owned)})")
        return self

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Create the folder for the duration of a run; undo everything if the run fails."""
        self.check()
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=".metaseg-replaced-", dir=self.path))
        for name in self.owned:
            if (self.path / name).exists() or (self.path / name).is_symlink():
                (self.path / name).rename(aside / name)
        try:
            yield self.path
        except BaseException:
            for name in self.owned:
                _remove(self.path / name)
                if (aside / name).exists() or (aside / name).is_symlink():
                    (aside / name).rename(self.path / name)
            shutil.rmtree(aside, ignore_errors=True)
            for folder in created:  # innermost first; only folders this run made, and only if empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
