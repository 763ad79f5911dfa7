"""Few-shot evaluation: K-shot episodes of held-out tasks, adapt on the support, score the query.

`evaluate_method` is the reusable core (the few-shot benchmark calls it for every learner and
baseline with the same seed, hence on the same episodes); `run_evaluate` is `metaseg evaluate`.

Protocol: for each K, `episodes` episodes from `EpisodeSampler(stream="evaluate")`, whose query
images never overlap their support (checked again here, by id and by content hash). Dice and IoU
are per image (probabilities thresholded at 0.5); the summary's 95% confidence interval is a
t-interval over all per-image query scores pooled across episodes.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from metaseg.data.episodes import check_episode_counts
from metaseg.data.tasks import TaskSpec
from metaseg.data.types import Episode, TaskArrays
from metaseg.errors import MetasegError
from metaseg.jobs import checks
from metaseg.jobs.methods import attach_cam_prompts, build_method, resolve_device, uses_checkpoint
from metaseg.meta import core
from metaseg.meta.scoring import score_episode
from metaseg.metrics import mean_ci95, mean_ci_text
from metaseg.outputs import OutputFolder

EPISODE_FIELDS = ("method", "shots", "episode", "task", "support_ids", "n_query", "dice", "iou", "seconds")
OUTPUTS = ("episodes.csv", "images.csv", "summary.md")
CI_NOTE = "95% CI: t-interval over per-image query scores pooled across all episodes of that K"


@dataclass
class EpisodeResult:
    """One evaluated episode; `dice`/`iou` are means over its query images, `*_per_image` the raw scores."""

    method: str
    shots: int
    episode: int
    task: str
    support_ids: list[str]
    query_ids: list[str]
    dice_per_image: list[float]
    iou_per_image: list[float]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dice(self) -> float:
        return float(sum(self.dice_per_image) / len(self.dice_per_image))

    @property
    def iou(self) -> float:
        return float(sum(self.iou_per_image) / len(self.iou_per_image))

    def row(self) -> dict[str, Any]:
        return {
            "method": self.method, "shots": self.shots, "episode": self.episode, "task": self.task,
            "support_ids": ";".join(self.support_ids), "n_query": len(self.query_ids),
            "dice": f"{self.dice:.6f}", "iou": f"{self.iou:.6f}", "seconds": f"{self.seconds:.3f}",
        }


def check_disjoint(episode: Episode, task: TaskArrays | None = None) -> None:
    """Support and query must not share an image (by id, and by content hash when the task is known)."""
    shared = set(episode.support_ids) & set(episode.query_ids)
    if not shared and task is not None:
        row = {i: h for i, h in zip(task.ids, task.hashes)}
        s_hash = {row[i] for i in episode.support_ids if i in row}
        shared = {i for i in episode.query_ids if row.get(i) in s_hash}
    if shared:
        raise MetasegError(f"episode of task {episode.task!r}: support and query share {sorted(shared)[:3]}")


def evaluation_episodes(tasks: Sequence[TaskArrays], k: int, episodes: int, seed: int, queries: int) -> Iterator[Episode]:
    """The fixed, checked evaluation episodes for one K: the same for every method given the same seed."""
    from metaseg.data.episodes import EpisodeSampler

    check_episode_counts([k], queries, {t.name: len(t) for t in tasks})
    q = min(int(queries), min(len(t) for t in tasks) - int(k))
    by_name = {t.name: t for t in tasks}
    sampler = EpisodeSampler(list(tasks), shots=int(k), queries=q, seed=seed, stream="evaluate")
    for index in range(episodes):
        episode = sampler.sample(index)
        check_disjoint(episode, by_name.get(episode.task))
        yield episode


def evaluate_method(
    model: nn.Module,
    learner: nn.Module,
    tasks: Sequence[TaskArrays],
    shots: Sequence[int],
    episodes: int,
    seed: int = 0,
    steps: int | None = None,
    queries: int = 15,
    method: str = "",
    device: str | torch.device | None = None,
    progress: Any = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    precision: str = "fp32",
) -> list[EpisodeResult]:
    """Evaluate one (model, learner) on `episodes` K-shot episodes per K in `shots`.

    The same (tasks, K, seed) always gives the same episodes, so methods evaluated with the same
    seed are compared on identical supports and queries. The model is never modified (learners
    adapt functionally). `precision`: "fp32" or "bf16-mixed" (metaseg.meta.core.autocast). `queries` is capped by the smallest task's size minus K. `variants`: see
    `metaseg.meta.scoring.score_episode`; each variant's results carry the method name plus its suffix.
    Every K is checked against every task before the first episode runs.
    """
    checks.at_least("--episodes", episodes, 1)
    check_episode_counts(list(shots), queries, {t.name: len(t) for t in tasks})
    device = torch.device(device) if device is not None else next(model.parameters()).device
    results: list[EpisodeResult] = []
    for k in shots:
        for index, episode in enumerate(evaluation_episodes(tasks, int(k), episodes, seed, queries)):
            start = time.perf_counter()
            with core.autocast(precision, device):
                scores = score_episode(model, learner, episode.to(device), steps=steps, variants=variants or {"": {}})
            seconds = time.perf_counter() - start
            for suffix, s in scores.items():
                results.append(EpisodeResult(method + suffix, int(k), index, episode.task, episode.support_ids,
                                             episode.query_ids, s.dice, s.iou, seconds))
                if progress is not None:
                    progress(results[-1])
    return results


def summarise(results: Sequence[EpisodeResult]) -> list[dict[str, Any]]:
    """Per (method, K): Dice and IoU mean and 95% CI over per-image scores pooled across episodes."""
    groups: dict[tuple[str, int], list[EpisodeResult]] = {}
    for r in results:
        groups.setdefault((r.method, r.shots), []).append(r)
    rows = []
    for (method, k), group in groups.items():
        dice = [d for r in group for d in r.dice_per_image]
        iou = [v for r in group for v in r.iou_per_image]
        dm, dci = mean_ci95(dice)
        im, ici = mean_ci95(iou)
        rows.append({"method": method, "shots": k, "episodes": len(group), "images": len(dice),
                     "dice": dm, "dice_ci95": dci, "iou": im, "iou_ci95": ici})
    return rows


def write_episode_csv(results: Sequence[EpisodeResult], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EPISODE_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow(r.row())


def write_image_csv(results: Sequence[EpisodeResult], path: Path) -> None:
    """Every query image's score (what the confidence intervals are computed from)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "shots", "episode", "task", "query_id", "dice", "iou"])
        for r in results:
            for qid, d, i in zip(r.query_ids, r.dice_per_image, r.iou_per_image):
                writer.writerow([r.method, r.shots, r.episode, r.task, qid, f"{d:.6f}", f"{i:.6f}"])


