"""`sam_adapter`: MAML, first-order MAML or iMAML over a SAM model's adapters + mask decoder.

Nothing SAM-specific happens in the meta-gradient: `metaseg.models.sam` leaves only the LoRA
adapters and the mask decoder with requires_grad=True, and every learner differentiates exactly
the model's requires_grad parameters. This alias only picks the algorithm and checks that the
configured model really is SAM (`learner: {name: sam_adapter, algorithm: imaml, ...}` with a
U-Net would otherwise silently meta-learn the whole U-Net).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.meta.base import MetaLearner

ALGORITHMS = ("maml", "fomaml", "imaml")


def check_sam(model: nn.Module) -> None:
    from metaseg.models.sam import SamSegmenter

    if not isinstance(model, SamSegmenter):
        raise MetasegError(f"learner.name=sam_adapter needs model.kind=sam, got a {type(model).__name__}")


class SamAdapter(MetaLearner):
    """Delegates to the chosen learner (`algorithm`, with that learner's own options)."""

    options_from = "algorithm"  # metaseg.registry checks the other options against that learner's

    def __init__(self, algorithm: str = "imaml", **options: Any) -> None:
        super().__init__()
        from metaseg.meta import create_learner

        if algorithm not in ALGORITHMS:
            raise MetasegError(f"learner.algorithm must be one of {list(ALGORITHMS)} for sam_adapter, got {algorithm!r}")
        self.algorithm = algorithm
        self.inner = create_learner(algorithm, **options)

    def setup(self, model: nn.Module) -> None:
        """The inner learner's model-shaped meta-parameters (Meta-SGD lrs) are created here, with
        the model, so the outer optimiser and DDP see them from the start."""
        check_sam(model)
        self.inner.setup(model)

    def adapt(self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> dict[str, torch.Tensor]:
        check_sam(model)
        return self.inner.adapt(model, support_x, support_y, steps=steps)

    def predict(self, model: nn.Module, fast_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(model, fast_params, x)

    def meta_backward(self, model: nn.Module, episode: Episode, scale: float = 1.0) -> dict[str, float]:
        check_sam(model)
        return self.inner.meta_backward(model, episode, scale=scale)

    def meta_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        return self.inner.meta_parameters(model)
