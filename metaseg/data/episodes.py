"""Episode sampler: K-shot support + Q query from the same task(s), disjoint, seeded per episode.

Determinism: episode ``index`` is drawn from ``numpy.random.default_rng([seed, crc32(stream), index])``
and from nothing else, so the same (seed, stream, index) gives the same episode on any machine,
in any order, in any DataLoader worker or DDP rank. ``stream`` separates e.g. training episodes
from meta-validation episodes drawn with the same user seed.

Hot path: task arrays are already decoded uint8 (the cache / synthetic generator did that once);
an episode is one fancy-index of the uint8 rows, and its float32 tensors are made when first used
(or on the device, by ``Episode.to``): see `metaseg.data.types.PixelEpisode`.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metaseg.data.types import Episode, PixelEpisode, TaskArrays
from metaseg.errors import MetasegError, at_least

# augment(images uint8 (K,C,H,W), masks uint8 (K,H,W), seed) -> (images, masks); see metaseg.data.transforms
Augment = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EpisodeRows:
    """Which rows of which tasks form an episode (no pixels): the cheap half of sampling."""

    tasks: tuple[int, ...]  # task indices, len = mix_tasks
    support: tuple[np.ndarray, ...]  # per task, K row indices
    query: tuple[np.ndarray, ...]  # per task, Q row indices, disjoint from support
    augment_seed: int


class EpisodeSampler:
    """Draw episodes from `tasks`.

    mix_tasks=N ("N-way" in the iMAML few-shot segmentation setting): N distinct tasks per episode,
    each contributing K support and Q query rows (support N*K, query N*Q images); the episode's
    task is the names joined by '+', and ids are prefixed ``task/`` so they stay unambiguous.
    task_order="cycle" (evaluation lists) takes task ``index mod T`` instead of a random task.
    Tasks of different channel counts can only be mixed after repeating grey to 3 channels,
    which is done explicitly here (never silently for unmixed episodes).
    """

    def __init__(
        self,
        tasks: Sequence[TaskArrays],
        shots: int,
        queries: int,
        seed: int = 0,
        mix_tasks: int = 1,
        augment: Augment | None = None,
        stream: str = "train",
        task_order: str = "random",
    ) -> None:
        if not tasks:
            raise MetasegError("episode sampler needs at least one task")
        if task_order not in ("random", "cycle") or (task_order == "cycle" and mix_tasks != 1):
            raise MetasegError(f"task_order must be 'random', or 'cycle' with mix_tasks=1 (got {task_order!r})")
        if shots < 1 or queries < 1:
            raise MetasegError(f"shots and queries must be >= 1 (got shots={shots}, queries={queries})")
        if seed < 0:
            raise MetasegError(f"seed must be >= 0 (got {seed})")
        if not 1 <= mix_tasks <= len(tasks):
            raise MetasegError(f"mix_tasks={mix_tasks} needs between 1 and {len(tasks)} tasks (there are {len(tasks)})")
        for task in tasks:
            if shots + queries > len(task):
                raise MetasegError(
                    f"task {task.name!r} has {len(task)} images, fewer than shots + queries = {shots} + {queries} = {shots + queries}"
                )
        if mix_tasks > 1 and len({t.images.shape[2:] for t in tasks}) > 1:
            raise MetasegError(f"mix_tasks={mix_tasks} needs all tasks at one image size, got {sorted({t.images.shape[2:] for t in tasks})}")
        self.tasks = list(tasks)
        self.shots, self.queries, self.seed, self.mix_tasks = shots, queries, seed, mix_tasks
        self.augment = augment
        self.stream, self.task_order = stream, task_order
        self._stream_key = zlib.crc32(stream.encode())
        self._channels = max(t.channels for t in tasks) if mix_tasks > 1 else None

    # ------------------------------------------------------------------ cheap half: row indices only
    def rows(self, index: int) -> EpisodeRows:
        """Row indices of episode `index` (pure function of seed, stream, index)."""
        if index < 0:
            raise MetasegError(f"episode index must be >= 0 (got {index})")
        rng = np.random.default_rng([self.seed, self._stream_key, index])
        n_tasks = len(self.tasks)
        if self.task_order == "cycle":  # balanced fixed lists for evaluation: episode i uses task i mod T
            chosen = (index % n_tasks,)
        elif self.mix_tasks == 1:
            chosen = (int(rng.integers(n_tasks)),)
        else:
            chosen = tuple(int(t) for t in rng.choice(n_tasks, self.mix_tasks, replace=False))
        k, q = self.shots, self.queries
        picks = [rng.choice(len(self.tasks[t]), k + q, replace=False) for t in chosen]
        return EpisodeRows(
            tasks=chosen,
            support=tuple(p[:k] for p in picks),
            query=tuple(p[k:] for p in picks),
            augment_seed=int(rng.integers(2**31 - 1)),
        )

    def sample_ids(self, index: int) -> dict:
        """{"index", "task", "support", "query"} of episode `index`, without touching pixels."""
        r = self.rows(index)
        return {
            "index": index,
            "task": self._task_name(r),
            "support": self._ids(r, r.support),
            "query": self._ids(r, r.query),
        }

    # ------------------------------------------------------------------ full episode
    def sample(self, index: int) -> Episode:
        """Episode `index` over uint8 pixels (a PixelEpisode: float32 made on first use or on the device)."""
        r = self.rows(index)
        if self.augment is None and self.mix_tasks == 1:
            # one fancy-index of the support + query rows: the only copy of pixels the sampler makes
            images, masks = self._gather(r, (np.concatenate([r.support[0], r.query[0]]),))
        else:
            support = self._gather(r, r.support)
            if self.augment is not None:
                support = self.augment(*support, r.augment_seed)
            query = self._gather(r, r.query)
            images, masks = np.concatenate([support[0], query[0]]), np.concatenate([support[1], query[1]])
        return PixelEpisode(self._task_name(r), torch.from_numpy(images), torch.from_numpy(masks),
                                   self.shots * self.mix_tasks, self._ids(r, r.support), self._ids(r, r.query))

    def fixed_episodes(self, n: int) -> list[Episode]:
        """Episodes 0..n-1: the same list on every call (used for meta-validation and test)."""
        return [self.sample(i) for i in range(n)]

    # ------------------------------------------------------------------ helpers
    def _task_name(self, r: EpisodeRows) -> str:
        return "+".join(self.tasks[t].name for t in r.tasks)

    def _ids(self, r: EpisodeRows, parts: tuple[np.ndarray, ...]) -> list[str]:
        prefix = self.mix_tasks > 1
        return [
            f"{self.tasks[t].name}/{self.tasks[t].ids[i]}" if prefix else self.tasks[t].ids[i]
            for t, rows in zip(r.tasks, parts)
            for i in rows
        ]

    def _gather(self, r: EpisodeRows, parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        if self.mix_tasks == 1:
            task = self.tasks[r.tasks[0]]
            return task.images[parts[0]], task.masks[parts[0]]
        images = [self._with_channels(self.tasks[t].images[rows]) for t, rows in zip(r.tasks, parts)]
        masks = [self.tasks[t].masks[rows] for t, rows in zip(r.tasks, parts)]
        return np.concatenate(images), np.concatenate(masks)

    def _with_channels(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1] == self._channels:
            return images
        if images.shape[1] == 1:
            return np.repeat(images, self._channels, axis=1)  # grey -> RGB, explicit, for mixed episodes only
        raise MetasegError(f"cannot mix tasks with {images.shape[1]} and {self._channels} channels")


def check_episode_counts(shots: Sequence[int], queries: int, sizes: dict[str, int], cap_queries: bool = True,
                         names: tuple[str, str] = ("--shots", "--queries")) -> None:
    """The one check of --shots and --queries, against every task, before any episode is drawn or any
    image decoded (`metaseg evaluate` checks all its K at once; `metaseg data sample` and the
    benchmark, which names them `names`, share it).

    cap_queries: queries are cut to what a task has left after K shots (evaluation), so only one
    query is needed; otherwise every task must hold shots + queries images (what the sampler draws).
    """
    shots_name, queries_name = names
    for k in shots:
        at_least(shots_name, k, 1)
    at_least(queries_name, queries, 1)
    for k in shots:
        for name, n in sizes.items():
            need = k + (1 if cap_queries else queries)
            if n < need:
                what = "plus one query image" if cap_queries else f"plus {queries_name} {queries}"
                raise MetasegError(f"{shots_name} {k}: task {name!r} has {n} images, too few for {k} shots {what}")
