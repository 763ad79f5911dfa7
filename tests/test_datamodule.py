"""MetaDataModule: meta-batches, fixed eval episodes, leakage refusal, DDP split, exact resume."""
import pickle

import pytest
import pytorch_lightning as pl
import torch

from metaseg.data.datamodule import MetaBatchSampler, MetaDataModule
from metaseg.data.episodes import EpisodeSampler
from metaseg.data.types import Episode
from metaseg.errors import MetasegError

TRAIN = [{"name": "rings", "root": "synthetic:rings"}, {"name": "blobs", "root": "synthetic:dark_blob"}]
VAL = [{"name": "spots", "root": "synthetic:colour_spots"}, {"name": "lungs", "root": "synthetic:lungs"}]
TEST = [{"name": "vessels", "root": "synthetic:vessels"}]


def make_dm(**kw):
    opts = dict(train_tasks=TRAIN, val_tasks=VAL, test_tasks=TEST, shots=2, queries=3, meta_batch_size=4,
                image_size=16, val_episodes=4, test_episodes=3, train_episodes_per_epoch=8, synthetic_n=10)
    opts.update(kw)
    return MetaDataModule(**opts)


def ids(batch):
    return [(e.task, tuple(e.support_ids), tuple(e.query_ids)) for e in batch]


