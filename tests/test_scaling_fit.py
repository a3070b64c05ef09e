"""The scaling sweep's power-law fit and compute frontier (benchmarks/scaling.py)."""

import importlib.util
import math
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("scaling", Path(__file__).parents[1] / "benchmarks" / "scaling.py")
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def test_fit_recovers_an_exact_power_law_and_scores_noise():
    xs = [1e9, 3e9, 1e10, 4e10]
    f = scaling.fit(xs, [2.5 * x**-0.12 for x in xs])
    assert f["alpha"] == pytest.approx(-0.12) and f["beta"] == pytest.approx(2.5) and f["r2"] == pytest.approx(1.0)
    # hand-computed: log-log points (0, 0), (1, 1), (2, 3) -> slope 1.5, r2 = 1 - 1/6 / (14/3)
    g = scaling.fit([1, math.e, math.e**2], [1, math.e, math.e**3])
    assert g["alpha"] == pytest.approx(1.5) and g["r2"] == pytest.approx(1 - (1 / 6) / (14 / 3))


def test_frontier_keeps_points_that_beat_all_cheaper_ones():
    pts = [(4, 0.5), (1, 0.9), (2, 0.95), (3, 0.7), (5, 0.6), (6, 0.4)]
    assert scaling.frontier(pts) == [(1, 0.9), (3, 0.7), (4, 0.5), (6, 0.4)]
