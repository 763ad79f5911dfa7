"""Shared pytest fixtures (keep tidy: one fixture per need, each with a docstring)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets folder ($METASEG_DATA, else ../shared/datasets); skips when absent."""
    root = Path(os.environ.get("METASEG_DATA") or REPO.parent / "shared" / "datasets")
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set METASEG_DATA)")
    return root


@pytest.fixture
def make_pair_folder(tmp_path: Path):
    """Factory: a generic images/ + masks/ folder of n tiny random RGB pairs with non-empty 0/255 masks."""

    def make(n: int = 4, size: tuple[int, int] = (24, 20), name: str = "ds", mask_suffix: str = "", seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        w, h = size
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"case{i}.png")
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 2 + i % 3, w // 4 : w // 2] = 255
            Image.fromarray(mask).save(root / "masks" / f"case{i}{mask_suffix}.png")
        return root

    return make