def test_train_meta_batches_follow_the_global_episode_stream():
    dm = make_dm(augment=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 2 and all(isinstance(b, list) and len(b) == 4 for b in batches)
    assert all(isinstance(e, Episode) and e.support_x.shape == (2, 3, 16, 16) for b in batches for e in b)
    reference = EpisodeSampler(dm.tasks["train"], 2, 3, seed=0, stream="train")
    assert ids(batches[1]) == ids([reference.sample(g) for g in range(4, 8)])
    loader.sampler.set_epoch(3)  # a new epoch continues the stream: global indices 3*8 ...
    assert ids(next(iter(loader))) == ids([reference.sample(g) for g in range(24, 28)])


def test_augmentation_only_in_training_and_seed_changes_stream():
    aug, plain = make_dm(augment=True), make_dm(augment=False)
    a, p = next(iter(aug.train_dataloader())), next(iter(plain.train_dataloader()))
    assert ids(a) == ids(p)
    assert any(not torch.equal(x.support_x, y.support_x) for x, y in zip(a, p))
    assert all(torch.equal(x.query_x, y.query_x) for x, y in zip(a, p))
    assert ids(next(iter(make_dm(seed=1).train_dataloader()))) != ids(a)


def test_val_and_test_episodes_are_fixed_balanced_and_unaugmented():
    dm = make_dm(augment=True)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == 4 and all(len(b) == 1 for b in first)
    assert ids([b[0] for b in first]) == ids([b[0] for b in second])
    assert all(torch.equal(a[0].support_x, b[0].support_x) for a, b in zip(first, second))
    assert [b[0].task for b in first] == ["spots", "lungs", "spots", "lungs"]
    assert ids(dm.fixed_episodes("val")) == ids([b[0] for b in first])
    plain = EpisodeSampler(dm.tasks["val"], 2, 3, seed=0, stream="val", task_order="cycle").sample(0)
    assert torch.equal(first[0][0].support_x, plain.support_x)
    test = list(dm.test_dataloader())
    assert len(test) == 3 and {b[0].task for b in test} == {"vessels"}
    assert make_dm(val_tasks=[]).val_dataloader() == []


def test_setup_refuses_leaking_splits():
    dm = make_dm(test_tasks=[{"name": "rings-again", "root": "synthetic:rings"}])
    with pytest.raises(MetasegError, match=r"synthetic:rings#\d+.*synthetic:rings#\d+"):
        dm.setup("fit")


def test_ranks_split_each_meta_batch_exactly():
    dm = make_dm(augment=False)
    dataset = dm.train_dataloader().dataset
    single = list(MetaBatchSampler(dataset, 3, 4))
    r0 = list(MetaBatchSampler(dataset, 3, 4, rank=0, world_size=2))
    r1 = list(MetaBatchSampler(dataset, 3, 4, rank=1, world_size=2))
    for step in range(3):
        assert sorted(r0[2 * step:2 * step + 2] + r1[2 * step:2 * step + 2]) == single[4 * step:4 * step + 4]
    with pytest.raises(MetasegError, match="meta_batch_size=3.*2"):
        MetaBatchSampler(dataset, 3, 3, rank=0, world_size=2)


def test_picklable_and_same_batches_with_workers():
    dm = make_dm(augment=True)
    dm.setup()
    dm.trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.trainer is None
    dm.trainer = None
    assert ids(next(iter(clone.train_dataloader()))) == ids(next(iter(dm.train_dataloader())))
    with_workers = make_dm(augment=True, num_workers=2)
    got = list(with_workers.train_dataloader())
    want = list(dm.train_dataloader())
    assert [ids(b) for b in got] == [ids(b) for b in want]
    assert all(torch.equal(x.support_x, y.support_x) for b, c in zip(got, want) for x, y in zip(b, c))


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(ids(batch))
        return self.w.pow(2).sum() + self.w.sum() * batch[0].query_x.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _ValidatingRecorder(_Recorder):
    def validation_step(self, batch, batch_idx):
        self.log("val_score", batch[0].query_x.mean())


def _fit(tmp_path, ckpt_path=None, callbacks=(), validate=False):
    model = _ValidatingRecorder() if validate else _Recorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=bool(callbacks), callbacks=list(callbacks), default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=None if validate else 0)
    trainer.fit(model, datamodule=make_dm(augment=True), ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.slow
def test_resume_mid_epoch_and_at_epoch_end_continues_the_exact_stream(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    full = _fit(tmp_path)
    assert len(full) == 4 and full[0] != full[2], "epochs get fresh episodes"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    assert _fit(tmp_path, callbacks=[ckpt]) == full
    for step in (1, 2):  # inside epoch 0, and at its end
        assert _fit(tmp_path, ckpt_path=str(tmp_path / "ck" / f"step={step}.ckpt")) == full[step:]


@pytest.mark.slow
def test_resume_from_checkpoint_saved_after_validation(tmp_path):
    """The usual set-up: ModelCheckpoint monitoring a validation metric, saved at epoch end."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    full = _fit(tmp_path, validate=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_score", save_top_k=-1, filename="{step}")
    _fit(tmp_path, callbacks=[ckpt], validate=True)
    assert _fit(tmp_path, ckpt_path=str(tmp_path / "ck" / "step=2.ckpt"), validate=True) == full[2:]


def test_use_tasks_takes_preloaded_tasks_after_the_leakage_check():
    from metaseg.data.synthetic import make_synthetic_task
    from metaseg.errors import MetasegError

    train = make_synthetic_task("bright_ellipse", n=8, size=16, seed=0)
    val = make_synthetic_task("dark_blob", n=8, size=16, seed=0)
    dm = MetaDataModule(train_tasks=[], val_tasks=[], test_tasks=[], shots=2, queries=2, meta_batch_size=2)
    dm.use_tasks([train], [val])
    assert dm.tasks["train"] == [train] and dm.tasks["val"] == [val] and dm.tasks["test"] == []
    dm.setup()  # keeps the preloaded tasks
    assert dm.tasks["train"] == [train]
    with pytest.raises(MetasegError, match="leakage"):
        MetaDataModule(train_tasks=[], val_tasks=[], test_tasks=[]).use_tasks([train], [val], [train])


def test_val_split_holds_a_content_hash_part_of_the_large_training_tasks_out():
    """`val_split` makes meta-val tasks `<name>:val` from the training tasks with enough images (by
    content hash: no image on both sides), beside the configured val_tasks; the same seed, the same split."""
    def setup(seed: int = 0) -> MetaDataModule:
        dm = MetaDataModule(train_tasks=[{"name": "big", "root": "synthetic:bright_ellipse", "n": 20},
                                         {"name": "small", "root": "synthetic:dark_blob", "n": 6}],
                            val_tasks=[{"name": "rings", "root": "synthetic:rings", "n": 6}],
                            image_size=16, val_split=0.25, val_split_min_images=10, seed=seed)
        dm.setup()
        return dm

    dm = setup()
    train, val = dm.tasks["train"], dm.tasks["val"]
    assert [t.name for t in train] == ["big", "small"] and [t.name for t in val] == ["rings", "big:val"]
    assert len(val[1]) == 5 and len(train[0]) == 15 and len(train[1]) == 6
    assert not set(train[0].hashes) & set(val[1].hashes)
    assert val[1].ids == setup().tasks["val"][1].ids != setup(seed=1).tasks["val"][1].ids
    with pytest.raises(MetasegError, match="val_split_min_images"):
        MetaDataModule(train_tasks=[{"root": "synthetic:dark_blob", "n": 6}], image_size=16, val_split=0.25,
                       val_split_min_images=10).setup()
