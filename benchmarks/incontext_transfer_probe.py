"""How good is a parameter-free label transfer from the support set in the frozen LiteMedSAM
embedding space, and which of its settings to ship (issue 12), measured on meta-VALIDATION tasks:

    python -m benchmarks.incontext_transfer_probe --fold CVC-ClinicDB --exclude Kvasir-SEG --out benchmarks/results/incontext_transfer_probe.json

The tasks are the fold's meta-val splits (`benchmarks.fewshot.fold`: a hash-chosen fraction of
each large source dataset) minus `--exclude` (the other polyp dataset, itself a benchmark target),
so no target image is looked at when the settings are chosen. Per (task, K, temperature), means
over the episodes of the per-image Dice of:
- `map`: the transferred map (`metaseg.models.incontext_sam.transfer_labels`) upsampled to the
  image and cut at 0.5 (what the vote alone gives; = `transfer: map`);
- `box` / `box_mask`: `incontext_sam` with `conditioner: false` and that `transfer` mode, i.e. the
  pretrained decoder prompted by the map's box (and the map as a mask prompt): zero training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from metaseg.errors import MetasegError


def probe(cfg: dict[str, Any], fold_target: str, exclude: Sequence[str], shots: Sequence[int], episodes: int,
          temperatures: Sequence[float], modes: Sequence[str] = ("box", "box_mask")) -> list[dict[str, Any]]:
    from benchmarks.fewshot import fold, load_tasks
    from metaseg.jobs.evaluate import evaluation_episodes
    from metaseg.metrics import dice_iou_per_image
    from metaseg.models.incontext_sam import create_incontext_sam

    tasks = load_tasks(cfg, echo=lambda _: None)
    _, val = fold(cfg, "incontext_sam", tasks, fold_target)
    val = [t for t in val if t.name.split(":")[0] not in exclude]
    if not val:
        raise MetasegError(f"--fold {fold_target}: no meta-val task is left after --exclude {list(exclude)}")
    model = create_incontext_sam(image_size=int(cfg["image_size"]), conditioner=False, transfer="box").eval()
    queries = int(cfg["evaluation"].get("queries", 15))
    rows = []
    for task in val:
        for k in shots:
            scores: dict[float, dict[str, list[float]]] = {t: {"map": [], **{m: [] for m in modes}} for t in temperatures}
            for episode in evaluation_episodes([task], int(k), episodes, int(cfg["seed"]), queries):
                with torch.no_grad():
                    support = model.prepare_support(episode.support_x, episode.support_y.float())
                    query = model.base.embed(episode.query_x)
                    y = episode.query_y.float()
                    for t in temperatures:
                        model.transfer_temperature = t
                        prob = F.interpolate(model.transfer_map(query, support), y.shape[-2:], mode="bilinear", align_corners=False)
                        scores[t]["map"].append(float(dice_iou_per_image(torch.logit(prob.clamp(1e-4, 1 - 1e-4)), y)[0].mean()))
                        for mode in modes:
                            model.transfer = mode
                            logits = model.segment(episode.query_x, support)
                            scores[t][mode].append(float(dice_iou_per_image(logits, y)[0].mean()))
            for t in temperatures:
                row = {"task": task.name, "shots": int(k), "temperature": t, "episodes": len(scores[t]["map"]),
                       **{f"{n}_dice": round(sum(v) / len(v), 4) for n, v in scores[t].items()}}
                rows.append(row)
                print(" ".join(f"{n}={v}" for n, v in row.items()), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incontext_transfer_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="benchmarks/fewshot_incontext_sam_quick.yaml", help="the benchmark config (datasets, seed, split)")
    parser.add_argument("--fold", required=True, help="the held-out target whose fold's meta-val tasks are probed")
    parser.add_argument("--exclude", nargs="*", default=[], help="datasets whose meta-val split is left out (other targets)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--modes", nargs="*", default=["box", "box_mask"], help="decoder-prompting transfer modes also scored")
    parser.add_argument("--out", default=None, help="write the rows (and the command) to this JSON file")
    args = parser.parse_args(argv)
    try:
        from benchmarks.fewshot import load_config

        torch.set_num_threads(1)
        start = time.perf_counter()
        rows = probe(load_config(args.config), args.fold, args.exclude, args.shots, args.episodes, args.temperatures, args.modes)
    except MetasegError as exc:
        print(f"incontext_transfer_probe: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        command = "python -m benchmarks.incontext_transfer_probe " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out).write_text(json.dumps({"command": command, "wall_seconds": round(time.perf_counter() - start, 1),
                                              "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
