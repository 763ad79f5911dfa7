"""Seconds per meta-step and per adapted episode on the LiteMedSAM base, with and without the
embedding cache (issue 16), at 128 px on the CPU:

    python -m benchmarks.medsam_speed                       # = make bench-medsam-speed
    python -m benchmarks.medsam_speed --repeats 3 --out benchmarks/results/medsam_speed.json

Episodes: K=5 support + 5 query (meta-step, one episode) and K=5 support + 15 query (adaptation:
10 Adam steps, then prediction), Kvasir-SEG images when the real datasets are present, else a
synthetic family. "cached" = the frozen encoder's embeddings are already in the cache (the state
after the first epoch, or after the embedding warm-up the benchmark does once per image);
"no cache" = the encoder runs on every forward, as it must when the encoder is trained (LoRA).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def load_task(size: int):
    from metaseg.data.tasks import TaskSpec, load_spec, resolve_data_root

    root = resolve_data_root()
    if root is not None and (root / "Kvasir-SEG").is_dir():
        return load_spec(TaskSpec.coerce({"name": "Kvasir-SEG", "root": "Kvasir-SEG", "max_images": 60}), size=size)
    return load_spec("synthetic:bright_ellipse", size=size, synthetic_n=60)


def timed(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls (after one warm-up call that fills caches)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(size: int, repeats: int) -> list[dict[str, Any]]:
    from metaseg.data.episodes import EpisodeSampler
    from metaseg.meta import create_learner
    from metaseg.models import create_model

    task = load_task(size)
    train = EpisodeSampler([task], shots=5, queries=5, seed=0).sample(0)
    test = EpisodeSampler([task], shots=5, queries=15, seed=0, stream="evaluate").sample(0)
    rows = []
    for cache in ("memory", "off"):
        model = create_model("medsam_lite", image_size=size, embedding_cache=cache)
        for name, options in (("fomaml", {"inner_steps": 3}), ("imaml", {"inner_steps": 3, "cg_steps": 3, "lam": 2.0})):
            learner = create_learner(name, inner_lr=3e-4, inner_optimizer="adam", **options)

            def step() -> None:
                learner.meta_backward(model, train)
                for p in learner.meta_parameters(model):
                    p.grad = None

            rows.append({"what": "meta-step (1 episode, K=5, Q=5)", "learner": name, "options": options,
                         "cache": cache, "seconds": round(timed(step, repeats), 3)})
        learner = create_learner("fomaml", inner_lr=3e-4, inner_optimizer="adam")

        def adapt() -> None:
            fast = learner.adapt(model, test.support_x, test.support_y, steps=10)
            with torch.no_grad():
                learner.predict(model, fast, test.query_x)

        rows.append({"what": "adapted episode (K=5, 10 Adam steps, predict Q=15)", "learner": "any",
                     "cache": cache, "seconds": round(timed(adapt, repeats), 3)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.medsam_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/medsam_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.size, args.repeats)
    doc = {
        "benchmark": "LiteMedSAM seconds per meta-step and per adapted episode, with and without the embedding cache",
        "command": "python -m benchmarks.medsam_speed " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "image_size": args.size, "torch_threads": args.threads, "repeats": args.repeats,
        "load_average_at_end": os.getloadavg(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        print(f"{r['what']:<52} {r['learner']:<7} cache={r['cache']:<6} {r['seconds']:.2f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
