"""Held-out few-shot accuracy of every learner and baseline (issue 5): leave-one-dataset-out.

    python -m benchmarks.fewshot --config benchmarks/fewshot.yaml      # = make benchmark (CPU)
    python -m benchmarks.fewshot --config benchmarks/fewshot_gpu.yaml --device cuda

The configuration lists the datasets, the held-out targets, the evaluation protocol (`evaluation`
and the test-time `adaptation` budget) and the methods. Meta-training is written in the
`metaseg meta-train` schema (experiments/*.yaml): `experiment` is the fragment shared by every
method (`trainer`, `model`, `data` sections), and each method is a fragment of its own (its
`model.learner`, and any `model`/`trainer`/`data` or `adaptation` it overrides).

For every held-out target dataset and every method:

1. sources = every other dataset (never the target); the experiment's `data.val_split` holds a
   content-hash part of the larger sources out of meta-training for checkpoint selection; the
   leakage check (`metaseg.data.tasks.check_leakage`) refuses any image shared between meta-train,
   meta-val and the target;
2. meta-training = the experiment config built for (method, target) handed to
   `metaseg.training.fit.meta_train`, the entry point of `metaseg meta-train` (the config is saved
   beside the checkpoints, so `metaseg meta-train --config <it>` reruns the part); best checkpoint
   on meta-validation Dice only;
3. evaluation = `metaseg.jobs.evaluate.evaluate_method` on the target: for each K, the same fixed
   episodes (seeded `EpisodeSampler`, queries disjoint from supports) for every method, with the
   method's test-time adaptation budget (the shared `adaptation` unless the method overrides it).

"scratch" skips step 2 (random initialisation, fine-tuned on the K shots by the `transfer`
learner's adaptation), and so does any learner with nothing to meta-train (`support_prior`, the
mean support mask cut to the supports' mean area: the floor a method must beat). Each finished (method, target) is written to
`<work_dir>/partial/<target>__<method>.json` (and its checkpoint under `<work_dir>/<target>/<method>/`),
so a killed run resumes where it stopped; a partial result made with a different configuration is
refused (pass --restart to discard it). The table, plots and README section are written by
`benchmarks.report` from the JSON.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from metaseg.data.types import TaskArrays
from metaseg.cli import Parser
from metaseg.errors import MetasegError

CONFIG_KEYS = {
    "seed", "device", "cpu_threads", "jobs", "checkpoint", "image_size", "data_root", "cache_dir", "work_dir", "results", "docs",
    "datasets", "targets", "evaluation", "adaptation", "experiment", "methods", "notes",
}
REQUIRED_KEYS = ("datasets", "targets", "evaluation", "adaptation", "experiment", "methods")
SECTIONS = ("trainer", "model", "data")  # what an experiment fragment may set (the meta-train schema's sections)
METHOD_KEYS = (*SECTIONS, "adaptation", "train", "variants", "upper_bound", "note")
UPPER_BOUNDS = ("oracle_box",)  # rows that use the query's ground truth: a ceiling, never a method
ADAPTATION_KEYS = ("steps", "inner_lr", "inner_optimizer")
# how often a part writes its resume point (last.ckpt); not in the fingerprint: results do not depend on it
CHECKPOINT_KEYS = ("every_n_train_steps", "every_minutes")
SHARED_LEARNER_OPTIONS = ("inner_lr", "inner_optimizer")  # come from the method's adaptation budget
# Set by the benchmark for every part (the fold, the paths, the device), never by a fragment.
OWNED = {"trainer": ("accelerator", "devices", "default_root_dir", "logger"),
         "model": ("val_adapt_steps",),
         "data": ("train_tasks", "val_tasks", "test_tasks", "image_size", "seed", "data_root", "cache_dir")}
ROW_KEYS = ("method", "target", "shots", "dice_mean", "dice_ci95", "iou_mean", "iou_ci95", "episodes")
Echo = Callable[[str], Any]


# ----------------------------------------------------------------------------- configuration
def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a benchmark YAML; unknown or missing keys are one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MetasegError(f"--config: no such file {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MetasegError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return check_config(cfg, str(path))


def _check_fragment(fragment: Any, where: str) -> None:
    """An experiment fragment: only the meta-train schema's sections, none of the benchmark's own keys."""
    if not isinstance(fragment, dict):
        raise MetasegError(f"{where}: expected a mapping")
    for section in SECTIONS:
        values = fragment.get(section) or {}
        if not isinstance(values, dict):
            raise MetasegError(f"{where}.{section}: expected a mapping of `metaseg meta-train` options")
        owned = sorted(set(values) & set(OWNED[section]))
        if owned:
            raise MetasegError(f"{where}.{section} sets {owned}: the benchmark sets these for every (method, target)")


def check_config(cfg: Any, where: str = "config") -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise MetasegError(f"{where}: expected a mapping of benchmark options")
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise MetasegError(f"{where}: unknown option(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise MetasegError(f"{where}: missing option(s) {missing}")
    names = [d.get("name") or d.get("root") for d in cfg["datasets"]]
    for target in cfg["targets"]:
        if target not in names:
            raise MetasegError(f"{where}: target {target!r} is not one of the datasets {names}")
    shared = cfg["experiment"]
    _check_fragment(shared, f"{where}: experiment")
    unknown = sorted(set(shared) - set(SECTIONS))
    if unknown:
        raise MetasegError(f"{where}: experiment: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    if "learner" in (shared.get("model") or {}):
        raise MetasegError(f"{where}: experiment.model.learner: the learner is per method (methods.<name>.model.learner)")
    if not (shared.get("trainer") or {}).get("max_steps"):
        raise MetasegError(f"{where}: experiment.trainer.max_steps is needed (meta-training runs one epoch of that many steps)")
    _check_adaptation(cfg["adaptation"], f"{where}: adaptation", required=True)
    unknown = sorted(set(cfg.get("checkpoint") or {}) - set(CHECKPOINT_KEYS))
    if unknown:
        raise MetasegError(f"{where}: checkpoint: unknown option(s) {unknown}; known: {list(CHECKPOINT_KEYS)}")
    if not cfg["methods"]:
        raise MetasegError(f"{where}: methods is empty")
    for method, mcfg in cfg["methods"].items():
        mcfg = mcfg or {}
        _check_fragment(mcfg, f"{where}: methods.{method}")
        unknown = sorted(set(mcfg) - set(METHOD_KEYS))
        if unknown:
            raise MetasegError(f"{where}: methods.{method}: unknown key(s) {unknown}; known: {list(METHOD_KEYS)}")
        _check_adaptation(mcfg.get("adaptation") or {}, f"{where}: methods.{method}.adaptation")
        learner = (mcfg.get("model") or {}).get("learner") or {}
        clash = [k for k in SHARED_LEARNER_OPTIONS if k in learner]
        if clash:
            raise MetasegError(f"{where}: methods.{method}.model.learner sets {clash}; the test-time adaptation budget "
                               f"is set in `adaptation` (shared) or methods.{method}.adaptation (this method's)")
        if mcfg.get("upper_bound") is not None and mcfg["upper_bound"] not in UPPER_BOUNDS:
            raise MetasegError(f"{where}: methods.{method}.upper_bound must be one of {list(UPPER_BOUNDS)}")
        if not isinstance(mcfg.get("variants") or {}, dict):
            raise MetasegError(f"{where}: methods.{method}.variants must map a name suffix to model attributes")
        if method != "scratch" and mcfg.get("train", True) and not mcfg.get("upper_bound") and "name" not in learner:
            raise MetasegError(f"{where}: methods.{method} needs model.learner.name (only 'scratch', `train: false` "
                               f"methods and upper bounds fine-tune with the transfer learner)")
        _check_learner(cfg, method, f"{where}: methods.{method}.model.learner")
    ev = cfg["evaluation"]
    if int(ev.get("episodes", 0)) < 1 or not ev.get("shots"):
        raise MetasegError(f"{where}: evaluation needs shots (a list) and episodes >= 1")
    return cfg


def _check_adaptation(adaptation: Any, where: str, required: bool = False) -> None:
    if not isinstance(adaptation, dict):
        raise MetasegError(f"{where}: expected a mapping with {list(ADAPTATION_KEYS)}")
    unknown = sorted(set(adaptation) - set(ADAPTATION_KEYS))
    if unknown:
        raise MetasegError(f"{where}: unknown option(s) {unknown}; known: {list(ADAPTATION_KEYS)}")
    if required and "steps" not in adaptation:
        raise MetasegError(f"{where}: steps is needed (the test-time adaptation budget)")


def _check_learner(cfg: dict[str, Any], method: str, where: str) -> None:
    """Check the method's learner and network options against their factories (metaseg.registry,
    as `metaseg meta-train` does) and build the learner (cheap: no network), so that a misspelt or
    ill-typed option fails when the configuration is read, in one line, not hours later."""
    from metaseg.registry import LEARNER_REGISTRY, MODEL_REGISTRY

    options = learner_config(cfg, method)
    LEARNER_REGISTRY.build(options["name"], options, where)
    network = method_fragment(cfg, method)["model"].get("model") or {"kind": "unet"}
    MODEL_REGISTRY.check(network.get("kind", "unet"), network, where.rsplit(".", 1)[0] + ".model")


def method_fingerprint(cfg: dict[str, Any], method: str, device: str) -> str:
    """Hash of everything that changes one (method, target) result (paths and thread counts excluded):
    the evaluation protocol, the method's adaptation budget and learner, and the experiment fragment
    it is meta-trained with (only the network for methods that are not meta-trained)."""
    fragment = method_fragment(cfg, method)
    if not meta_trained(cfg, method):  # scratch and support_prior never see the sources
        fragment = {"model": {"model": fragment["model"].get("model")}}
    relevant = {k: cfg.get(k) for k in ("seed", "image_size", "datasets", "evaluation")}
    relevant.update(method=method, adaptation=adaptation(cfg, method), learner=learner_config(cfg, method),
                    experiment=fragment, device=device.split(":")[0])
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- methods
def method_fragment(cfg: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
    """The shared experiment fragment with the method's sections laid over it key by key (a
    method's `model.model` replaces the shared network as a whole)."""
    own = cfg["methods"][method] or {}
    return {s: {**(cfg["experiment"].get(s) or {}), **(own.get(s) or {})} for s in SECTIONS}


