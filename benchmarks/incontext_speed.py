"""Seconds per adapted image of every method of few-shot benchmark configurations (issue 12): the
in-context learners (no gradient step) against fine-tuning and meta-learned adaptation:

    python -m benchmarks.incontext_speed --config benchmarks/fewshot_incontext.yaml benchmarks/fewshot_medsam.yaml

For each method (upper bounds excluded) and each K in `--shots`, `--episodes` K-shot episodes of the first target,
one torch thread, each variant timed on its own: (adaptation + prediction of the episode's
queries) / number of queries, as wall time (`seconds_per_image`) and as the process's CPU time
(`cpu_seconds_per_image`: with one thread, the compute itself, much less sensitive to a shared
machine's load than the wall time). A meta-trained method is timed with its checkpoint from the
benchmark's work_dir when it is on this machine, else with its untrained network (the cost of
adaptation does not depend on the weights' values); `weights` in the output says which. The
first episode of each method also fills the embedding cache where it is cold, so it is a warm-up
and is not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.fewshot import (adaptation, build_untrained, environment, load_config, load_tasks, meta_trained,
                                method_learner)
from metaseg.errors import MetasegError


def load_method(cfg: dict[str, Any], method: str, target: str, device: str) -> tuple[Any, Any, str]:
    """(model, learner, where the weights came from)."""
    from metaseg.checkpoints import load_module

    done = Path(cfg.get("work_dir") or "runs/fewshot") / target / method / "trained.json"
    if meta_trained(cfg, method) and done.exists():
        module = load_module(json.loads(done.read_text())["checkpoint"], "checkpoint", map_location=device).eval()
        return module.model, module.learner, "meta-trained checkpoint"
    model, learner = build_untrained(cfg, method, device)
    return model, learner, "untrained weights (same cost)" if meta_trained(cfg, method) else "as benchmarked"


def steps_per_adaptation(cfg: dict[str, Any], method: str) -> int:
    """The gradient steps a method takes per adaptation: the budget's, or 0 for a learner with no
    inner loop (support_prior, incontext: they take no inner_lr), whatever the shared budget says."""
    from metaseg.registry import LEARNER_REGISTRY

    name = method_learner(cfg, method)["name"]
    has_inner_loop = "inner_lr" in LEARNER_REGISTRY.options(name, f"methods.{method}.model.learner")
    return int(adaptation(cfg, method)["steps"]) if has_inner_loop else 0


def time_method(cfg: dict[str, Any], method: str, task: Any, shots: int, episodes: int) -> list[dict[str, Any]]:
    from metaseg.jobs.evaluate import evaluate_method

    model, learner, weights = load_method(cfg, method, task.name, "cpu")
    variants = {"": {}, **(((cfg["methods"][method] or {}).get("variants")) or {})}
    rows = []
    for suffix, overrides in variants.items():
        cpu_at: list[float] = []  # process CPU time after each episode (one thread: the compute, whatever the load)
        results = evaluate_method(model, learner, [task], [shots], episodes + 1, seed=int(cfg["seed"]),
                                  steps=int(adaptation(cfg, method)["steps"]),
                                  queries=int(cfg["evaluation"].get("queries", 15)), method=method, device="cpu",
                                  variants={suffix: overrides}, progress=lambda _: cpu_at.append(time.process_time()))
        results = results[1:]  # the first episode warms caches up
        images = sum(len(r.dice_per_image) for r in results)
        seconds, cpu = sum(r.seconds for r in results) / images, (cpu_at[-1] - cpu_at[0]) / images
        rows.append({"method": method + suffix, "target": task.name, "shots": shots, "episodes": len(results),
                     "adaptation_steps": steps_per_adaptation(cfg, method), "weights": weights,
                     "seconds_per_image": round(seconds, 4), "cpu_seconds_per_image": round(cpu, 4)})
        print(f"{method + suffix}, K={shots}: {seconds:.3f} s per adapted image, {cpu:.3f} s of CPU ({weights})", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incontext_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["benchmarks/fewshot_incontext.yaml", "benchmarks/fewshot_medsam.yaml"])
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    parser.add_argument("--shots", type=int, nargs="+", default=[5], help="support sizes K, each timed on its own")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/incontext_speed.json")
    args = parser.parse_args(argv)
    try:
        torch.set_num_threads(1)
        load_start = [round(v, 2) for v in os.getloadavg()]  # the machine is shared: say how busy it was
        rows = []
        for path in args.config:
            cfg = load_config(path)
            target = cfg["targets"][0]
            task = load_tasks(cfg, echo=lambda _: None)[target]
            for method, mcfg in cfg["methods"].items():
                if (mcfg or {}).get("upper_bound") or (args.methods and method not in args.methods):
                    continue
                for shots in args.shots:
                    rows += [dict(r, config=path) for r in time_method(cfg, method, task, shots, args.episodes)]
        doc = {"command": "python -m benchmarks.incontext_speed " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": environment("cpu"), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
               "load_average_at_start": load_start, "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
               "rows": rows}
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    except MetasegError as exc:
        print(f"incontext_speed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
