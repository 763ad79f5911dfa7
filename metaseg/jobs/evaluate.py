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
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from metaseg.data.types import Episode, TaskArrays
from metaseg.errors import MetasegError
from metaseg.metrics import dice_iou_per_image, mean_ci95

EPISODE_FIELDS = ("method", "shots", "episode", "task", "support_ids", "n_query", "dice", "iou", "seconds")
SCRATCH_STEPS = 100  # fine-tuning steps of the scratch baseline when --steps is not given
BASELINES = ("scratch", "support_prior", "medsam_lite_zeroshot", "medsam_lite_finetune")  # `--method` values that ignore --checkpoint
MEDSAM_FINETUNE = {"inner_lr": 3e-4, "inner_optimizer": "adam", "inner_steps": 10}  # the benchmark's budget (docs/medsam_lite.md)
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


def score_episode(
    model: nn.Module, learner: nn.Module, episode: Episode, steps: int | None = None, chunk: int = 16,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[float], list[float]] | dict[str, tuple[list[float], list[float]]]:
    """Adapt on the support set, predict the query set in chunks, return per-image Dice and IoU.

    `variants` ({suffix: {model attribute: value}}, e.g. {"": {}, "_refine": {"refine": 1}}) scores
    several prediction modes after ONE adaptation (adaptation is the expensive part) and returns
    {suffix: (dice, iou)}; the attributes are restored afterwards.
    """
    with torch.enable_grad():
        fast = learner.adapt(model, episode.support_x, episode.support_y, steps=steps)
    scores = {}
    for suffix, overrides in (variants or {"": {}}).items():
        dice, iou = [], []
        with model_attributes(model, overrides), torch.no_grad():
            for start in range(0, episode.query_x.shape[0], chunk):
                logits = learner.predict(model, fast, episode.query_x[start:start + chunk])
                d, i = dice_iou_per_image(logits.float(), episode.query_y[start:start + chunk])
                dice += d.tolist()
                iou += i.tolist()
        scores[suffix] = (dice, iou)
    return scores if variants is not None else scores[""]


@contextmanager
def model_attributes(model: nn.Module, overrides: Mapping[str, Any]) -> Iterator[None]:
    """Temporarily set attributes the model exposes as prediction options (unknown ones are an error)."""
    old = {}
    for name, value in overrides.items():
        if not hasattr(model, name):
            raise MetasegError(f"variant option {name!r}: a {type(model).__name__} has no such prediction option")
        old[name] = getattr(model, name)
        setattr(model, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(model, name, value)


def evaluation_episodes(tasks: Sequence[TaskArrays], k: int, episodes: int, seed: int, queries: int) -> Iterator[Episode]:
    """The fixed, checked evaluation episodes for one K: the same for every method given the same seed."""
    from metaseg.data.episodes import EpisodeSampler

    smallest = min(len(t) for t in tasks)
    q = min(int(queries), smallest - int(k))
    if k < 1 or q < 1:
        raise MetasegError(f"--shots {k}: the smallest task has {smallest} images, too few for {k} shots plus a query")
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
) -> list[EpisodeResult]:
    """Evaluate one (model, learner) on `episodes` K-shot episodes per K in `shots`.

    The same (tasks, K, seed) always gives the same episodes, so methods evaluated with the same
    seed are compared on identical supports and queries. The model is never modified (learners
    adapt functionally). `queries` is capped by the smallest task's size minus K. `variants`: see
    `score_episode`; each variant's results carry the method name plus its suffix.
    """
    if episodes < 1:
        raise MetasegError(f"--episodes must be >= 1 (got {episodes})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    results: list[EpisodeResult] = []
    for k in shots:
        for index, episode in enumerate(evaluation_episodes(tasks, int(k), episodes, seed, queries)):
            start = time.perf_counter()
            scores = score_episode(model, learner, episode.to(device), steps=steps, variants=variants or {"": {}})
            seconds = time.perf_counter() - start
            for suffix, (dice, iou) in scores.items():
                results.append(EpisodeResult(method + suffix, int(k), index, episode.task, episode.support_ids,
                                             episode.query_ids, dice, iou, seconds))
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
                     f"{_pm(r['dice'], r['dice_ci95'])} | {_pm(r['iou'], r['iou_ci95'])} |")
    return "\n".join(lines) + "\n"


def _pm(mean: float, ci: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.4f} ± {ci:.4f}"


