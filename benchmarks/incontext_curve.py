"""Support-size curve of the in-context learners, and seconds per adapted image of every method
(issue 12), on a few-shot benchmark's targets and fixed episodes:

    python -m benchmarks.incontext_curve --config benchmarks/fewshot_medsam.yaml            # after benchmarks.fewshot
    python -m benchmarks.incontext_curve --config benchmarks/fewshot_medsam.yaml --episodes 5 --methods incontext_unet

Curve: each (method, target) checkpoint that `benchmarks.fewshot` meta-trained (its
`<work_dir>/<target>/<method>/trained.json`) is evaluated at K = `--shots` on the benchmark's
episodes (the same seed and sampler: K=1/5/10 reproduce the benchmark's episodes, the first
`--episodes` of them), each variant (e.g. `_ens`) on its own so that its time is its own.
Speed (`--speed`): every method of the configuration on `--speed-episodes` K=5 episodes of the
first target, one torch thread: seconds per query image for adaptation + prediction. A method
whose checkpoint is not on this machine is timed with its untrained network (the cost of
adaptation does not depend on the weights' values; said so in the output).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.fewshot import adaptation, build_untrained, environment, load_config, load_tasks, meta_trained
from metaseg.errors import MetasegError


def load_method(cfg: dict[str, Any], method: str, target: str, device: str, need_checkpoint: bool) -> tuple[Any, Any, str]:
    """(model, learner, where the weights came from)."""
    from metaseg.checkpoints import load_module

    done = Path(cfg.get("work_dir") or "runs/fewshot") / target / method / "trained.json"
    if meta_trained(cfg, method) and done.exists():
        module = load_module(json.loads(done.read_text())["checkpoint"], "checkpoint", map_location=device).eval()
        return module.model, module.learner, "meta-trained checkpoint"
    if need_checkpoint and meta_trained(cfg, method):
        raise MetasegError(f"{done}: not found; run benchmarks.fewshot for {method} / {target} first")
    model, learner = build_untrained(cfg, method, device)
    return model, learner, "untrained weights (timing only)" if meta_trained(cfg, method) else "as benchmarked (not meta-trained)"


def evaluate_variants(cfg: dict[str, Any], method: str, model: Any, learner: Any, task: Any, shots: Sequence[int],
                      episodes: int, device: str) -> list[dict[str, Any]]:
    from metaseg.jobs.evaluate import evaluate_method, summarise

    variants = {"": {}, **(((cfg["methods"][method] or {}).get("variants")) or {})}
    rows = []
    for suffix, overrides in variants.items():
        results = evaluate_method(model, learner, [task], shots, episodes, seed=int(cfg["seed"]),
                                  steps=int(adaptation(cfg, method)["steps"]),
                                  queries=int(cfg["evaluation"].get("queries", 15)), method=method, device=device,
                                  variants={suffix: overrides})
        for s in summarise(results):
            group = [r for r in results if r.shots == s["shots"]]
            rows.append({"method": s["method"], "target": task.name, "shots": int(s["shots"]), "dice_mean": s["dice"],
                         "dice_ci95": s["dice_ci95"], "episodes": int(s["episodes"]),
                         "seconds_per_image": sum(r.seconds for r in group) / sum(len(r.dice_per_image) for r in group),
                         "episode_dice": [round(r.dice, 5) for r in group]})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incontext_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="benchmarks/fewshot_medsam.yaml")
    parser.add_argument("--methods", nargs="+", default=["incontext_sam", "incontext_unet"])
    parser.add_argument("--targets", nargs="+", default=None)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 5, 10, 20])
    parser.add_argument("--episodes", type=int, default=None, help="episodes per K (default: the benchmark's)")
    parser.add_argument("--speed", action="store_true", help="also time every method of the configuration")
    parser.add_argument("--speed-episodes", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/incontext_curve.json")
    args = parser.parse_args(argv)
    try:
        torch.set_num_threads(1)
        cfg = load_config(args.config)
        episodes = int(args.episodes or cfg["evaluation"]["episodes"])
        targets = list(args.targets or cfg["targets"])
        tasks = load_tasks(cfg, echo=lambda _: None)
        out = Path(args.out)
        doc = json.loads(out.read_text()) if out.exists() else {"curve": [], "speed": []}
        done = {(r["method"], r["target"]) for r in doc["curve"]}
        for method in args.methods:
            for target in targets:
                if (method, target) in done:
                    continue
                model, learner, _ = load_method(cfg, method, target, "cpu", need_checkpoint=True)
                rows = evaluate_variants(cfg, method, model, learner, tasks[target], args.shots, episodes, "cpu")
                for r in rows:
                    print(f"{r['method']} {target} K={r['shots']}: Dice {100 * r['dice_mean']:.1f} ± {100 * r['dice_ci95']:.1f} "
                          f"({r['seconds_per_image']:.3f} s/image)", flush=True)
                doc["curve"] += rows
                out.write_text(json.dumps(doc, indent=1) + "\n")  # resumable: finished (method, target) pairs are kept
        if args.speed:
            doc["speed"] = []
            for method in cfg["methods"]:
                if (cfg["methods"][method] or {}).get("upper_bound"):
                    continue
                model, learner, source = load_method(cfg, method, targets[0], "cpu", need_checkpoint=False)
                rows = evaluate_variants(cfg, method, model, learner, tasks[targets[0]], [5], int(args.speed_episodes), "cpu")
                for r in rows:
                    doc["speed"].append({"method": r["method"], "target": targets[0], "shots": 5, "weights": source,
                                         "seconds_per_image": r["seconds_per_image"], "episodes": r["episodes"]})
                    print(f"{r['method']}: {r['seconds_per_image']:.3f} s per adapted image ({source})", flush=True)
        doc.update(command="python -m benchmarks.incontext_curve " + " ".join(sys.argv[1:] if argv is None else argv),
                   environment=environment("cpu"), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    except MetasegError as exc:
        print(f"incontext_curve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
