"""`python -m metaseg.jobs.demo` (`make demo`): meta-train on built-in synthetic tasks, then adapt to a
held-out synthetic task from 5 labelled images and compare with training from scratch.

It runs the same code path as `metaseg meta-train --config experiments/demo.yaml` (LightningCLI,
MetaSegModule, checkpoint selected on the meta-validation family), then scores K-shot episodes of
the meta-test family, which meta-training never saw:
  * meta-learned init, before adaptation (0 steps),
  * meta-learned init after the learner's adaptation (its inner steps, SGD as in meta-training),
  * scratch: a random U-Net trained on the same shots for the same number of steps,
  * both again after 100 adaptation steps (a longer budget, where scratch catches up more),
and writes overlays of one episode's queries for each of them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from metaseg.errors import MetasegError
from metaseg.metrics import mean_ci_text

REPO = Path(__file__).resolve().parents[2]  # metaseg/jobs/demo.py -> the checkout
DEFAULT_CONFIG = REPO / "experiments" / "demo.yaml"
MARKER = ".metaseg-demo"
OVERLAY_PX = 256  # overlays are written at least this wide: the network's 32 px are unreadable


def prepare_demo_out(out: Path, overwrite: bool) -> Path:
    """The demo owns folders it created (marked); any other non-empty folder needs --overwrite."""
    if out.exists() and not out.is_dir():
        raise MetasegError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file() and not overwrite:
            raise MetasegError(f"--out {out} is not empty and was not written by the demo; pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m metaseg.jobs.demo; rerunning the demo replaces this folder\n")
    return out


def write_overlays(out: Path, method: str, model: Any, learner: Any, episode: Any, steps: int | None) -> list[np.ndarray]:
    """Overlays of one episode's query predictions, upscaled by a whole factor to at least
    OVERLAY_PX (nearest neighbour: every network pixel stays one visible block, the prediction and
    the outline stay on the pixels they were computed on; synthetic images have no larger
    original); returns them for the comparison grid."""
    from metaseg.jobs.adapt import overlay

    with torch.enable_grad():
        fast = learner.adapt(model, episode.support_x, episode.support_y, steps=steps)
    with torch.no_grad():
        pred = (learner.predict(model, fast, episode.query_x) > 0)[:, 0].numpy()
    folder = out / "overlays" / method
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    scale = max(1, -(-OVERLAY_PX // int(episode.query_x.shape[-1])))

    def up(a: np.ndarray) -> np.ndarray:
        return a.repeat(scale, axis=0).repeat(scale, axis=1)

    for qid, x, p, y in zip(episode.query_ids, episode.query_x, pred, episode.query_y[:, 0].numpy()):
        image = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        picture = overlay(up(image), up(p), up(y > 0.5))
        picture.save(folder / f"{qid}.png")
        images.append(np.asarray(picture))
    return images


def save_grid(path: Path, rows: dict[str, list[np.ndarray]], scores: dict[str, float], n: int = 6) -> None:
    """One figure: a row per method, the same query images in the columns (red = prediction, green = truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    cols = min(n, min(len(v) for v in rows.values()))
    fig, axes = plt.subplots(len(names), cols, figsize=(1.6 * cols, 1.7 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(rows[name][c])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(f"{name}\nDice {scores[name]:.2f}", fontsize=7)
    fig.suptitle("held-out task, 5 shots: prediction (red) vs ground truth outline (green)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaseg.jobs.demo", description=__doc__.splitlines()[0])
    # not runs/demo itself: `metaseg meta-train --config experiments/demo.yaml` keeps its versions there
    parser.add_argument("--out", default="runs/demo/quick", help="output folder (default runs/demo/quick, replaced on each run)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing a non-empty folder the demo did not write")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="meta-train config (default experiments/demo.yaml)")
    parser.add_argument("--shots", type=int, default=5, help="labelled images of the held-out task (default 5)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes of the held-out task (default 10)")
    parser.add_argument("--long-steps", type=int, default=50,
                        help="also compare both inits after this many adaptation steps (0 = skip; default 50)")
    parser.add_argument("--seed", type=int, default=0)
    # The demo's network is tiny (32 px): intra-op threads buy little when the machine is idle and,
    # measured on a loaded 2-core machine, made each forward+backward ~10x slower (1.23 s vs 0.13 s).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.epilog = "Other arguments go to meta-train, e.g. --trainer.max_steps 50 --model.learner.inner_steps 3"
    args, args.overrides = parser.parse_known_args(argv)
    try:
        return run(args)
    except MetasegError as exc:
        print(f"metaseg: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from metaseg.checkpoints import load_module, read_checkpoint
    from metaseg.training.fit import meta_train
    from metaseg.data.episodes import EpisodeSampler
    from metaseg.data.tasks import TaskSpec, load_spec
    from metaseg.jobs.evaluate import evaluate_method, summarise
    from metaseg.jobs.methods import build_method

    import torch

    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    out = prepare_demo_out(Path(args.out), args.overwrite)
    print(f"[demo] 1/3 meta-training ({_shown(args.config)}) ...", flush=True)
    result = meta_train(["--config", args.config, "--trainer.default_root_dir", str(out / "train"),
                         "--run_test", "false", "--trainer.enable_model_summary", "false", *args.overrides])
    trained = time.perf_counter()
    checkpoint = result["best"] or result["last"]
    module = load_module(checkpoint)
    data = read_checkpoint(checkpoint).get("datamodule_hyper_parameters", {})
    if not data.get("test_tasks"):
        raise MetasegError(f"--config {args.config}: the demo needs a held-out test task (data.test_tasks)")
    spec = TaskSpec.coerce(data["test_tasks"][0])
    size = int(data.get("image_size", 64))
    task = load_spec(spec, size=size, synthetic_n=int(data.get("synthetic_n", 64)))
    train_names = [TaskSpec.coerce(s).name for s in data.get("train_tasks", [])]
    steps = int(module.learner.inner_steps)
    print(f"[demo] 2/3 adapting to the held-out task {task.name!r} (never seen in meta-training: {', '.join(train_names)}) "
          f"with {args.shots} shots, {args.episodes} episodes ...", flush=True)

    scratch = build_method(None, "scratch", args.seed, steps)
    scratch_model, scratch_learner = scratch.model, scratch.learner
    methods: list[tuple[str, Any, Any, int | None]] = [("meta-learned init, no adaptation", module.model, module.learner, 0)]
    for n in dict.fromkeys(s for s in (steps, args.long_steps) if s):  # equal budgets side by side
        methods.append((f"meta-learned init + {n} steps", module.model, module.learner, n))
        methods.append((f"scratch (random init) + {n} steps", scratch_model, scratch_learner, n))
    rows, results = [], {}
    for name, model, learner, n_steps in methods:
        found = evaluate_method(model, learner, [task], [args.shots], args.episodes, seed=args.seed, steps=n_steps,
                                queries=10, method=name)
        rows += summarise(found)
        results[name] = rows[-1]["dice"]

    print("[demo] 3/3 writing overlays ...", flush=True)
    episode = EpisodeSampler([task], args.shots, 10, seed=args.seed, stream="evaluate").sample(0)
    grid = {name: write_overlays(out, _slug(name), model, learner, episode, n_steps)
            for name, model, learner, n_steps in methods}
    save_grid(out / "comparison.png", grid, results)

    print()
    print(f"Held-out synthetic task {task.name!r}, {args.shots}-shot, {args.episodes} episodes x 10 query images "
          f"(Dice/IoU per image, mean ± 95% CI):")
    width = max(len(r["method"]) for r in rows)
    for r in rows:
        print(f"  {r['method']:<{width}}  Dice {mean_ci_text(r['dice'], r['dice_ci95'], r['images'], 3)}   "
              f"IoU {mean_ci_text(r['iou'], r['iou_ci95'], r['images'], 3)}")
    total = time.perf_counter() - start
    chosen = "best on meta-validation" if result["best"] else "last: no meta-validation ran"
    print(f"\ncheckpoint ({chosen}): {checkpoint}")
    print(f"overlays: {out / 'overlays'}  comparison figure: {out / 'comparison.png'}")
    print(f"wall time: {total:.0f} s (meta-training {trained - start:.0f} s)")
    return 0


def _shown(path: str) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


if __name__ == "__main__":
    sys.exit(main())
