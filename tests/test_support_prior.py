"""support_prior, the learning-free floor: the mean support mask cut to the supports' mean
foreground area, the same for every query, with nothing to meta-train; usable from
`metaseg evaluate --method`."""
from __future__ import annotations

import pytest
import torch

from metaseg.cli import main
from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.meta import create_learner


def _masks(*rows: list[int]) -> torch.Tensor:
    """(K,1,1,W) masks from lists of 0/1."""
    return torch.tensor(rows, dtype=torch.float32)[:, None, None, :]


def test_prediction_keeps_the_most_marked_pixels_up_to_the_mean_support_area():
    learner = create_learner("support_prior")
    support_y = _masks([1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0])  # mean area 2 of 6 pixels
    fast = learner.adapt(None, torch.zeros(3, 3, 1, 6), support_y)
    logits = learner.predict(None, fast, torch.rand(5, 3, 1, 6))
    assert logits.shape == (5, 1, 1, 6) and torch.isfinite(logits).all()
    assert (logits > 0).int()[:, 0, 0].tolist() == [[1, 1, 0, 0, 0, 0]] * 5  # marked 3/3 and 2/3: the top 2

    # objects that never overlap: a majority vote would be empty, the area-matched prior is not
    scattered = _masks([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])
    fast = learner.adapt(None, torch.zeros(3, 1, 1, 4), scattered)
    assert int((learner.predict(None, fast, torch.zeros(1, 1, 1, 4)) > 0).sum()) >= 1
    empty = learner.adapt(None, torch.zeros(2, 1, 1, 4), _masks([0, 0, 0, 0], [0, 0, 0, 0]))
    assert int((learner.predict(None, empty, torch.zeros(1, 1, 1, 4)) > 0).sum()) == 0


def test_one_shot_prior_reproduces_the_support_mask():
    learner = create_learner("support_prior")
    mask = _masks([0, 1, 1, 0])
    logits = learner.predict(None, learner.adapt(None, torch.zeros(1, 1, 1, 4), mask), torch.zeros(2, 1, 1, 4))
    assert torch.equal((logits > 0).float(), mask.expand(2, -1, -1, -1))


def test_prior_refuses_meta_training_and_mismatched_sizes():
    learner = create_learner("support_prior")
    assert learner.needs_meta_training is False
    episode = Episode(task="t", support_x=torch.zeros(1, 1, 2, 2), support_y=torch.zeros(1, 1, 2, 2),
                      query_x=torch.zeros(1, 1, 2, 2), query_y=torch.zeros(1, 1, 2, 2), support_ids=["a"], query_ids=["b"])
    with pytest.raises(MetasegError, match="nothing to meta-train"):
        learner.meta_backward(None, episode)
    fast = learner.adapt(None, episode.support_x, episode.support_y)
    with pytest.raises(MetasegError, match="support masks are"):
        learner.predict(None, fast, torch.zeros(1, 1, 3, 3))


def test_evaluate_cli_runs_the_prior_baseline(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--method", "support_prior", "--dataset", "synthetic:bright_ellipse", "--size", "16",
                 "--shots", "1", "3", "--episodes", "2", "--queries", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "support_prior K=3: Dice" in text
    summary = (out / "summary.md").read_text()
    assert "none (support_prior baseline)" in summary and "support_prior" in summary
