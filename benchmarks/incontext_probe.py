"""What a meta-trained in-context network does with its inputs (issue 12: why `incontext_unet` sits
below the no-network support prior):

    python -m benchmarks.incontext_probe --checkpoint runs/.../best.ckpt --target CVC-ClinicDB

On the benchmark's own evaluation episodes (same config, seed and sampler, the first `--episodes`
per K), per K, means over episodes of:

- `dice` / `prior_dice`: the network's and the support prior's Dice against the ground truth;
- `same_if_query_swapped`: Dice between the network's mask for query i and its mask when query
  i - 1 is put in its place (same support): 1.0 = the prediction ignores the query image;
- `agrees_with_prior`: Dice between the network's mask and the prior's;
- `area_ratio` / `prior_area_ratio`: predicted over true foreground area (summed over the queries);
- `area_matched_dice`: the network's probabilities cut at the supports' mean area (the prior's own
  rule) instead of at 0.5: above `prior_dice` = its pixel ranking beats the prior's and what it
  loses is calibration. A diagnostic, not a method (nothing is selected on the target).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from metaseg.errors import MetasegError


def dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean per-image Dice of binary masks (two empty masks agree)."""
    p, r = pred.flatten(1).float(), ref.flatten(1).float()
    inter, total = (p * r).sum(1), p.sum(1) + r.sum(1)
    return float(torch.where(total > 0, 2 * inter / total.clamp_min(1e-9), torch.ones_like(total)).mean())


def area_cut(prob: torch.Tensor, area: float) -> torch.Tensor:
    """Per image, the `area` fraction of pixels with the highest probability."""
    flat = prob.flatten(1)
    n = int(round(area * flat.shape[1]))
    if n == 0:
        return torch.zeros_like(prob)
    cut = flat.topk(n, dim=1).values[:, -1:]
    return (flat >= cut).float().view_as(prob)


def probe_episode(model: torch.nn.Module, learner: torch.nn.Module, prior: torch.nn.Module, episode: Any) -> dict[str, float]:
    with torch.no_grad():
        fast = learner.adapt(model, episode.support_x, episode.support_y)
        logits = learner.predict(model, fast, episode.query_x)
        swapped = learner.predict(model, fast, episode.query_x.roll(1, 0))  # query i - 1 in place of query i
        prior_mask = (prior.predict(None, prior.adapt(None, episode.support_x, episode.support_y), episode.query_x) > 0).float()
    mask, truth = (logits > 0).float(), episode.query_y.float()
    true_area = float(truth.sum().clamp_min(1.0))
    return {
        "dice": dice(mask, truth), "prior_dice": dice(prior_mask, truth),
        "same_if_query_swapped": dice((swapped > 0).float(), mask), "agrees_with_prior": dice(mask, prior_mask),
        "area_ratio": float(mask.sum()) / true_area, "prior_area_ratio": float(prior_mask.sum()) / true_area,
        "area_matched_dice": dice(area_cut(torch.sigmoid(logits), float(episode.support_y.float().mean())), truth),
    }


def probe(cfg: dict[str, Any], checkpoint: str, target: str, shots: Sequence[int], episodes: int) -> list[dict[str, Any]]:
    from benchmarks.fewshot import load_tasks
    from metaseg.checkpoints import load_module
    from metaseg.jobs.evaluate import evaluation_episodes
    from metaseg.meta import create_learner

    specs = [d for d in cfg["datasets"] if (d.get("name") or d.get("root")) == target]
    if not specs:
        raise MetasegError(f"--target {target!r} is not one of the config's datasets")
    task = load_tasks({**cfg, "datasets": specs}, echo=lambda _: None)[target]
    module = load_module(checkpoint, "--checkpoint", map_location="cpu").eval()
    prior = create_learner("support_prior")
    ev = cfg["evaluation"]
    rows = []
    for k in shots:
        scores = [probe_episode(module.model, module.learner, prior, e)
                  for e in evaluation_episodes([task], int(k), episodes, int(cfg["seed"]), int(ev.get("queries", 15)))]
        row = {"target": target, "shots": int(k), "episodes": len(scores),
               **{name: round(sum(s[name] for s in scores) / len(scores), 4) for name in scores[0]}}
        rows.append(row)
        print(" ".join(f"{n}={v}" for n, v in row.items()), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incontext_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a meta-trained in-context checkpoint (best.ckpt)")
    parser.add_argument("--target", required=True, help="the held-out dataset the checkpoint's fold left out")
    parser.add_argument("--config", default="benchmarks/fewshot_incontext.yaml", help="the benchmark config (episodes, seed)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", default=None, help="append the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        from benchmarks.fewshot import load_config

        torch.set_num_threads(1)
        if not Path(args.checkpoint).is_file():
            raise MetasegError(f"--checkpoint: no such file {args.checkpoint}")
        rows = probe(load_config(args.config), args.checkpoint, args.target, args.shots, args.episodes)
    except MetasegError as exc:
        print(f"incontext_probe: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        doc = json.loads(out.read_text()) if out.is_file() else {"runs": []}
        command = "python -m benchmarks.incontext_probe " + " ".join(sys.argv[1:] if argv is None else argv)
        doc["runs"].append({"command": command, "checkpoint": args.checkpoint, "rows": rows})
        out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
