"""Tasks: what an experiment names (a dataset folder, a category inside one, or a synthetic family),
how a name becomes arrays, how splits are built, and the leakage check that guards them.

A task spec in YAML::

    train_tasks:
      - {name: kvasir, root: Kvasir-SEG}                    # folder under the data root
      - {name: isic-melanoma, root: ISIC-2017-256sq, category: melanoma}
      - {name: blobs, root: "synthetic:dark_blob"}          # built-in, needs no files
      - {name: mine, root: /data/my_set, layout: generic, images_dir: img, masks_dir: gt}

Keys other than name/root/layout/category are reader options passed to the reader
(for synthetic tasks: ``n`` and ``seed``).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaseg.data.synthetic import make_synthetic_task
from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError

SYNTHETIC_PREFIX = "synthetic:"
DATA_ENV = "METASEG_DATA"


@dataclass(frozen=True)
class TaskSpec:
    """One task as an experiment names it; `options` are extra reader options (or synthetic n/seed)."""

    name: str
    root: str
    layout: str | None = None
    category: str | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_synthetic(self) -> bool:
        return str(self.root).startswith(SYNTHETIC_PREFIX)

    @property
    def family(self) -> str:
        return str(self.root)[len(SYNTHETIC_PREFIX):]

    @classmethod
    def coerce(cls, spec: "TaskSpec | Mapping[str, Any] | str") -> "TaskSpec":
        """Accept a TaskSpec, a YAML dict ({name, root, layout?, category?, **options}) or a bare root string."""
        if isinstance(spec, TaskSpec):
            return spec
        if isinstance(spec, str):
            return cls(name=_default_name(spec), root=spec)
        if not isinstance(spec, Mapping) or "root" not in spec:
            raise MetasegError(f"task spec {spec!r} needs at least a 'root' (a dataset folder or synthetic:<family>)")
        d = dict(spec)
        root = str(d.pop("root"))
        name = str(d.pop("name", None) or _default_name(root))
        options = dict(d.pop("options", None) or {})
        layout, category = d.pop("layout", None), d.pop("category", None)
        options.update(d)
        return cls(name=name, root=root, layout=layout, category=category, options=options)


def _default_name(root: str) -> str:
    return root[len(SYNTHETIC_PREFIX):] if root.startswith(SYNTHETIC_PREFIX) else Path(root).name


def resolve_data_root(data_root: str | os.PathLike | None = None, required: bool = False) -> Path | None:
    """The folder that relative task roots live in: explicit argument, else $METASEG_DATA, else the
    `shared/datasets` folder found walking up from this package (the checkout's ../shared/datasets).

    Returns None when none exists, unless `required` (then MetasegError says to set METASEG_DATA).
    """
    if data_root is not None:
        path = Path(data_root).expanduser()
        if not path.is_dir():
            raise MetasegError(f"data root {path} is not a folder (option data_root)")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise MetasegError(f"${DATA_ENV}={env} is not a folder")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    if required:
        raise MetasegError(
            f"no data root found: set {DATA_ENV} to the folder holding the datasets (or pass data_root)"
        )
    return None


def spec_path(spec: TaskSpec, data_root: str | os.PathLike | None = None) -> Path:
    """Absolute folder of a real-data spec (absolute roots are used as they are)."""
    root = Path(spec.root).expanduser()
    if not root.is_absolute():
        base = resolve_data_root(data_root, required=True)
        root = base / root
    if not root.is_dir():
        raise MetasegError(f"task {spec.name!r}: dataset folder {root} does not exist")
    return root


def load_spec(
    spec: TaskSpec | Mapping[str, Any] | str,
    size: int,
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    synthetic_n: int = 64,
    channels: int | None = None,
) -> TaskArrays:
    """Arrays of one task at `size` px: synthetic families are generated, datasets go through the cache
    (`channels`: the model's in_channels, which decides the conversion of a mixed grayscale/colour task)."""
    spec = TaskSpec.coerce(spec)
    if spec.is_synthetic:
        opts = dict(spec.options)
        n, seed = int(opts.pop("n", synthetic_n)), int(opts.pop("seed", 0))
        if opts:
            raise MetasegError(f"task {spec.name!r}: synthetic tasks take only n and seed, not {sorted(opts)}")
        task = make_synthetic_task(spec.family, n=n, size=size, seed=seed)
        task.name = spec.name
        return task
    from metaseg.data.cache import load_task  # lazy: the cache pulls in image decoders

    options = dict(spec.options)
    max_images = options.pop("max_images", None)
    task = load_task(
        spec_path(spec, data_root),
        layout=spec.layout,
        size=size,
        category=spec.category,
        cache_dir=cache_dir,
        name=spec.name,
        channels=channels,
        **options,
    )
    return task if max_images is None else limit_images(task, max_images, where=f"task {spec.name!r}: max_images")


def count_images(spec: TaskSpec | Mapping[str, Any] | str, data_root: str | os.PathLike | None = None,
                 synthetic_n: int = 64) -> int:
    """How many images `load_spec` will give (listing and hashing only, nothing decoded): lets a job
    check its --shots against a task before any work (duplicates are already left out)."""
    spec = TaskSpec.coerce(spec)
    options = dict(spec.options)
    if spec.is_synthetic:
        return int(options.get("n", synthetic_n))
    from metaseg.data.cache import list_task

    max_images = options.pop("max_images", None)
    n = len(list_task(spec_path(spec, data_root), spec.layout, spec.category, **options).pairs)
    return n if max_images is None else min(n, int(max_images))


def limit_images(task: TaskArrays, max_images: Any, where: str = "max_images") -> TaskArrays:
    """The first `max_images` rows in content-hash order: a fixed pseudo-random subset that does not
    depend on file names or listing order (a renamed copy of a dataset gives the same subset), for
    datasets too large to embed or train on in full on a CPU."""
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise MetasegError(f"{where} must be an integer >= 1, got {max_images!r}")
    if max_images >= len(task):
        return task
    rows = sorted(range(len(task)), key=lambda i: (task.hashes[i], i))[:max_images]
    rows.sort()
    return TaskArrays(name=task.name, images=task.images[rows], masks=task.masks[rows], ids=[task.ids[i] for i in rows],
                      hashes=[task.hashes[i] for i in rows], sources=[task.sources[i] for i in rows])


def check_leakage(train: Iterable[TaskArrays], test: Iterable[TaskArrays]) -> None:
    """Refuse splits where one image (same content hash: certain) is in both meta-train and meta-val/test;
    warn about near-duplicates (perceptual hash within NEAR_BITS bits: the same picture resized,
    re-encoded or slightly cropped, or a look-alike) and report both counts. Generated (synthetic)
    held-out images are compared by exact hash only: they cannot be a re-encoded copy, and simple
    shapes have many look-alikes."""
    from metaseg.data.fingerprints import NEAR_BITS, WORDS, nearest, perceptual_hashes, reference_hashes

    train, test = list(train), list(test)
    seen: dict[str, tuple[str, str]] = {}
    parts, origin = [], []  # reference hashes (with crops) and the (task, file) each row belongs to
    for task in train:
        for h, src in zip(task.hashes, task.sources):
            seen.setdefault(h, (task.name, src))
        parts.append(reference_hashes(task.images))
        origin += [(task.name, task.sources[i % len(task)]) for i in range(len(parts[-1]))]
    reference = np.concatenate(parts) if parts else np.zeros((0, WORDS), np.uint64)
    exact, near = [], []
    for task in test:
        distance, where = nearest(perceptual_hashes(task.images), reference) if len(task) else ([], [])
        for h, src, d, w in zip(task.hashes, task.sources, distance, where):
            if h in seen:
                exact.append((seen[h], (task.name, src), f"sha1 {h[:12]}"))
            elif d <= NEAR_BITS and not src.startswith(SYNTHETIC_PREFIX):  # generated images: exact hash only
                near.append((origin[w], (task.name, src), f"perceptual hash {d} bits apart"))
    counts = f"{len(exact)} exact copies, {len(near)} near-duplicates"
    if exact or near:
        (train_task, train_src), (test_task, src), how = (exact or near)[0]
        example = (f"{train_src} (meta-train task {train_task!r}) and {src} (held-out task {test_task!r}) are "
                   f"{'the same image' if exact else 'near-duplicates'} ({how})")
        if exact:
            raise MetasegError(f"data leakage: held-out images are in meta-training ({counts}), e.g. {example}; remove them")
        warnings.warn(f"possible data leakage ({counts}; near = within {NEAR_BITS} bits): {example}", stacklevel=2)


def subset(task: TaskArrays, rows: Iterable[int], name: str) -> TaskArrays:
    """The rows `rows` of `task` as a task of their own, named `name`."""
    rows = np.asarray(list(rows), dtype=np.int64)
    return TaskArrays(name=name, images=task.images[rows], masks=task.masks[rows],
                      ids=[task.ids[i] for i in rows], hashes=[task.hashes[i] for i in rows],
                      sources=[task.sources[i] for i in rows])


def split_by_hash(task: TaskArrays, fraction: float, seed: int) -> tuple[TaskArrays, TaskArrays]:
    """(kept part, held-out part `<name>:val`) of one task, split by content hash so that duplicated
    images land on one side only; the same (task name and content, fraction, seed) always gives
    the same split."""
    unique = sorted(set(task.hashes))
    rng = np.random.default_rng([seed, int(hashlib.sha1(task.name.encode()).hexdigest()[:8], 16)])
    held = set(rng.permutation(unique)[: max(1, int(round(fraction * len(unique))))].tolist())
    val_rows = [i for i, h in enumerate(task.hashes) if h in held]
    train_rows = [i for i, h in enumerate(task.hashes) if h not in held]
    return subset(task, train_rows, task.name), subset(task, val_rows, f"{task.name}:val")


def split_meta_val(tasks: Iterable[TaskArrays], fraction: float, min_images: int,
                   seed: int) -> tuple[list[TaskArrays], list[TaskArrays]]:
    """(meta-train, meta-val): every task with at least `min_images` images gives `fraction` of its
    images (by content hash) to a meta-val task `<name>:val`; smaller tasks stay whole in meta-train.
    Model selection then sees the meta-training distribution without seeing its images."""
    if not 0.0 < fraction < 1.0:
        raise MetasegError(f"data.val_split: a fraction between 0 and 1 is needed, not {fraction}")
    train: list[TaskArrays] = []
    val: list[TaskArrays] = []
    for task in tasks:
        if len(task) >= min_images:
            kept, held = split_by_hash(task, fraction, seed)
            train.append(kept)
            val.append(held)
        else:
            train.append(task)
    if not val:
        raise MetasegError(f"data.val_split: no meta-training task has >= {min_images} images "
                           "(data.val_split_min_images)")
    return train, val


def leave_one_dataset_out(
    specs: Iterable[TaskSpec | Mapping[str, Any] | str], target: str | TaskSpec | Mapping[str, Any]
) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """Split `specs` into (meta-train, meta-test): every task of the target's dataset is held out.

    `target` is a task name or a spec; tasks sharing its dataset root (e.g. other categories of the
    same dataset) are held out too, so that no image of the target dataset reaches meta-training.
    """
    specs = [TaskSpec.coerce(s) for s in specs]
    key = lambda s: os.path.normpath(s.root)  # noqa: E731  ("ISIC/" and "ISIC" are one dataset)
    if isinstance(target, str):
        roots = {key(s) for s in specs if target in (s.name, s.root)}
    else:
        roots = {key(TaskSpec.coerce(target))}
    held = [s for s in specs if key(s) in roots]
    if not held:
        raise MetasegError(f"leave-one-dataset-out target {target!r} is not one of {[s.name for s in specs]}")
    return [s for s in specs if key(s) not in roots], held
