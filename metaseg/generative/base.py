"""What the training loop and the sampler need from a generator, and the registry of generators.

A generator owns its networks and optimisers, takes one training step on a batch of joint samples
in [-1, 1], and samples from a torch.Generator, so that a resumed run draws exactly the same noise.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import torch

from metaseg.errors import MetasegError

# name -> "module:Class" (imported on use: the diffusion model pulls in diffusers)
GENERATORS = {"gan": "metaseg.generative.gan:GAN", "diffusion": "metaseg.generative.diffusion:Diffusion"}


class JointGenerator(ABC):
    """channels = image channels + 1 (the mask); size = side length (a power of two)."""

    def __init__(self, channels: int, size: int, width: int = 32, lr: float | None = None, device: str = "cpu"):
        self.channels, self.size, self.width = int(channels), int(size), int(width)
        self.lr = float(lr if lr is not None else self.default_lr)
        self.device = torch.device(device)

    def noise(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """Gaussian noise drawn on the CPU generator, then moved: the same numbers on every device."""
        return torch.randn(shape, generator=gen).to(self.device)

    default_lr = 2e-4
    # constructor arguments a checkpoint written before they existed was trained with (its spec lacks them)
    legacy_spec: dict[str, Any] = {}

    def spec(self) -> dict[str, Any]:
        """Constructor arguments (not the device), stored in the checkpoint to rebuild the model."""
        return {"channels": self.channels, "size": self.size, "width": self.width, "lr": self.lr}

    @abstractmethod
    def train_step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """One optimisation step on joint samples x (B, C+1, H, W); all randomness from `gen`."""

    @abstractmethod
    def sample(self, n: int, gen: torch.Generator, **options: Any) -> torch.Tensor:
        """n joint samples (n, C+1, H, W) in [-1, 1] (mask channel not yet thresholded)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Networks and optimiser states (tensors and plain containers only: weights_only loading)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def generator_class(name: str) -> type[JointGenerator]:
    if name not in GENERATORS:
        raise MetasegError(f"--model: unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    module, cls = GENERATORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_generator(name: str, **spec: Any) -> JointGenerator:
    return generator_class(name)(**spec)