def summary_markdown(rows: Sequence[dict[str, Any]], title: str, details: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {d}" for d in details]
    lines += [f"- {CI_NOTE}", "", "| method | K | episodes | query images | Dice (mean ± 95% CI) | IoU (mean ± 95% CI) |",
              "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['shots']} | {r['episodes']} | {r['images']} | "
                     f"{_pm(r['dice'], r['dice_ci95'], r['images'])} | {_pm(r['iou'], r['iou_ci95'], r['images'])} |")
    return "\n".join(lines) + "\n"


def _pm(mean: float, ci: float, n: int) -> str:
    return mean_ci_text(mean, ci, n)


def run_evaluate(
    checkpoint: str | None,
    dataset: str,
    out: str | Path,
    shots: Sequence[int] = (1, 5, 10),
    episodes: int = 20,
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    layout: str | None = None,
    queries: int = 15,
    method: str | None = None,
    overwrite: bool = False,
    cache_dir: str | None = None,
    device: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    echo: Any = print,
    allow_seen: bool = False,
    precision: str = "fp32",
    cam_prompts: str | None = None,
) -> list[dict[str, Any]]:
    """`metaseg evaluate`: writes episodes.csv, images.csv and summary.md into `out`; returns the summary rows.

    Every option, the dataset (listed, not decoded) and every K against it are checked before a
    model is built; --out is created only for the run and left as it was if the run fails.
    Images the checkpoint was meta-trained or meta-validated on are refused unless `allow_seen`."""
    from metaseg.data.tasks import count_images, load_spec
    from metaseg.jobs.seen import check_evaluation_task

    for option, value, minimum in (("--episodes", episodes, 1), ("--steps", steps, 0), ("--seed", seed, 0)):
        checks.at_least(option, value, minimum)
    checks.precision("--precision", precision)
    checks.image_size("--size", size)
    check_episode_counts(list(shots), queries, {})
    folder = OutputFolder(out, OUTPUTS, overwrite).check()
    dev = resolve_device(device)
    if uses_checkpoint(checkpoint, method):
        checks.checkpoint_file("--checkpoint", checkpoint)
    checks.cam_prompter_file("--cam-prompts", cam_prompts)
    spec = dataset_spec(dataset, layout, reader_options)
    check_episode_counts(list(shots), queries, {spec.name: count_images(spec)})

    found = attach_cam_prompts(build_method(checkpoint, method, seed, steps, device=dev), cam_prompts)
    size = int(size or found.image_size)
    task = load_spec(spec, size=size, cache_dir=cache_dir, channels=found.in_channels)
    seen = check_evaluation_task(found.info, task, allow_seen, f"--dataset {dataset}")  # before any episode runs
    for line in task_notes(task, "--dataset"):
        echo(line)

    def progress(r: EpisodeResult) -> None:
        echo(f"K={r.shots} episode {r.episode + 1}/{episodes}: Dice {r.dice:.4f} IoU {r.iou:.4f} ({r.seconds:.1f}s)")

    with folder.writing() as out:
        results = evaluate_method(found.model, found.learner, [task], shots, episodes, seed=seed, steps=found.steps,
                                  queries=queries, method=found.name, device=dev, progress=progress,
                                  precision=precision)
        rows = summarise(results)
        seen_lines = seen.summary_lines([q for r in results for q in r.query_ids]) if seen else []
        write_episode_csv(results, out / "episodes.csv")
        write_image_csv(results, out / "images.csv")
        adaptation = "" if found.steps is None else f"; adaptation steps: {found.steps}"
        details = [
            f"checkpoint: {found.checkpoint or f'none ({found.name} baseline)'}",
            f"dataset: {dataset} ({task.name}, {len(task)} images at {size} px)",
            f"episodes per K: {episodes}; queries per episode: up to {queries}; seed: {seed}{adaptation}; precision: {precision}",
            "support and query of every episode are disjoint (checked by id and content hash)",
            *task_notes(task, "dataset"),
            *seen_lines,
        ]
        (out / "summary.md").write_text(summary_markdown(rows, f"Few-shot evaluation: {found.name} on {task.name}", details))
    steps_note = "" if found.steps is None else f", {found.steps} adaptation steps"
    for r in rows:
        echo(f"{r['method']} K={r['shots']}: Dice {_pm(r['dice'], r['dice_ci95'], r['images'])}, IoU {_pm(r['iou'], r['iou_ci95'], r['images'])} "
             f"({r['images']} query images, {r['episodes']} episodes{steps_note})")
    for line in seen_lines:
        echo(line)
    echo(f"wrote {out / 'episodes.csv'}, {out / 'images.csv'}, {out / 'summary.md'}")
    return rows


def task_notes(task: TaskArrays, where: str) -> list[str]:
    """What building the task changed, said once: dropped duplicates, channel conversion."""
    notes = []
    if task.duplicates:
        dropped, kept = task.duplicates[0]
        notes.append(f"{where}: {len(task.duplicates)} byte-identical duplicate image(s) left out (e.g. {dropped} = {kept})")
    if task.conversion:
        notes.append(f"{where}: {task.conversion}")
    return notes


def dataset_spec(dataset: str, layout: str | None = None, reader_options: Mapping[str, Any] | None = None) -> TaskSpec:
    """--dataset as a task spec: a folder relative to the working directory, else a name under the
    data root (../shared/datasets or $METASEG_DATA), or synthetic:<family>. A name that is neither
    is refused naming what was typed and every place it was looked for."""
    from metaseg.data.tasks import SYNTHETIC_PREFIX, resolve_data_root

    options = dict(reader_options or {})
    category = options.pop("category", None)
    if dataset.startswith(SYNTHETIC_PREFIX):
        return TaskSpec.coerce({"root": dataset, "layout": layout, "category": category, **options})
    here = Path(dataset).expanduser()
    if here.is_dir():
        root = here.resolve()
    else:
        base = None if here.is_absolute() else resolve_data_root()
        root = base / dataset if base is not None else None
        if root is None or not root.is_dir():
            where = f"{here.resolve()}" + (f" nor {root}" if root is not None else " (no data root: set METASEG_DATA)")
            raise MetasegError(f"--dataset {dataset}: no such dataset folder: {where}")
    return TaskSpec.coerce({"name": Path(dataset).name or root.name, "root": str(root), "layout": layout,
                            "category": category, **options})
