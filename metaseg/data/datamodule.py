"""LightningDataModule: meta-batches of training episodes, fixed meta-validation / meta-test episodes.

Episode stream (what makes runs reproducible and resumable)
-----------------------------------------------------------
Training episode number ``g`` (a *global index*) is ``EpisodeSampler(train_tasks, seed=seed,
stream="train").sample(g)``: a pure function of (seed, g, tasks, shots, queries, mix_tasks,
augment). Meta-batch ``b`` of epoch ``e`` holds the global indices
``(e * steps_per_epoch + b) * meta_batch_size + j`` for ``j < meta_batch_size``, where
``steps_per_epoch = train_episodes_per_epoch // meta_batch_size`` (at least 1). Nothing depends on
earlier batches, worker count or process, so:

* the same seed gives the same meta-batches on any machine and with any ``num_workers``;
* exact resume: the sampler reads the epoch (and, after a mid-epoch restart, the number of
  meta-batches already trained in it) from the attached Trainer's loop progress *when the epoch's
  iterator is created*, which Lightning restores from the checkpoint before creating it; the loader
  also exposes ``state_dict``/``load_state_dict`` so Lightning treats it as resumable. Without a
  Trainer, ``set_epoch`` (Lightning and plain loops call it) chooses the epoch.

Distributed training (DDP)
--------------------------
The train loader's sampler is a ``DistributedSampler`` subclass, so Lightning does not replace it.
With world size W, each rank takes ``meta_batch_size / W`` episodes of every meta-batch
(rank r: ``j ≡ r (mod W)``); the union over ranks of their step-``b`` batches is exactly the
single-process meta-batch ``b``. ``meta_batch_size`` must be divisible by W. Averaging the ranks'
(per-rank mean) meta-gradients therefore equals the single-process meta-gradient.
Rank and world size come from the Trainer (or ``torch.distributed``), read in ``train_dataloader``.

Validation and test loaders are map-style over fixed episode indices 0..n-1 of their own seed
streams ("val", "test"), one episode per batch, tasks in round-robin order, no augmentation; under
DDP Lightning's injected DistributedSampler shares them out (padding repeats an episode when n is
not divisible by W).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from metaseg.data.episodes import EpisodeSampler
from metaseg.data.tasks import TaskSpec, check_leakage, load_spec, split_meta_val
from metaseg.data.types import Episode, TaskArrays
from metaseg.errors import MetasegError, at_least


def keep_list(batch: list[Episode]) -> list[Episode]:
    """Collate that returns the episodes unchanged: a meta-batch is a list, not a stacked tensor."""
    return batch


class EpisodeDataset(Dataset):
    """Map-style view of a sampler: item ``g`` is episode ``g`` (picklable: only arrays and ints)."""

    def __init__(self, sampler: EpisodeSampler, length: int) -> None:
        self.sampler = sampler
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Episode:
        return self.sampler.sample(int(index))


class MetaBatchSampler(DistributedSampler):
    """Yields this rank's global episode indices, meta-batch after meta-batch (see module docstring).

    ``position`` is an optional callable returning (epoch, meta-batches already done in it); it
    is asked when iteration starts, so a resumed run continues the exact stream.
    """

    def __init__(self, dataset: Dataset, steps_per_epoch: int, meta_batch_size: int, rank: int = 0, world_size: int = 1, position=None) -> None:
        if meta_batch_size % world_size:
            raise MetasegError(f"meta_batch_size={meta_batch_size} must be divisible by the number of processes ({world_size})")
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        self.steps_per_epoch, self.meta_batch_size = steps_per_epoch, meta_batch_size
        self.per_rank = meta_batch_size // world_size
        self.position = position
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _start(self) -> tuple[int, int]:
        if self.position is not None:
            found = self.position()
            if found is not None:
                return found
        return self.epoch, self.skip

    def __iter__(self) -> Iterator[int]:
        epoch, done = self._start()
        first = epoch * self.steps_per_epoch
        for step in range(first + done, first + self.steps_per_epoch):
            base = step * self.meta_batch_size
            yield from range(base + self.rank, base + self.meta_batch_size, self.num_replicas)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.per_rank


def _trainer_position(datamodule: "MetaDataModule"):
    """(epoch, meta-batches done in it) from the attached Trainer's restored loop progress, or None."""

    def position() -> tuple[int, int] | None:
        trainer = getattr(datamodule, "trainer", None)
        if trainer is None:
            return None
        fit_loop = trainer.fit_loop
        epoch = fit_loop.epoch_progress.current.processed
        done = 0
        if fit_loop.restarting:  # resumed from a checkpoint saved inside an epoch
            done = fit_loop.epoch_loop.batch_progress.current.processed
            if done >= datamodule.steps_per_epoch:
                epoch, done = epoch + 1, 0
        return epoch, done

    return position


