"""Episode sampler: determinism, disjoint same-task support/query, mixing, errors, augmentation."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from metaseg.data.episodes import EpisodeSampler
from metaseg.data.synthetic import make_synthetic_task
from metaseg.data.transforms import SupportAugment
from metaseg.errors import MetasegError


@pytest.fixture(scope="module")
def tasks():
    return [make_synthetic_task(f, n=24, size=32, seed=0) for f in ("dark_blob", "vessels", "rings")]


def _same(a, b):
    return (a.task, a.support_ids, a.query_ids) == (b.task, b.support_ids, b.query_ids) and all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("support_x", "support_y", "query_x", "query_y")
    )


def test_same_seed_same_episode_in_any_order(tasks):
    a = EpisodeSampler(tasks, shots=3, queries=5, seed=11)
    b = EpisodeSampler(tasks, shots=3, queries=5, seed=11)
    forward = [a.sample(i) for i in range(6)]
    backward = [b.sample(i) for i in reversed(range(6))][::-1]
    assert all(_same(x, y) for x, y in zip(forward, backward))
    assert not _same(forward[0], forward[1])
    other_seed = EpisodeSampler(tasks, shots=3, queries=5, seed=12).sample(0)
    assert other_seed.support_ids != forward[0].support_ids
    other_stream = EpisodeSampler(tasks, shots=3, queries=5, seed=11, stream="val").sample(0)
    assert other_stream.support_ids != forward[0].support_ids


def test_same_tasks_and_episode_in_a_fresh_process(tasks):
    """One subprocess (importing torch costs seconds) checks synthetic images and episodes together."""
    code = (
        "from metaseg.data.synthetic import make_synthetic_task as m\n"
        "from metaseg.data.episodes import EpisodeSampler\n"
        "t=[m(f, n=24, size=32, seed=0) for f in ('dark_blob','vessels','rings')]\n"
        "e=EpisodeSampler(t, 3, 5, seed=11).sample(7)\n"
        "print(','.join(h for task in t for h in task.hashes))\n"
        "print(e.task, ','.join(e.support_ids + e.query_ids), float(e.support_x.sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    e = EpisodeSampler(tasks, 3, 5, seed=11).sample(7)
    assert out[0] == ",".join(h for task in tasks for h in task.hashes)
    assert out[1:] == [e.task, ",".join(e.support_ids + e.query_ids), str(float(e.support_x.sum()))]


def test_support_and_query_disjoint_same_task_and_exact_pixels(tasks):
    sampler = EpisodeSampler(tasks, shots=4, queries=6, seed=0)
    by_name = {t.name: t for t in tasks}
    seen_tasks = set()
    for i in range(30):
        e = sampler.sample(i)
        task = by_name[e.task]
        seen_tasks.add(e.task)
        assert len(e.support_ids) == 4 and len(e.query_ids) == 6
        assert not set(e.support_ids) & set(e.query_ids) and len(set(e.query_ids)) == 6
        assert set(e.support_ids + e.query_ids) <= set(task.ids)
        assert e.support_x.shape == (4, 3, 32, 32) and e.query_y.shape == (6, 1, 32, 32)
        assert e.support_x.dtype == e.query_y.dtype == torch.float32
        row = task.ids.index(e.query_ids[2])
        assert torch.equal(e.query_x[2], torch.from_numpy(task.images[row]).float() / 255)
        assert torch.equal(e.query_y[2, 0], torch.from_numpy(task.masks[row]).float())
        assert sampler.sample_ids(i) == {"index": i, "task": e.task, "support": e.support_ids, "query": e.query_ids}
    assert seen_tasks == set(by_name), "every task gets sampled"


def test_mixed_tasks_draw_k_and_q_from_each_of_n_tasks(tasks):
    sampler = EpisodeSampler(tasks, shots=2, queries=3, seed=5, mix_tasks=2)
    for i in range(10):
        e = sampler.sample(i)
        names = e.task.split("+")
        assert len(set(names)) == 2
        assert not set(e.support_ids) & set(e.query_ids)
        for name in names:
            assert sum(s.startswith(name + "/") for s in e.support_ids) == 2
            assert sum(s.startswith(name + "/") for s in e.query_ids) == 3
        assert e.support_x.shape[0] == 4 and e.query_x.shape[0] == 6
        name, item = e.support_ids[3].split("/")
        task = next(t for t in tasks if t.name == name)
        assert torch.equal(e.support_x[3], torch.from_numpy(task.images[task.ids.index(item)]).float() / 255)


def test_too_many_shots_names_the_task(tasks):
    small = make_synthetic_task("faint_spot", n=6, size=16)
    with pytest.raises(MetasegError, match=r"'faint_spot' has 6 images.*5 \+ 15 = 20"):
        EpisodeSampler([small], shots=5, queries=15, seed=0)
    with pytest.raises(MetasegError, match="mix_tasks=4"):
        EpisodeSampler(tasks, shots=1, queries=1, seed=0, mix_tasks=4)


def test_augmentation_only_on_support_deterministic_and_binary(tasks):
    plain = EpisodeSampler(tasks, shots=5, queries=5, seed=3)
    aug = EpisodeSampler(tasks, shots=5, queries=5, seed=3, augment=SupportAugment())
    changed = 0
    for i in range(8):
        p, a, again = plain.sample(i), aug.sample(i), aug.sample(i)
        assert _same(a, again), "same (seed, index) must give the same augmented episode"
        assert torch.equal(p.query_x, a.query_x) and torch.equal(p.query_y, a.query_y)
        assert p.support_ids == a.support_ids
        assert set(a.support_y.unique().tolist()) <= {0.0, 1.0}
        assert a.support_x.min() >= 0 and a.support_x.max() <= 1
        changed += not torch.equal(p.support_x, a.support_x)
    assert changed >= 6, "augmentation actually changes support images"


def test_grey_tasks_keep_one_channel_and_mix_as_rgb():
    grey = make_synthetic_task("lungs", n=10, size=16)
    grey.images = np.ascontiguousarray(grey.images[:, :1])
    grey.name = "grey"
    e = EpisodeSampler([grey], 2, 3, seed=0).sample(0)
    assert e.support_x.shape == (2, 1, 16, 16)
    rgb = make_synthetic_task("rings", n=10, size=16)
    mixed = EpisodeSampler([grey, rgb], 2, 3, seed=0, mix_tasks=2).sample(0)
    assert mixed.support_x.shape == (4, 3, 16, 16)
    first = mixed.support_ids.index(next(s for s in mixed.support_ids if s.startswith("grey/")))
    assert torch.equal(mixed.support_x[first, 0], mixed.support_x[first, 2])


def test_sample_cli_prints_one_json_line_per_episode(capsys):
    import json

    from metaseg.cli import main

    code = main(["data", "sample", "synthetic:rings", "--shots", "2", "--queries", "4", "--episodes", "3",
                 "--seed", "9", "--size", "16", "-o", "n=12"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["episode"] for line in lines] == [0, 1, 2]
    sampler = EpisodeSampler([make_synthetic_task("rings", n=12, size=16)], 2, 4, seed=9)
    for i, line in enumerate(lines):
        assert line["task"] == "rings" and len(line["support"]) == 2 and len(line["query"]) == 4
        assert not set(line["support"]) & set(line["query"])
        episode = sampler.sample(i)
        assert (line["support"], line["query"]) == (episode.support_ids, episode.query_ids)


def test_sample_cli_errors_are_one_line(capsys):
    from metaseg.cli import main

    assert main(["data", "sample", "synthetic:rings", "--shots", "8", "--queries", "8", "-o", "n=10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaseg: error: --shots 8:") and "--queries 8" in err and "Traceback" not in err


def test_pixel_episodes_make_the_same_floats_on_access_on_a_device_and_after_pickling(tasks):
    """The sampler hands out uint8 pixels; support_x (etc.), .to(device) and a DataLoader's pickle give equal floats."""
    import pickle

    from metaseg.data.types import Episode, PixelEpisode

    sampler = EpisodeSampler(tasks, shots=3, queries=4, seed=2)
    e = sampler.sample(5)
    assert isinstance(e, PixelEpisode) and isinstance(e, Episode) and e.pixels[0].dtype == torch.uint8
    moved, unpickled = e.to("cpu"), pickle.loads(pickle.dumps(e))
    assert type(moved) is Episode and unpickled.pixels is not None
    task = next(t for t in tasks if t.name == e.task)
    rows = [task.ids.index(i) for i in e.support_ids + e.query_ids]
    x = torch.from_numpy(task.images[rows]).float() / 255
    y = torch.from_numpy(task.masks[rows]).float()[:, None]
    for ep in (e, moved, unpickled):
        assert torch.equal(ep.support_x, x[:3]) and torch.equal(ep.query_x, x[3:])
        assert torch.equal(ep.support_y, y[:3]) and torch.equal(ep.query_y, y[3:])
    assert e.pixels is None, "converted once, then kept"
    e.support_x = e.support_x.double()
    assert e.support_x.dtype == torch.float64 and e.query_x.dtype == torch.float32
