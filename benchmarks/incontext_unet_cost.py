"""Compute and memory of the in-context U-Net itself, on random tensors (no data, no checkpoint):

    python -m benchmarks.incontext_unet_cost --channels 16 --out benchmarks/results/incontext_unet_cost.json

For each K in `--shots`: CPU seconds (one thread, process time) and peak resident memory (above
the start) of `predict` on `--queries` queries at `--size` px after `adapt`, one scoring chunk of queries
at a time as the evaluation does, and CPU seconds of one meta-training step (K supports,
`--train-queries` queries, forward + backward). Run it on two versions of the code to compare them.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Sequence

import torch


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.fewshot import environment
    from metaseg.losses import bce_dice_loss
    from metaseg.meta import create_learner
    from metaseg.meta.scoring import QUERY_CHUNK
    from metaseg.models import create_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks.incontext_unet_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--train-queries", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, learner = create_model("incontext_unet", channels=args.channels), create_learner("incontext")
    data = {}
    for k in args.shots:
        g = torch.Generator().manual_seed(k)
        image = lambda n: torch.rand(n, 3, args.size, args.size, generator=g)  # noqa: E731
        mask = lambda n: (torch.rand(n, 1, args.size, args.size, generator=g) > 0.5).float()  # noqa: E731
        data[k] = image(k), mask(k), image(args.queries), mask(args.train_queries)
    rows = []
    model.eval()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for k in sorted(args.shots):  # prediction first, K increasing: the peak after K is that of K's prediction
        sx, sy, qx, _ = data[k]
        start = time.process_time()
        with torch.no_grad():
            fast = learner.adapt(model, sx, sy)
            for i in range(0, args.queries, QUERY_CHUNK):
                learner.predict(model, fast, qx[i:i + QUERY_CHUNK])
        predict = (time.process_time() - start) / args.queries
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
        rows.append({"shots": k, "cpu_seconds_per_image": round(predict, 4), "predict_peak_rss_mib_above_start": round(peak)})
        print(f"K={k}: {predict:.3f} s CPU per predicted image, peak RSS {peak:.0f} MiB above the start", flush=True)
    model.train()
    for row in rows:
        sx, sy, qx, qy = data[row["shots"]]
        start = time.process_time()
        loss = bce_dice_loss(model.segment(qx[:args.train_queries], model.prepare_support(sx, sy)), qy)
        torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
        row["cpu_seconds_train_step"] = round(time.process_time() - start, 3)
        print(f"K={row['shots']}: {row['cpu_seconds_train_step']:.2f} s CPU per meta-training step ({args.train_queries} queries)", flush=True)
    doc = {"command": "python -m benchmarks.incontext_unet_cost " + " ".join(sys.argv[1:] if argv is None else argv),
           "channels": args.channels, "size": args.size, "queries": args.queries, "environment": environment("cpu"),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
