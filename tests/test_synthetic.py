"""Built-in synthetic tasks: valid arrays, determinism, speed, and families that really differ."""
import hashlib
import time

import numpy as np
import pytest

from metaseg.data.synthetic import FAMILIES, make_synthetic_task
from metaseg.errors import MetasegError


@pytest.mark.parametrize("family", FAMILIES)
def test_family_arrays_are_valid(family):
    t0 = time.process_time()  # CPU time: robust to other processes sharing the cores
    task = make_synthetic_task(family, n=64, size=64, seed=0)
    elapsed = time.process_time() - t0
    assert elapsed < 1.0, f"{family} took {elapsed:.2f}s CPU for 64 images at 64 px"
    assert task.images.shape == (64, 3, 64, 64) and task.images.dtype == np.uint8
    assert task.masks.shape == (64, 64, 64) and task.masks.dtype == np.uint8
    assert set(np.unique(task.masks)) == {0, 1}
    fg = task.masks.mean(axis=(1, 2))
    assert fg.min() > 0.0 and fg.max() < 0.6, "every image has a lesion that does not fill it"
    assert task.hashes[5] == hashlib.sha1(task.images[5].tobytes()).hexdigest()
    assert task.sources[5] == f"synthetic:{family}#5"
    assert len(set(task.ids)) == len(set(task.hashes)) == 64


def test_deterministic_and_prefix_stable():
    a = make_synthetic_task("dark_blob", n=16, size=32, seed=3)
    b = make_synthetic_task("dark_blob", n=16, size=32, seed=3)
    longer = make_synthetic_task("dark_blob", n=24, size=32, seed=3)
    other = make_synthetic_task("dark_blob", n=16, size=32, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.images, longer.images[:16]), "image i must not depend on n"
    assert not set(a.hashes) & set(other.hashes)


def _best_threshold_rule(task):
    """Best (threshold, brighter-is-foreground) rule on mean intensity, and its pixel accuracy."""
    grey = task.images.mean(axis=1).ravel()
    fg = task.masks.ravel().astype(bool)
    best = (0.0, 0, True)
    for thr in range(0, 256, 8):
        for brighter in (True, False):
            pred = grey > thr if brighter else grey <= thr
            dice = 2 * (pred & fg).sum() / (pred.sum() + fg.sum())
            best = max(best, (dice, thr, brighter))
    return best


def test_families_differ_meaningfully():
    """A rule that segments one family well fails on another: foreground is brighter in one, darker in the other."""
    bright = make_synthetic_task("bright_ellipse", n=16, size=48)
    dark = make_synthetic_task("dark_blob", n=16, size=48)
    dice_b, thr_b, brighter_b = _best_threshold_rule(bright)
    dice_d, _, brighter_d = _best_threshold_rule(dark)
    assert dice_b > 0.7 and dice_d > 0.7
    assert brighter_b and not brighter_d
    grey = dark.images.mean(axis=1)
    pred = grey > thr_b
    fg = dark.masks.astype(bool)
    transfer_dice = 2 * (pred & fg).sum() / (pred.sum() + fg.sum())
    assert transfer_dice < 0.4
    # texture- and hue-defined foregrounds cannot be found by any intensity threshold
    assert _best_threshold_rule(make_synthetic_task("textured_polygon", n=16, size=48))[0] < 0.5
    assert _best_threshold_rule(make_synthetic_task("hue_blob", n=16, size=48))[0] < 0.5


def test_bad_arguments():
    with pytest.raises(MetasegError, match="unknown synthetic family 'nope'"):
        make_synthetic_task("nope")
    with pytest.raises(MetasegError, match="n >= 1"):
        make_synthetic_task("rings", n=0)
