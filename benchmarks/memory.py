"""Peak memory of one meta-gradient (meta_backward) against the number of inner steps, for
maml, maml+checkpoint, fomaml and imaml on the shared U-Net.

Every row runs in a fresh subprocess (`--one`), so the CPU measurement (ru_maxrss high-water
mark minus RSS before the call, see benchmarks/_common.py) sees only that configuration.

    python -m benchmarks.memory                       # CPU -> benchmarks/results/memory.json
    python -m benchmarks.memory --device cuda --out benchmarks/results/memory_cuda.json

Rows already in --out for other (learner, inner_steps) pairs are kept (a sweep can be split).
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import _common

CONFIGS = {
    "maml": ("maml", {}),
    "maml+checkpoint": ("maml", {"checkpoint": True}),
    "fomaml": ("fomaml", {}),
    "imaml": ("imaml", {}),
}


def measure_one(config: str, steps: int, device: str, size: int, shots: int, queries: int) -> dict:
    from metaseg.meta import create_learner

    name, options = CONFIGS[config]
    model = _common.unet(device)
    ep = _common.episode(size, shots, queries, device)
    learner = create_learner(name, inner_steps=steps, **options).to(device)
    learner.meta_backward(model, ep)  # warm-up: allocator pools, .grad buffers, lazy inits
    gc.collect()
    if device.startswith("cuda"):
        peak = _common.peak_cuda_mb(lambda: learner.meta_backward(model, ep))
    else:
        before = _common.rss_mb()
        learner.meta_backward(model, ep)
        peak = _common.max_rss_mb() - before
    return {"learner": config, "inner_steps": steps, "peak_memory_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_episode_arguments(parser)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--learners", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--one", nargs=2, metavar=("LEARNER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    if args.one:
        row = measure_one(args.one[0], int(args.one[1]), args.device, args.size, args.shots, args.queries)
        print(json.dumps(row))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # rows already in --out for other (learner, inner_steps) pairs are kept, so a long sweep can
    # be split (e.g. --learners imaml later) and an interrupted one loses nothing
    rows = json.loads(out.read_text()) if out.exists() else []
    for config in args.learners:
        for steps in args.steps:
            cmd = [sys.executable, "-m", "benchmarks.memory", "--one", config, str(steps), "--device", args.device,
                   "--size", str(args.size), "--shots", str(args.shots), "--queries", str(args.queries)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_common.malloc_env()).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row.update(device=_common.device_description(args.device), image_size=args.size, shots=args.shots,
                       queries=args.queries, method="cuda max_memory_allocated" if args.device == "cuda"
                       else "subprocess ru_maxrss - rss before")
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["learner"], r["inner_steps"]) != (config, steps)] + [row]
            rows.sort(key=lambda r: (list(CONFIGS).index(r["learner"]), r["inner_steps"]))
            out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
