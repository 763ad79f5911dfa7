"""Layers import downward only, and no modules import each other in a loop (docs/architecture.md).

Every import statement under metaseg/ counts, at module level or inside a function (a lazy import
is still a dependency), as does `importlib.import_module("metaseg...")` with a literal name. An
edge goes to the module named: `from metaseg.meta import core` depends on metaseg.meta.core,
`from metaseg.meta import create_learner` on metaseg.meta (the package's __init__).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "metaseg"

# Layer of each module by prefix, lowest first (the longest matching prefix wins). A module may
# import its own layer and the layers below it; meta and generative share a rank but not a layer:
# neither imports the other.
LAYERS: dict[str, tuple[int, str]] = {
    "metaseg": (0, "base"),               # the package root: __version__ only
    "metaseg.errors": (0, "base"),
    "metaseg.losses": (0, "base"),
    "metaseg.metrics": (0, "base"),
    "metaseg.outputs": (0, "base"),       # --out: refuse early, undo a failed run (jobs and generative use it)
    "metaseg.registry": (0, "base"),      # names learners/models as strings, imported when built
    "metaseg.data": (1, "data"),
    "metaseg.models": (2, "models"),
    "metaseg.meta": (3, "meta"),
    "metaseg.generative": (3, "generative"),
    "metaseg.training": (4, "training"),
    "metaseg.checkpoints": (4, "training"),  # rebuilds a MetaSegModule; top level as jobs/users import it
    "metaseg.jobs": (5, "jobs"),
    "metaseg.commands": (6, "commands"),
    "metaseg.cli": (6, "commands"),
}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The metaseg modules `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def add(target: str, attrs: list[str]) -> None:
        if not target.startswith("metaseg"):
            return
        for attr in attrs or [""]:
            full = f"{target}.{attr}" if attr else target
            found.add(full if full in modules else target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, [alias.name for alias in node.names])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value, [])
    found.discard(name)
    return found


def layer_of(name: str) -> tuple[int, str] | None:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [name for name in module_names() if layer_of(name) is None] == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_import_downward_only():
    upward = []
    for source, targets in sorted(graph().items()):
        rank, layer = layer_of(source)
        for target in sorted(targets):
            t_rank, t_layer = layer_of(target)
            if t_rank > rank or (t_rank == rank and t_layer != layer):
                upward.append(f"{source} ({layer}) imports {target} ({t_layer})")
    assert upward == []


def test_the_checker_sees_function_level_imports_cycles_and_upward_edges(tmp_path):
    """The walk itself: a lazy import inside a function is an edge, a loop is found, a layer order is checked."""
    (tmp_path / "a.py").write_text("def f():\n    from metaseg.models import x\n")
    edges = {"metaseg.data.a": imports_of("metaseg.data.a", tmp_path / "a.py", {"metaseg.models": Path()})}
    assert edges == {"metaseg.data.a": {"metaseg.models"}}
    assert layer_of("metaseg.models") > layer_of("metaseg.data.a")  # an upward edge
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
