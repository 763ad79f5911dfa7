"""Seed a benchmark's work_dir with the finished parts of an earlier results JSON, so that adding a
method to a configuration computes only that method and the table stays paired (same episodes):

    python -m benchmarks.reuse --config benchmarks/fewshot_medsam.yaml
    python -m benchmarks.fewshot --config benchmarks/fewshot_medsam.yaml    # computes only the new parts

A part is restored only when its fingerprint equals the one the current configuration and code give
(otherwise it is left to be recomputed, and said so); existing partial files are never overwritten.
The earlier invocations' wall time is carried over into `<work_dir>/wall.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmarks.fewshot import load_config, method_fingerprint
from metaseg.errors import MetasegError


def restore(cfg: dict[str, Any], results: Path, echo=print) -> int:
    """Write `<work_dir>/partial/<target>__<method>.json` for every matching run in `results`; returns the count."""
    if not results.is_file():
        raise MetasegError(f"--results: no such file {results}")
    doc = json.loads(results.read_text())
    work_dir = Path(cfg.get("work_dir") or "runs/fewshot")
    restored = 0
    for run in doc.get("runs", []):
        method, target = run["method"], run["target"]
        if method not in cfg["methods"] or target not in cfg["targets"]:
            continue
        if run.get("fingerprint") != method_fingerprint(cfg, method, run.get("device", "cpu")):
            echo(f"  {method} / {target}: configuration changed since {results}; it will be recomputed")
            continue
        partial = work_dir / "partial" / f"{target}__{method}.json"
        if partial.exists():
            continue
        names = {method} | {method + suffix for suffix in ((cfg["methods"][method] or {}).get("variants") or {})}
        rows = [r for r in doc["rows"] if r["target"] == target and r["method"] in names]
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({**run, "rows": rows}, indent=1))
        restored += 1
    wall = work_dir / "wall.json"
    if restored and not wall.exists() and doc.get("wall_seconds"):
        wall.write_text(json.dumps([{"seconds": doc["wall_seconds"], "parts": restored, "jobs": doc.get("jobs", 1),
                                     "finished": f"restored from {results}"}], indent=1))
    return restored


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="benchmark YAML")
    parser.add_argument("--results", default=None, help="earlier results JSON (default: the config's `results`)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        n = restore(cfg, Path(args.results or cfg.get("results") or "benchmarks/results/fewshot.json"))
        print(f"restored {n} finished part(s) into {cfg.get('work_dir') or 'runs/fewshot'}/partial")
    except MetasegError as exc:
        print(f"reuse: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