def prepare_out_dir(out: str | Path, overwrite: bool, names: Sequence[str] = ()) -> Path:
    """Create `out`; a folder that already holds files is only written into with --overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MetasegError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MetasegError(f"--out {out} is not empty; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_method(checkpoint: str | None, method: str | None, seed: int, steps: int | None,
                 model_config: dict | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module, str, dict]:
    """(model, learner, method name, checkpoint info) for a checkpoint, or a baseline.

    Scratch: a randomly initialised network with the default U-Net config (seeded), trained on
    the K shots by the `transfer` learner's fine-tuning (same step count as the others).
    support_prior: the mean of the K support masks cut to their mean area, no network (the floor to beat).
    """
    from metaseg.checkpoints import load_module

    if checkpoint and str(checkpoint).lower() != "none" and method not in BASELINES:
        module = load_module(checkpoint, "--checkpoint", map_location=device)
        name = method or module.hparams.learner["name"]
        return module.model, module.learner, name, module.checkpoint_info
    from metaseg.meta import create_learner
    from metaseg.models import create_model

    if method in ("medsam_lite_zeroshot", "medsam_lite_finetune"):  # the pretrained base, no meta-training
        model = create_model("medsam_lite", image_size=128).to(device).eval()
        budget = dict(MEDSAM_FINETUNE, inner_steps=0 if method == "medsam_lite_zeroshot" else int(steps or MEDSAM_FINETUNE["inner_steps"]))
        return model, create_learner("transfer", **budget).to(device), method, {"image_size": 128}
    torch.manual_seed(seed)
    with torch.enable_grad():  # building the U-Net runs a probe backward pass
        model = create_model(**(model_config or {"kind": "unet"})).to(device).eval()
    if method == "support_prior":
        return model, create_learner("support_prior"), "support_prior", {}
    learner = create_learner("transfer", inner_steps=int(steps or SCRATCH_STEPS)).to(device)
    return model, learner, "scratch", {}


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
    echo: Any = print,
    allow_seen: bool = False,
) -> list[dict[str, Any]]:
    """`metaseg evaluate`: writes episodes.csv, images.csv and summary.md into `out`; returns the summary rows.
    Images the checkpoint was meta-trained or meta-validated on are refused unless `allow_seen`."""
    from metaseg.data.tasks import load_spec
    from metaseg.jobs.seen import check_evaluation_task

    out = prepare_out_dir(out, overwrite)
    model, learner, name, info = build_method(checkpoint, method, seed, steps)
    if name == "medsam_lite_zeroshot":
        steps = 0  # zero-shot means no adaptation, whatever --steps says
    size = int(size or info.get("image_size") or 128)
    spec: dict[str, Any] = {"root": _dataset_root(dataset)}
    if layout:
        spec["layout"] = layout
    task = load_spec(spec, size=size, cache_dir=cache_dir)
    seen = check_evaluation_task(info, task, allow_seen, f"--dataset {dataset}")  # before any episode runs

    def progress(r: EpisodeResult) -> None:
        echo(f"K={r.shots} episode {r.episode + 1}/{episodes}: Dice {r.dice:.4f} IoU {r.iou:.4f} ({r.seconds:.1f}s)")

    results = evaluate_method(model, learner, [task], shots, episodes, seed=seed, steps=steps,
                              queries=queries, method=name, progress=progress)
    rows = summarise(results)
    seen_lines = seen.summary_lines([q for r in results for q in r.query_ids]) if seen else []
    write_episode_csv(results, out / "episodes.csv")
    write_image_csv(results, out / "images.csv")
    details = [
        f"checkpoint: {info.get('path', f'none ({name} baseline)')}",
        f"dataset: {dataset} ({task.name}, {len(task)} images at {size} px)",
        f"episodes per K: {episodes}; queries per episode: up to {queries}; seed: {seed}; "
        f"adaptation steps: {steps if steps else 'learner default'}",
        "support and query of every episode are disjoint (checked by id and content hash)",
        *seen_lines,
    ]
    (out / "summary.md").write_text(summary_markdown(rows, f"Few-shot evaluation: {name} on {task.name}", details))
    for r in rows:
        echo(f"{r['method']} K={r['shots']}: Dice {_pm(r['dice'], r['dice_ci95'])}, IoU {_pm(r['iou'], r['iou_ci95'])} "
             f"({r['images']} query images, {r['episodes']} episodes)")
    for line in seen_lines:
        echo(line)
    echo(f"wrote {out / 'episodes.csv'}, {out / 'images.csv'}, {out / 'summary.md'}")
    return rows


def _dataset_root(dataset: str) -> str:
    """A folder that exists relative to the working directory is used as such; otherwise the name is
    looked up under the data root (../shared/datasets or $METASEG_DATA); synthetic:<family> also works."""
    if dataset.startswith("synthetic:"):
        return dataset
    path = Path(dataset).expanduser()
    return str(path.resolve()) if path.exists() else dataset
