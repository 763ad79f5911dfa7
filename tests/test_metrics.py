"""metaseg.metrics: the paired interval every benchmark report uses."""
import math

import numpy as np
import pytest
from scipy import stats

from metaseg.metrics import mean_ci95, paired_ci95


def test_paired_ci95_is_the_t_interval_of_the_differences():
    a, b = [0.9, 0.7, 0.8, 0.6, 0.75], [0.5, 0.6, 0.65, 0.6, 0.5]
    d = np.subtract(a, b)
    mean, ci, n = paired_ci95(a, b)
    assert n == 5 and mean == pytest.approx(d.mean())
    assert ci == pytest.approx(stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5))
    # pairing removes the between-image spread the two unpaired intervals carry
    assert ci < mean_ci95(a)[1] + mean_ci95(b)[1]


def test_paired_ci95_refuses_unaligned_pairs_and_reports_none():
    with pytest.raises(ValueError, match="aligned"):
        paired_ci95([0.1, 0.2], [0.1])
    mean, ci, n = paired_ci95([], [])
    assert n == 0 and math.isnan(mean) and math.isnan(ci)
