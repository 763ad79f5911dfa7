"""Task specs, data-root resolution, leakage check and leave-one-dataset-out splits."""
import numpy as np
import pytest

from metaseg.data.synthetic import make_synthetic_task
from metaseg.data.tasks import TaskSpec, check_leakage, leave_one_dataset_out, load_spec, resolve_data_root
from metaseg.data.types import TaskArrays
from metaseg.errors import MetasegError


def test_spec_from_yaml_dict_keeps_reader_options():
    spec = TaskSpec.coerce({"name": "mine", "root": "/x/y", "layout": "generic", "masks_dir": "gt"})
    assert (spec.name, spec.root, spec.layout, spec.category) == ("mine", "/x/y", "generic", None)
    assert spec.options == {"masks_dir": "gt"}
    assert TaskSpec.coerce("synthetic:rings").name == "rings"
    with pytest.raises(MetasegError, match="root"):
        TaskSpec.coerce({"name": "no-root"})


def test_load_synthetic_spec():
    task = load_spec({"name": "ring-task", "root": "synthetic:rings", "n": 12, "seed": 2}, size=32)
    assert task.name == "ring-task" and task.images.shape == (12, 3, 32, 32)
    assert np.array_equal(task.images, make_synthetic_task("rings", n=12, size=32, seed=2).images)
    assert len(load_spec("synthetic:lungs", size=16, synthetic_n=9)) == 9
    with pytest.raises(MetasegError, match="only n and seed"):
        load_spec({"name": "x", "root": "synthetic:rings", "layout_dir": "a"}, size=16)


def test_data_root_resolution(tmp_path, monkeypatch):
    assert resolve_data_root(tmp_path) == tmp_path
    with pytest.raises(MetasegError, match="data_root"):
        resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("METASEG_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path
    monkeypatch.setenv("METASEG_DATA", str(tmp_path / "missing"))
    with pytest.raises(MetasegError, match="METASEG_DATA"):
        resolve_data_root()


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(MetasegError, match="no-such-set"):
        load_spec({"name": "a", "root": "no-such-set"}, size=32, data_root=tmp_path)


def _task(name, images, tag):
    hashes = [f"h{int(im.sum())}" for im in images]  # content-derived: equal images give equal hashes
    return TaskArrays(name, np.stack(images), np.zeros((len(images), 4, 4), np.uint8),
                      [f"{tag}{i}" for i in range(len(images))], hashes, [f"/data/{tag}/img{i}.png" for i in range(len(images))])


def test_leakage_check_names_both_files():
    shared = np.full((3, 4, 4), 7, np.uint8)
    train = _task("train-set", [np.zeros((3, 4, 4), np.uint8), shared], "train")
    test = _task("test-set", [np.ones((3, 4, 4), np.uint8), np.full((3, 4, 4), 9, np.uint8), shared], "test")
    with pytest.raises(MetasegError) as err:
        check_leakage([train], [test])
    assert "/data/train/img1.png" in str(err.value) and "/data/test/img2.png" in str(err.value)
    check_leakage([train], [_task("clean", [np.ones((3, 4, 4), np.uint8)], "c")])  # no overlap: no error


def test_leakage_between_real_synthetic_tasks():
    a = make_synthetic_task("rings", n=8, size=16, seed=0)
    b = make_synthetic_task("rings", n=8, size=16, seed=0)
    b.name = "rings-again"
    with pytest.raises(MetasegError, match=r"synthetic:rings#0.*synthetic:rings#0"):
        check_leakage([a], [b])
    check_leakage([a], [make_synthetic_task("rings", n=8, size=16, seed=1)])


def test_leave_one_dataset_out_holds_out_every_task_of_the_target():
    specs = [
        {"name": "isic-mel", "root": "ISIC", "category": "melanoma"},
        {"name": "isic-nev", "root": "ISIC/", "category": "nevus"},
        {"name": "kvasir", "root": "Kvasir-SEG"},
        {"name": "blobs", "root": "synthetic:dark_blob"},
    ]
    train, test = leave_one_dataset_out(specs, "isic-mel")
    assert [s.name for s in test] == ["isic-mel", "isic-nev"]
    assert [s.name for s in train] == ["kvasir", "blobs"]
    assert not {s.root for s in train} & {s.root for s in test}
    train, test = leave_one_dataset_out(specs, "kvasir")
    assert "kvasir" not in [s.name for s in train] and [s.name for s in test] == ["kvasir"]
    with pytest.raises(MetasegError, match="'drive'"):
        leave_one_dataset_out(specs, "drive")


@pytest.mark.realdata
def test_real_dataset_spec_loads_through_the_cache_and_samples(tmp_path):
    pytest.importorskip("metaseg.data.cache", reason="the dataset cache is not available")
    root = resolve_data_root()
    if root is None or not (root / "membrane").is_dir():
        pytest.skip("needs ../shared/datasets/membrane or $METASEG_DATA")
    from metaseg.data.episodes import EpisodeSampler

    task = load_spec({"name": "em", "root": "membrane"}, size=32, cache_dir=tmp_path)
    assert task.name == "em" and len(task) == 30 and task.images.shape[2:] == (32, 32)
    episode = EpisodeSampler([task], shots=5, queries=15, seed=0).sample(0)
    assert episode.support_x.shape[1] == task.channels and not set(episode.support_ids) & set(episode.query_ids)
