"""Episode sampling throughput on one CPU core: `python -m benchmarks.episodes` (or `make bench-episodes`).

Samples K=5 support + Q=15 query episodes at 128 px from the validated cache (Kvasir-SEG via
`load_spec` when the shared datasets are present, otherwise built-in synthetic tasks) with
torch.set_num_threads(1), and writes benchmarks/results/episodes.json. Reported rate = the median
of `--repeats` timed runs of `--episodes` episodes each (wall clock; CPU time is recorded too,
because a shared machine's other load slows wall clock but not CPU time).

What an episode is here: what `EpisodeSampler.sample` returns, the gathered uint8 support + query
rows with their ids; its float32 tensors are made on first use or on the device (`Episode.to`),
which is what a DataLoader worker hands over. `float_episodes_per_second` also makes the float32
tensors on this CPU core (what a CPU consumer pays once per episode, on first access).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metaseg.data.episodes import EpisodeSampler
from metaseg.data.synthetic import FAMILIES
from metaseg.data.tasks import load_spec, resolve_data_root

RESULT = Path(__file__).resolve().parent / "results" / "episodes.json"


def load_tasks(dataset: str, size: int, n_synthetic: int) -> tuple[list, str]:
    """Real dataset through the cache when available, else synthetic families (and say which)."""
    root = resolve_data_root()
    if dataset != "synthetic" and root is not None and (root / dataset).is_dir():
        try:
            return [load_spec({"name": dataset, "root": dataset}, size)], f"real:{dataset} (cache)"
        except ImportError:  # the cache module is not there yet
            pass
    return [load_spec(f"synthetic:{f}", size, synthetic_n=n_synthetic) for f in FAMILIES], f"synthetic:{len(FAMILIES)} families"


def rate(fn, n: int, repeats: int) -> dict:
    for i in range(min(n, 50)):  # warm-up: allocator pools, first-touch pages
        fn(i)
    walls, cpus = [], []
    for r in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        for i in range(r * n, (r + 1) * n):
            fn(i)
        walls.append(n / (time.perf_counter() - w))
        cpus.append(n / (time.process_time() - c))
    return {"median": round(statistics.median(walls), 1), "runs": [round(x, 1) for x in walls],
            "cpu_time_median": round(statistics.median(cpus), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="Kvasir-SEG", help="folder under the data root, or 'synthetic'")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--episodes", type=int, default=2000, help="episodes per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]

    tasks, source = load_tasks(args.dataset, args.size, n_synthetic=64)
    plain = EpisodeSampler(tasks, args.shots, args.query, seed=0)
    from metaseg.data.transforms import SupportAugment

    augmented = EpisodeSampler(tasks, args.shots, args.query, seed=0, augment=SupportAugment())
    sampled = rate(plain.sample, args.episodes, args.repeats)
    ids_only = rate(plain.sample_ids, args.episodes, args.repeats)
    with_float = rate(lambda i: plain.sample(i).support_x, args.episodes, args.repeats)
    with_aug = rate(augmented.sample, max(args.episodes // 10, 50), args.repeats)
    result = {
        "episodes_per_second": sampled["median"],
        "episodes_per_cpu_second": sampled["cpu_time_median"],
        "episodes_per_second_detail": sampled,
        "note": "episodes_per_second is wall clock; episodes_per_cpu_second divides by this process's CPU time "
                "and is the one-core rate when other processes share the cores (see machine.load_average_at_start)",
        "float_episodes_per_second": with_float["median"],
        "float_episodes_per_cpu_second": with_float["cpu_time_median"],
        "float_detail": with_float,
        "episode": "uint8 support + query pixels and ids (EpisodeSampler.sample); float32 made on first use or on the "
                   "device (Episode.to). float_episodes_per_second also makes float32 on this core",
        "ids_only_episodes_per_second": ids_only["median"],
        "augmented_episodes_per_second": with_aug["median"],
        "augmented_detail": with_aug,
        "target_episodes_per_second": 1000,
        "shots": args.shots, "queries": args.query, "image_size": args.size,
        "data": source,
        "tasks": [{"name": t.name, "images": len(t), "channels": t.channels} for t in tasks],
        "torch_threads": torch.get_num_threads(),
        "command": "python -m benchmarks.episodes " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_at_start": load_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("episodes_per_second", "episodes_per_cpu_second", "float_episodes_per_second", "ids_only_episodes_per_second", "augmented_episodes_per_second", "data", "torch_threads")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