class _ResumableLoader(DataLoader):
    """DataLoader that Lightning treats as resumable (the stream position lives in the Trainer's loops)."""

    def state_dict(self) -> dict[str, Any]:
        return {"stream": "metaseg-episodes-v1"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MetaDataModule(pl.LightningDataModule):
    """Episodes for meta-training (meta-batches) and fixed episode lists for meta-validation / test.

    Task lists are TaskSpec-like dicts ``{name, root, layout?, category?, **reader options}``
    (root: folder under the data root, absolute path, or ``synthetic:<family>``).
    ``val_split`` > 0 holds that fraction of every meta-training task with at least
    ``val_split_min_images`` images out as a meta-val task ``<name>:val`` (by content hash, seeded by
    ``seed``), beside any ``val_tasks``: meta-validation from the meta-training distribution.
    """

    def __init__(
        self,
        train_tasks: Sequence[Mapping[str, Any]] = (),
        val_tasks: Sequence[Mapping[str, Any]] = (),
        test_tasks: Sequence[Mapping[str, Any]] = (),
        shots: int = 5,
        queries: int = 15,
        meta_batch_size: int = 4,
        image_size: int = 128,
        val_episodes: int = 20,
        test_episodes: int = 50,
        train_episodes_per_epoch: int = 100,
        augment: bool | str = True,
        mix_tasks: int = 1,
        seed: int = 0,
        data_root: str | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        synthetic_n: int = 64,
        val_split: float = 0.0,
        val_split_min_images: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if augment not in (True, False, "default", "dihedral", "none"):
            raise MetasegError(f"data.augment must be true, false, 'default', 'dihedral' or 'none', got {augment!r}")
        if meta_batch_size < 1 or train_episodes_per_epoch < 1:
            raise MetasegError("meta_batch_size and train_episodes_per_epoch must be >= 1")
        for key, low in {"image_size": 8, "shots": 1, "queries": 1, "val_episodes": 1, "test_episodes": 1, "seed": 0}.items():
            at_least(f"data.{key}", locals()[key], low)  # before any task is loaded, named as the option is set
        self.train_specs = [TaskSpec.coerce(s) for s in train_tasks or ()]
        self.val_specs = [TaskSpec.coerce(s) for s in val_tasks or ()]
        self.test_specs = [TaskSpec.coerce(s) for s in test_tasks or ()]
        self.shots, self.queries, self.meta_batch_size = shots, queries, meta_batch_size
        self.image_size, self.seed, self.mix_tasks = image_size, seed, mix_tasks
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.steps_per_epoch = max(1, train_episodes_per_epoch // meta_batch_size)
        self.augment, self.num_workers, self.synthetic_n = augment, num_workers, synthetic_n
        self.data_root, self.cache_dir = data_root, cache_dir
        self.val_split, self.val_split_min_images = val_split, val_split_min_images
        self.tasks: dict[str, list[TaskArrays]] | None = None
        self._seen: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    def setup(self, stage: str | None = None) -> None:
        """Load every task once (all stages), then refuse leaking splits before anything else runs."""
        if self.tasks is not None:
            return
        load = lambda specs: [  # noqa: E731
            load_spec(s, self.image_size, cache_dir=self.cache_dir, data_root=self.data_root, synthetic_n=self.synthetic_n)
            for s in specs
        ]
        train, val = load(self.train_specs), load(self.val_specs)
        if self.val_split:
            train, held = split_meta_val(train, self.val_split, self.val_split_min_images, self.seed)
            val = val + held
        self.use_tasks(train, val, load(self.test_specs))

    def use_tasks(self, train: list[TaskArrays], val: list[TaskArrays], test: list[TaskArrays] = ()) -> None:
        """Take already-loaded tasks (e.g. a meta-val split that no task spec can name) instead of the
        specs, after the same leakage check `setup()` runs: meta-train never shares an image with
        meta-val or meta-test."""
        check_leakage(list(train), list(val) + list(test))
        self.tasks = {"train": list(train), "val": list(val), "test": list(test)}
        self._seen = None

    def seen_record(self) -> dict[str, Any] | None:
        """Fingerprints of every meta-train and meta-val image (computed once), which checkpoints store so
        that `evaluate` and `adapt` can tell images the model was trained or selected on (metaseg.jobs.seen)."""
        if self.tasks is None:
            return None
        if self._seen is None:
            from metaseg.data.fingerprints import task_fingerprints

            self._seen = task_fingerprints(self.tasks["train"] + self.tasks["val"]).to_record()
        return self._seen

    def _tasks(self, split: str) -> list[TaskArrays]:
        if self.tasks is None:
            self.setup()
        return self.tasks[split]

    # ------------------------------------------------------------------ samplers
    def train_sampler(self) -> EpisodeSampler:
        tasks = self._tasks("train")
        if not tasks:
            raise MetasegError("no meta-training tasks: set data.train_tasks")
        from metaseg.data.transforms import support_augment  # lazy: albumentations import is slow

        return EpisodeSampler(
            tasks, self.shots, self.queries, seed=self.seed, mix_tasks=self.mix_tasks,
            augment=support_augment(self.augment), stream="train",
        )

    def eval_sampler(self, split: str) -> EpisodeSampler | None:
        tasks = self._tasks(split)
        if not tasks:
            return None
        return EpisodeSampler(tasks, self.shots, self.queries, seed=self.seed, stream=split, task_order="cycle")

    def fixed_episodes(self, split: str) -> list[Episode]:
        """The meta-validation ("val") or meta-test ("test") episodes, identical on every call."""
        sampler = self.eval_sampler(split)
        n = self.val_episodes if split == "val" else self.test_episodes
        return sampler.fixed_episodes(n) if sampler else []

    # ------------------------------------------------------------------ loaders
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _loader_options(self) -> dict[str, Any]:
        # no persistent workers needed: the episode stream does not depend on worker state
        return {"collate_fn": keep_list, "num_workers": self.num_workers}

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        rank, world = self._rank_and_world()
        dataset = EpisodeDataset(sampler, length=2**62)  # indices are global and unbounded
        index_sampler = MetaBatchSampler(
            dataset, self.steps_per_epoch, self.meta_batch_size, rank=rank, world_size=world, position=_trainer_position(self)
        )
        return _ResumableLoader(dataset, batch_size=index_sampler.per_rank, sampler=index_sampler, **self._loader_options())

    def _eval_loader(self, split: str) -> DataLoader | list:
        sampler = self.eval_sampler(split)
        if sampler is None:
            return []
        n = self.val_episodes if split == "val" else self.test_episodes
        return DataLoader(EpisodeDataset(sampler, n), batch_size=1, shuffle=False, **self._loader_options())

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["trainer"] = None  # a Trainer is not picklable; a copy (worker, spawned process) does not need it
        return state


__all__ = ["MetaDataModule", "EpisodeDataset", "MetaBatchSampler", "keep_list"]
