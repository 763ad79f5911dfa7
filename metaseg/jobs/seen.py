"""Images a checkpoint was meta-trained or meta-validated on, found again in `evaluate` and `adapt`.

A checkpoint records the fingerprints of every meta-train and meta-val image (`metaseg.data.
fingerprints`: exact content hashes and perceptual hashes). Scoring a checkpoint on such images
overstates it, so `evaluate` refuses them (unless --allow-seen, then its summary says how many
query images were seen) and `adapt` flags them in predictions.csv and its summary. Exact copies
are certain; near-duplicates (the same picture resized, re-encoded or slightly cropped) are counted
apart. Generated (synthetic:<family>) images are compared by exact hash only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metaseg.data.fingerprints import Fingerprints, hash64, perceptual_hash, perceptual_hashes
from metaseg.data.tasks import SYNTHETIC_PREFIX
from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError

EXACT, NEAR = "exact", "near-duplicate"


def recorded(info: dict[str, Any]) -> Fingerprints | None:
    """The training images a checkpoint records (None for baselines and checkpoints that record none)."""
    return Fingerprints.from_record(info.get("seen")) if info.get("seen") is not None else None


def _kinds(exact: np.ndarray, near: np.ndarray) -> list[str]:
    return [EXACT if e else NEAR if n else "" for e, n in zip(exact, near)]


def _counts(kinds: Sequence[str]) -> str:
    return (f"{sum(k == EXACT for k in kinds)} exact copies, {sum(k == NEAR for k in kinds)} near-duplicates "
            "by perceptual hash")


@dataclass
class SeenInTask:
    """Which rows of an evaluation task the checkpoint saw in training ('exact', 'near-duplicate' or '')."""

    task: TaskArrays
    kinds: list[str] = field(default_factory=list)
    checked: bool = True

    @property
    def count(self) -> int:
        return sum(bool(k) for k in self.kinds)

    def summary_lines(self, query_ids: Sequence[str]) -> list[str]:
        """What summary.md says: how many of the scored query images (pooled over episodes) were seen."""
        if not self.checked:
            return ["seen in training: not checked (the checkpoint records no training images)"]
        by_id = dict(zip(self.task.ids, self.kinds))
        kinds = [by_id.get(i, "") for i in query_ids]
        seen = sum(bool(k) for k in kinds)
        line = f"query images seen in the checkpoint's meta-training or meta-validation: {seen} of {len(kinds)} scored"
        return [line + (f" ({_counts(kinds)}; --allow-seen: scores include them)" if seen else "")]


def check_evaluation_task(info: dict[str, Any], task: TaskArrays, allow_seen: bool, what: str) -> SeenInTask | None:
    """Refuse (MetasegError, one line) a task holding images the checkpoint was trained or selected on,
    unless allow_seen. None for a baseline (nothing was trained)."""
    if "path" not in info:
        return None
    prints = recorded(info)
    if prints is None:
        return SeenInTask(task, checked=False)
    exact, near = prints.match(hash64(task.hashes), perceptual_hashes(task.images))
    near &= ~np.char.startswith(np.array(task.sources, dtype=str), SYNTHETIC_PREFIX)  # generated: exact hash only
    found = SeenInTask(task, _kinds(exact, near))
    if found.count and not allow_seen:
        example = task.sources[next(i for i, k in enumerate(found.kinds) if k)]
        raise MetasegError(
            f"{what}: {found.count} of {len(task)} images were used in this checkpoint's meta-training or "
            f"meta-validation ({_counts(found.kinds)}), e.g. {example}; their scores would overstate it: "
            "evaluate on other images, or pass --allow-seen to score them anyway"
        )
    return found


class SeenFlagger:
    """Per-image flag for `adapt`: is this file (bytes, or picture) one the checkpoint trained on?"""

    def __init__(self, info: dict[str, Any]) -> None:
        self.prints = recorded(info)
        self.kinds: list[str] = []
        self.example: str | None = None

    def flag(self, path: Path, image_hwc: np.ndarray, content_hash: str) -> str:
        if self.prints is None:
            return ""
        exact, near = self.prints.match(hash64([content_hash]), perceptual_hash(image_hwc)[None])
        self.kinds += _kinds(exact, near)
        if self.kinds[-1] and self.example is None:
            self.example = str(path)
        return self.kinds[-1]

    @property
    def count(self) -> int:
        return sum(bool(k) for k in self.kinds)

    def summary(self) -> str | None:
        """One line for adapt's output, or None when nothing was seen (or nothing could be checked)."""
        if not self.count:
            return None
        return (f"{self.count} of {len(self.kinds)} images were used in this checkpoint's meta-training or meta-validation "
                f"({_counts(self.kinds)}), e.g. {self.example}; flagged in predictions.csv (seen_in_training) "
                "and their scores overstate it")
