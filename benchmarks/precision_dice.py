"""Few-shot Dice of bf16-mixed against fp32 on the same episodes: `python -m benchmarks.precision_dice`.

A reduced run of the few-shot benchmark (benchmarks/fewshot.py, its CPU configuration
benchmarks/fewshot.yaml: 32 px, the light U-Net, leave-one-dataset-out) with one held-out target
(--target, default Kvasir-SEG), --steps meta-training steps per method (default 100) and
--episodes K=5 episodes (default 20, 15 queries, 10 adaptation steps). For each learner:

- fp32: meta-trained in fp32 (trainer.precision 32-true), adapted and evaluated in fp32;
- bf16 inference: the same checkpoint adapted and evaluated under `--precision bf16-mixed`;
- bf16 end to end: meta-trained in bf16-mixed and evaluated in bf16.

Every row is scored on the same fixed episodes (the sampler is seeded per episode index, so the
first N episodes of a longer run are those of an N-episode run). Writes
benchmarks/results/precision_dice.json; resumable (the meta-training parts resume through
benchmarks.fewshot's work_dir; a row is kept only if it has --episodes episodes). `--trained fp32`
re-scores only the rows of fp32 checkpoints (fp32 and bf16 inference), keeping the bf16-trained
rows of an earlier run; a row is compared with fp32 over the episodes both have.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks import fewshot

RESULT = Path(__file__).resolve().parent / "results" / "precision_dice.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="benchmarks/fewshot.yaml")
    p.add_argument("--target", default="Kvasir-SEG")
    p.add_argument("--learners", nargs="+", default=["fomaml", "maml"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--trained", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="which meta-training precisions to (re-)score: more episodes narrow the inference rows; "
                        "the bf16-trained rows' spread is the training run's, which more episodes do not remove")
    p.add_argument("--work-dir", default="runs/precision_dice")
    p.add_argument("--out", default=str(RESULT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fewshot._quiet_warnings()

    cfg = fewshot.load_config(args.config)
    cfg["targets"] = [args.target]
    cfg["evaluation"] = {**cfg["evaluation"], "shots": [args.shots], "episodes": args.episodes}
    cfg["experiment"] = copy.deepcopy(cfg["experiment"])
    cfg["experiment"]["trainer"] = {**cfg["experiment"]["trainer"], "max_steps": args.steps,
                                    "val_check_interval": max(1, args.steps // 2)}
    methods = {}
    for name in args.learners:
        base = copy.deepcopy(cfg["methods"][name])
        for precision, trainer in (("fp32", "32-true"), ("bf16", "bf16-mixed")):
            methods[f"{name}_{precision}"] = {**base, "trainer": {**(base.get("trainer") or {}), "precision": trainer}}
    cfg["methods"] = methods
    cfg = fewshot.check_config(cfg)
    tasks = fewshot.load_tasks(cfg)
    target = tasks[args.target]
    work_dir = Path(args.work_dir)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    command = "python -m benchmarks.precision_dice " + " ".join(argv if argv is not None else sys.argv[1:])
    result["commands"] = [c for c in result.get("commands", [result["command"]] if "command" in result else []) if c != command] + [command]
    result.update({"command": command,  # the last; "commands": every run whose rows the file holds, in order
                   "protocol": f"config {args.config} reduced: target {args.target}, {args.steps} meta-training steps, "
                               f"K={args.shots}, {args.episodes} episodes x up to {cfg['evaluation'].get('queries', 15)} queries, "
                               f"{cfg['adaptation']['steps']} adaptation steps, {cfg['image_size']} px, 1 thread",
                   "load_average_at_start": result.get("load_average_at_start", [round(x, 2) for x in os.getloadavg()])})
    rows = result.setdefault("rows", {})
    from metaseg.jobs.evaluate import evaluate_method, summarise

    for name in args.learners:
        for trained, evaluated in (("fp32", ["fp32", "bf16-mixed"]), ("bf16", ["bf16-mixed"])):
            if trained not in args.trained:
                continue
            method = f"{name}_{trained}"
            keys = [f"{name}: trained {trained}, evaluated {e}" for e in evaluated]
            if all(rows.get(k, {}).get("episodes") == args.episodes for k in keys):
                continue  # a row from a run with another --episodes is re-scored, not reused
            run_dir = work_dir / args.target / method
            run_dir.mkdir(parents=True, exist_ok=True)
            model, learner, info = fewshot.meta_train(cfg, method, args.target, run_dir, "cpu")
            for key, precision in zip(keys, evaluated):
                start = time.perf_counter()
                results = evaluate_method(model, learner, [target], [args.shots], args.episodes, seed=int(cfg["seed"]),
                                          steps=int(cfg["adaptation"]["steps"]), queries=int(cfg["evaluation"].get("queries", 15)),
                                          method=method, device="cpu", precision=precision)
                s = summarise(results)[0]
                rows[key] = {"dice": round(s["dice"], 4), "dice_ci95": round(s["dice_ci95"], 4), "iou": round(s["iou"], 4),
                             "query_images": int(s["images"]), "episodes": int(s["episodes"]),
                             "episode_dice": [round(r.dice, 4) for r in results],
                             "meta_train_seconds": round(float(info["train_seconds"]), 1),
                             "meta_val_dice": info.get("val_dice"), "eval_seconds": round(time.perf_counter() - start, 1)}
                print(json.dumps({key: {k: v for k, v in rows[key].items() if k != "episode_dice"}}), flush=True)
                result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
    from metaseg.metrics import paired_ci95

    for name in args.learners:
        ref = rows[f"{name}: trained fp32, evaluated fp32"]
        for k, r in rows.items():
            if k.startswith(name + ":"):
                # paired over the same episodes (the sampler is seeded per episode index), the
                # first n both rows have: the interval that says whether bf16 is within a point,
                # which the two unpaired CIs cannot; the difference is the per-episode mean's
                # (every episode has the same number of queries, so it is the per-image one)
                n = min(len(r["episode_dice"]), len(ref["episode_dice"]))
                mean, ci, _ = paired_ci95(r["episode_dice"][:n], ref["episode_dice"][:n])
                r["dice_minus_fp32_points"] = round(100 * mean, 2)
                r["dice_minus_fp32_paired_ci95"] = round(100 * ci, 2)
                r["paired_episodes"] = n
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
