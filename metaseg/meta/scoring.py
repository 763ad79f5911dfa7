"""Scoring one episode: adapt on its support, predict its query in chunks, per-image Dice and IoU.

The one definition shared by meta-validation/test inside training (`MetaSegModule`) and by the
evaluation jobs (`metaseg evaluate`, the benchmark, the demo), so that a checkpoint's validation
Dice and its evaluated Dice are computed the same way.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.metrics import dice_iou_per_image

QUERY_CHUNK = 16  # query images predicted at once: bounds memory on large query sets, no effect on scores


@dataclass
class Scores:
    """Per-image query Dice and IoU of one episode; `loss` (mean over query images) when asked for."""

    dice: list[float]
    iou: list[float]
    loss: float | None = None


def score_episode(
    model: nn.Module, learner: nn.Module, episode: Episode, steps: int | None = None, chunk: int = QUERY_CHUNK,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Scores]:
    """{suffix: Scores} after ONE adaptation (the expensive part) on the support set.

    `variants` ({suffix: {model attribute: value}}, e.g. {"": {}, "_refine": {"refine": 1}}) scores
    several prediction modes of the same fast weights; the attributes are restored afterwards.
    Without variants the result is {"": Scores}. `loss_fn(logits, target)` adds the query loss,
    averaged over chunks weighted by their size (exact for per-pixel and per-image mean losses).
    """
    with torch.enable_grad():
        fast = learner.adapt(model, episode.support_x, episode.support_y, steps=steps)
    scores = {}
    n = episode.query_x.shape[0]
    for suffix, overrides in (variants or {"": {}}).items():
        dice, iou, loss = [], [], 0.0
        with model_attributes(model, overrides), torch.no_grad():
            for start in range(0, n, chunk):
                logits = learner.predict(model, fast, episode.query_x[start:start + chunk]).float()
                target = episode.query_y[start:start + chunk]
                d, i = dice_iou_per_image(logits, target)
                dice += d.tolist()
                iou += i.tolist()
                if loss_fn is not None:
                    loss += float(loss_fn(logits, target)) * logits.shape[0] / n
        scores[suffix] = Scores(dice, iou, loss if loss_fn is not None else None)
    return scores


@contextmanager
def model_attributes(model: nn.Module, overrides: Mapping[str, Any]) -> Iterator[None]:
    """Temporarily set attributes the model exposes as prediction options (unknown ones are an error)."""
    old = {}
    for name, value in overrides.items():
        if not hasattr(model, name):
            raise MetasegError(f"variant option {name!r}: a {type(model).__name__} has no such prediction option")
        old[name] = getattr(model, name)
        setattr(model, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(model, name, value)