def adaptation(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """The method's test-time adaptation budget: the shared one with the method's overrides."""
    return {**cfg["adaptation"], **((cfg["methods"][method] or {}).get("adaptation") or {})}


def method_learner(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """The method's own learner options as configured (scratch: the transfer learner)."""
    return dict(((cfg["methods"][method] or {}).get("model") or {}).get("learner") or {"name": "transfer"})


def learner_class(cfg: dict[str, Any], method: str) -> type:
    """The registered class behind a method, read before anything is built so that the benchmark
    knows what to meta-train and which shared options the learner takes."""
    from metaseg.meta import learner_class as registered

    return registered(method_learner(cfg, method)["name"], where=f"methods.{method}.model.learner")


def meta_trained(cfg: dict[str, Any], method: str) -> bool:
    """scratch, `train: false` methods (the network as built: a random U-Net, or a pretrained base
    such as medsam_lite), upper bounds and learners with nothing to meta-train (support_prior) only adapt."""
    mcfg = cfg["methods"][method] or {}
    if method == "scratch" or not mcfg.get("train", True) or mcfg.get("upper_bound"):
        return False
    return learner_class(cfg, method).needs_meta_training


def learner_config(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """The method's learner options plus its inner optimiser/lr from its adaptation budget
    (scratch: transfer's), the latter only for learners that take them (support_prior has no inner loop)."""
    from metaseg.registry import LEARNER_REGISTRY

    learner = method_learner(cfg, method)
    accepted = LEARNER_REGISTRY.options(learner["name"], f"methods.{method}.model.learner")
    budget = adaptation(cfg, method)
    for key in SHARED_LEARNER_OPTIONS:
        if key in budget and key in accepted:
            learner[key] = budget[key]
    return learner


def experiment_config(cfg: dict[str, Any], method: str, target: str, run_dir: Path, device: str) -> dict[str, Any]:
    """The `metaseg meta-train` config of one (method, target): the method's fragment, the fold's
    sources as meta-training tasks, one epoch of `max_steps` meta-batches, checkpoints in `run_dir`."""
    from metaseg.data.datamodule import MetaDataModule

    fragment = method_fragment(cfg, method)
    data = fragment["data"]
    batch = int(data.get("meta_batch_size", inspect.signature(MetaDataModule).parameters["meta_batch_size"].default))
    last = run_dir / "last.ckpt"
    return {
        "seed_everything": int(cfg["seed"]),
        "experiment": f"{target}/{method}",
        "trainer": {"check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, **fragment["trainer"],
                    "accelerator": "gpu" if device.startswith("cuda") else "cpu", "devices": 1,
                    "default_root_dir": str(run_dir)},
        "model": {**fragment["model"], "learner": learner_config(cfg, method),
                  "val_adapt_steps": int(adaptation(cfg, method)["steps"])},
        "data": {"train_episodes_per_epoch": int(fragment["trainer"]["max_steps"]) * batch, **data,
                 "train_tasks": [d for d in cfg["datasets"] if (d.get("name") or d.get("root")) != target],
                 "image_size": int(cfg["image_size"]), "seed": int(cfg["seed"]),
                 "data_root": cfg.get("data_root"), "cache_dir": cfg.get("cache_dir")},
        "checkpoint": {**(cfg.get("checkpoint") or {}), "dirpath": str(run_dir), "filename": "best", "save_top_k": 1},
        "ckpt_path": str(last) if last.exists() else None,  # resume a part killed mid-training
        "run_test": False,
    }


def fold(cfg: dict[str, Any], method: str, tasks: dict[str, TaskArrays], target: str) -> tuple[list[TaskArrays], list[TaskArrays]]:
    """(meta-train, meta-val) tasks of one fold, as the method's experiment splits them (the same
    `split_meta_val` the datamodule runs), checked for leakage against the target."""
    from metaseg.data.tasks import check_leakage, split_meta_val

    if target not in tasks:
        raise MetasegError(f"target {target!r} is not one of the datasets {sorted(tasks)}")
    data = method_fragment(cfg, method)["data"]
    if not data.get("val_split"):
        raise MetasegError("experiment.data.val_split: the benchmark selects checkpoints on a content-hash "
                           "meta-val split of the sources; set it (e.g. 0.2)")
    sources = [task for name, task in tasks.items() if name != target]
    train, val = split_meta_val(sources, float(data["val_split"]), int(data.get("val_split_min_images", 0)), int(cfg["seed"]))
    check_leakage(train + val, [tasks[target]])
    return train, val


def check_sizes(cfg: dict[str, Any], targets: Sequence[str]) -> None:
    """image_size, and every evaluation K against every target (listed, not decoded), before any work."""
    from metaseg.data.episodes import check_episode_counts
    from metaseg.data.tasks import TaskSpec, count_images
    from metaseg.jobs import checks

    checks.image_size("image_size", cfg["image_size"])
    specs = {TaskSpec.coerce(d).name: d for d in cfg["datasets"]}
    sizes = {t: count_images(specs[t], cfg.get("data_root")) for t in targets}
    ev = cfg["evaluation"]
    check_episode_counts(ev["shots"], ev.get("queries", 15), sizes, names=("evaluation.shots", "evaluation.queries"))


def load_tasks(cfg: dict[str, Any], echo: Echo = print) -> dict[str, TaskArrays]:
    """Every configured dataset at the benchmark size (through the on-disk cache)."""
    from metaseg.data.tasks import TaskSpec, load_spec

    tasks = {}
    for entry in cfg["datasets"]:
        spec = TaskSpec.coerce(entry)
        task = load_spec(spec, size=int(cfg["image_size"]), cache_dir=cfg.get("cache_dir"), data_root=cfg.get("data_root"))
        task.name = spec.name
        tasks[spec.name] = task
        echo(f"  {spec.name}: {len(task)} images, {task.channels} channel(s), {cfg['image_size']} px")
    return tasks


def build_untrained(cfg: dict[str, Any], method: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Random initialisation (seeded) + the method's adaptation, nothing meta-trained (scratch:
    the transfer learner's fine-tuning)."""
    from metaseg.meta import create_learner
    from metaseg.models import create_model

    torch.manual_seed(int(cfg["seed"]))
    model = create_model(**method_fragment(cfg, method)["model"].get("model", {"kind": "unet"})).to(device).eval()
    learner = learner_config(cfg, method)
    return model, create_learner(learner.pop("name"), **learner).to(device)


def meta_train(cfg: dict[str, Any], method: str, target: str, run_dir: Path, device: str,
               echo: Echo = print) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """Meta-train one method on one fold through the `metaseg meta-train` entry point; returns the
    best (meta-val) model + learner. Resumes from `run_dir/last.ckpt` when a previous run was killed."""
    from metaseg.checkpoints import load_module
    from metaseg.training.fit import meta_train as fit

    done = run_dir / "trained.json"
    if not done.exists():
        start = time.perf_counter()
        result = fit(experiment_config(cfg, method, target, run_dir, device))
        info = {"checkpoint": result["best"] or result["last"], "val_dice": result["val_dice"],
                "train_seconds": time.perf_counter() - start, "steps": result["steps"],
                "config": str(Path(result["log_dir"]) / "config.yaml")}
        done.write_text(json.dumps(info, indent=1))
        echo(f"  meta-trained {method} ({info['steps']} steps, {info['train_seconds']:.0f}s); "
             f"best meta-val Dice {info['val_dice']}")
    info = json.loads(done.read_text())
    module = load_module(info["checkpoint"], "meta-trained checkpoint", map_location=device).to(device)
    module.eval()
    return module.model, module.learner, info


# ----------------------------------------------------------------------------- evaluation
def evaluate(cfg: dict[str, Any], method: str, model: torch.nn.Module, learner: torch.nn.Module,
             target: TaskArrays, device: str, echo: Echo = print) -> list[dict[str, Any]]:
    """Rows (one per K) on the fixed target episodes; `episode_dice` keeps the per-episode means
    so that methods can be compared episode by episode (they all see the same episodes)."""
    from metaseg.jobs.evaluate import evaluate_method, summarise
    from metaseg.metrics import mean_ci_text

    ev = cfg["evaluation"]
    mcfg = cfg["methods"][method] or {}
    shots, episodes, seed, queries = [int(k) for k in ev["shots"]], int(ev["episodes"]), int(cfg["seed"]), int(ev.get("queries", 15))
    if mcfg.get("upper_bound") == "oracle_box":
        results = oracle_box_results(model, target, shots, episodes, seed, queries, method, device)
    else:  # variants (e.g. _refine) are scored after the same adaptation as the method itself
        results = evaluate_method(model, learner, [target], shots, episodes, seed=seed,
                                  steps=int(adaptation(cfg, method)["steps"]), queries=queries, method=method,
                                  device=device, variants={"": {}, **(mcfg.get("variants") or {})})
    rows = []
    for s in summarise(results):
        group = [r for r in results if r.shots == s["shots"] and r.method == s["method"]]
        rows.append({
            "method": s["method"], "target": target.name, "shots": int(s["shots"]),
            "dice_mean": s["dice"], "dice_ci95": s["dice_ci95"], "iou_mean": s["iou"], "iou_ci95": s["iou_ci95"],
            "episodes": int(s["episodes"]), "query_images": int(s["images"]),
            "episode_dice": [round(r.dice, 5) for r in group], "episode_iou": [round(r.iou, 5) for r in group],
        })
        echo(f"  {s['method']} on {target.name}, K={s['shots']}: Dice {mean_ci_text(s['dice'], s['dice_ci95'], s['images'], 3)}, "
             f"IoU {mean_ci_text(s['iou'], s['iou_ci95'], s['images'], 3)}")
    return rows


def oracle_box_results(model: torch.nn.Module, target: TaskArrays, shots: Sequence[int], episodes: int, seed: int,
                       queries: int, method: str, device: str) -> list[Any]:
    """Upper bound, not a method: the pretrained base prompted with each query's ground-truth box, on
    the same episodes as the methods (the support set is not used)."""
    from metaseg.jobs.evaluate import EpisodeResult, evaluation_episodes
    from metaseg.metrics import dice_iou_per_image
    from metaseg.models.medsam_lite import boxes_from_masks

    if not hasattr(model, "forward_with_boxes"):
        raise MetasegError(f"methods.{method}: upper_bound oracle_box needs a box-promptable model (model.kind: medsam_lite)")
    results = []
    for k in shots:
        for index, episode in enumerate(evaluation_episodes([target], k, episodes, seed, queries)):
            start = time.perf_counter()
            x, y = episode.query_x.to(device), episode.query_y.to(device)
            logits = model.forward_with_boxes(x, boxes_from_masks(y, model.image_size))
            dice, iou = dice_iou_per_image(logits.float(), y)
            results.append(EpisodeResult(method, k, index, episode.task, episode.support_ids, episode.query_ids,
                                         dice.tolist(), iou.tolist(), time.perf_counter() - start))
    return results


def run_part(cfg: dict[str, Any], method: str, target: str, tasks: dict[str, TaskArrays], device: str,
             work_dir: Path, echo: Echo = print) -> dict[str, Any]:
    """One (method, target): meta-train (unless scratch / support_prior), evaluate, write the partial result."""
    partial = work_dir / "partial" / f"{target}__{method}.json"
    fingerprint = method_fingerprint(cfg, method, device)
    if partial.exists():
        part = json.loads(partial.read_text())
        if part.get("fingerprint") != fingerprint:
            raise MetasegError(f"{partial} was made with a different configuration; pass --restart to discard "
                               f"the results in {work_dir} (or set another work_dir)")
        echo(f"[{method} / {target}] done earlier ({partial})")
        return dict(part, resumed=True)
    echo(f"[{method} / {target}]")
    train, val = fold(cfg, method, tasks, target)
    run_dir = work_dir / target / method
    run_dir.mkdir(parents=True, exist_ok=True)
    train_info: dict[str, Any] = {"train_seconds": 0.0}
    if not meta_trained(cfg, method):
        model, learner = build_untrained(cfg, method, device)
    else:
        model, learner, train_info = meta_train(cfg, method, target, run_dir, device, echo)
    start = time.perf_counter()
    rows = evaluate(cfg, method, model, learner, tasks[target], device, echo)
    eval_seconds = time.perf_counter() - start
    note = (cfg["methods"][method] or {}).get("note")
    part = {
        "method": method, "target": target, "fingerprint": fingerprint, "device": device,
        "meta_train_tasks": [t.name for t in train], "meta_val_tasks": [t.name for t in val],
        "meta_val_dice": train_info.get("val_dice"), "meta_train_steps": train_info.get("steps", 0),
        "train_seconds": round(float(train_info["train_seconds"]), 1), "eval_seconds": round(eval_seconds, 1),
        "rows": [dict(r, note=note) if note else r for r in rows],
    }
    partial.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial.with_suffix(".tmp")
    tmp.write_text(json.dumps(part, indent=1))
    tmp.replace(partial)  # atomic: a killed run never leaves a half-written result
    return part


# ----------------------------------------------------------------------------- driver
def environment(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"device": device, "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


_WORKER: dict[str, Any] = {}


def _start_worker(cfg: dict[str, Any], device: str, parent: int | None = None) -> None:
    """Process-pool initialiser: thread count and the datasets, once per worker process."""
    if parent is not None:
        die_with_parent(parent)
    _set_threads(cfg, device)
    _quiet_warnings()
    _WORKER.update(cfg=cfg, device=device, tasks=load_tasks(cfg, echo=lambda _: None))


def die_with_parent(parent: int) -> None:
    """Have the kernel end this worker when the benchmark process dies (Linux PR_SET_PDEATHSIG).
    Without it a killed `make benchmark --jobs 2` left its workers training on, and a resumed run
    then wrote the same part's checkpoints from two processes at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent was already gone before the request took effect
        os._exit(1)


def _worker_part(method: str, target: str, work_dir: str) -> dict[str, Any]:
    return run_part(_WORKER["cfg"], method, target, _WORKER["tasks"], _WORKER["device"], Path(work_dir),
                    echo=lambda line: print(line, flush=True))


def _set_threads(cfg: dict[str, Any], device: str) -> None:
    if not device.startswith("cuda") and cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg["cpu_threads"]))


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Converting a tensor with requires_grad=True to a scalar.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")


def run_benchmark(cfg: dict[str, Any], device: str | None = None, methods: Sequence[str] | None = None,
                  targets: Sequence[str] | None = None, restart: bool = False, command: str = "",
                  jobs: int | None = None, echo: Echo = print) -> dict[str, Any]:
    """Run (or resume) every (method, target) and return the results document (not yet written).

    jobs > 1 runs (method, target) parts in that many worker processes (each with `cpu_threads`
    threads): on a small CPU, several single-threaded processes use the cores better than one
    process's intra-op threads for these tiny convolutions. Results do not depend on `jobs`.
    """
    cfg = check_config(copy.deepcopy(cfg))
    device = device or cfg.get("device") or "cpu"
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise MetasegError(f"--device {device!r}: expected cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MetasegError("--device cuda: no CUDA device is available")
    _set_threads(cfg, device)
    _quiet_warnings()
    methods = list(methods or cfg["methods"])
    targets = list(targets or cfg["targets"])
    unknown = [m for m in methods if m not in cfg["methods"]] + [t for t in targets if t not in cfg["targets"]]
    if unknown:
        raise MetasegError(f"--methods/--targets: {unknown} not in the configuration")
    check_sizes(cfg, targets)
    jobs = int(jobs or cfg.get("jobs") or 1)
    work_dir = Path(cfg.get("work_dir") or "runs/fewshot")
    if restart and work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    echo(f"loading {len(cfg['datasets'])} datasets at {cfg['image_size']} px")
    tasks = load_tasks(cfg, echo)
    pending = [(m, t) for m in methods for t in targets]
    if jobs <= 1:
        parts = [run_part(cfg, m, t, tasks, device, work_dir, echo) for m, t in pending]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(cfg, device, os.getpid())) as pool:
            futures = [pool.submit(_worker_part, m, t, str(work_dir)) for m, t in pending]
            parts = [f.result() for f in futures]
    computed = sum(not p.get("resumed") for p in parts)
    wall = record_wall(work_dir, time.perf_counter() - start, computed, jobs)
    return {
        "benchmark": "fewshot (leave-one-dataset-out, issue 5)",
        "command": command,
        "config": cfg,
        "environment": environment(device),
        "jobs": jobs,
        "wall_seconds": None if wall is None else round(wall, 1),
        "wall_seconds_note": "wall-clock time of the benchmark invocations that produced these results, "
                             "summed over resumed invocations",
        "compute_seconds": round(sum(p["train_seconds"] + p["eval_seconds"] for p in parts), 1),
        "runs": [{k: v for k, v in p.items() if k not in ("rows", "resumed")} for p in parts],
        "rows": [r for p in parts for r in p["rows"]],
    }


def record_wall(work_dir: Path, seconds: float, parts: int, jobs: int) -> float | None:
    """Append this invocation's wall time to `<work_dir>/wall.json` when it computed any part (an
    invocation that only reassembles finished parts adds nothing); return the total so far, or
    None when no invocation that computed a part was recorded (unknown, not 0)."""
    log = work_dir / "wall.json"
    entries = json.loads(log.read_text()) if log.exists() else []
    if parts == 0:
        return float(sum(e["seconds"] for e in entries)) if entries else None
    entries.append({"seconds": round(seconds, 1), "parts": parts, "jobs": jobs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    log.write_text(json.dumps(entries, indent=1))
    return float(sum(e["seconds"] for e in entries))


def write_results(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.fewshot", description=__doc__.split("\n\n")[0])  # one-line usage errors
    parser.add_argument("--config", default="benchmarks/fewshot.yaml", help="benchmark YAML (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all in the config)")
    parser.add_argument("--targets", nargs="+", default=None, help="only these targets (default: all in the config)")
    parser.add_argument("--restart", action="store_true", help="discard the partial results in work_dir first")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: the config's `jobs`, else 1)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        from benchmarks.report import write_report

        cfg = load_config(args.config)
        command = "python -m benchmarks.fewshot " + " ".join(sys.argv[1:] if argv is None else argv)
        doc = run_benchmark(cfg, args.device, args.methods, args.targets, args.restart, command.strip(), args.jobs)
        path = write_results(doc, cfg.get("results") or "benchmarks/results/fewshot.json")
        for written in [path, *write_report(doc, path, cfg.get("docs"))]:
            print(f"wrote {written}")
        wall = "not recorded" if doc["wall_seconds"] is None else f"{doc['wall_seconds'] / 60:.1f} min"
        print(f"total wall time {wall} on {doc['environment']['device']}")
    except MetasegError as exc:
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
