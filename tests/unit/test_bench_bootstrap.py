"""The paired bootstrap: coverage of the true difference on synthetic data, pairing, and
the interval bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp.bench.bootstrap import PointOutcomes, paired_bootstrap, ratio_points
from routenlp.bench.metrics import COST_AT_Q, QUALITY_AT_C, cost_at_quality

REF_P = 0.8
# two systems, two operating points each: (P(correct), mean cost per query vs ref cost 1)
A = [(0.60, 0.1), (0.84, 0.5)]
B = [(0.64, 0.2), (0.82, 0.4)]


def true_cost_at_q(points: list[tuple[float, float]]) -> float:
    got = cost_at_quality([[c, p / REF_P] for p, c in points], 0.97)
    assert got is not None
    return got


def draw(rng: np.random.Generator, n: int) -> tuple[dict[str, PointOutcomes], np.ndarray, np.ndarray]:
    """Queries share one latent difficulty u, so every system's outcomes are correlated."""
    u = rng.random(n)
    def system(points: list[tuple[float, float]]) -> PointOutcomes:
        q = np.stack([(u < p).astype(float) for p, _ in points])
        c = np.stack([mc * (0.5 + rng.random(n)) for _, mc in points])
        return PointOutcomes(quality=q, cost=c)
    return {"routenlp": system(A), "other": system(B)}, (u < REF_P).astype(float), 0.5 + rng.random(n)


def test_interval_covers_the_true_difference_about_95_percent() -> None:
    truth = true_cost_at_q(B) - true_cost_at_q(A)
    rng = np.random.default_rng(0)
    trials, hits = 200, 0
    for t in range(trials):
        systems, rq, rc = draw(rng, 500)
        res = paired_bootstrap(systems, rq, rc, n_resamples=200, seed=t)
        lo, hi = res["other"]["diff"][COST_AT_Q]["ci"]
        hits += lo is not None and hi is not None and lo <= truth <= hi
    assert 0.90 <= hits / trials <= 0.99


def test_pairing_and_bookkeeping() -> None:
    rng = np.random.default_rng(1)
    systems, rq, rc = draw(rng, 400)
    res = paired_bootstrap(systems, rq, rc, n_resamples=300, seed=5)
    assert res == paired_bootstrap(systems, rq, rc, n_resamples=300, seed=5)  # seeded
    assert "diff" not in res["routenlp"]
    point = ratio_points(systems["routenlp"], rq, rc)
    est = cost_at_quality(point.tolist(), 0.97)
    lo, hi = res["routenlp"][COST_AT_Q]
    assert lo < est < hi
    # a system against itself: the paired difference is exactly 0 on every resample
    same = paired_bootstrap({"routenlp": systems["routenlp"], "copy": systems["routenlp"]}, rq, rc, n_resamples=100)
    assert same["copy"]["diff"][COST_AT_Q] == {"ci": [0.0, 0.0], "excludes_zero": False}
    # a clearly cheaper copy (half the cost at every point) is flagged
    cheap = PointOutcomes(systems["routenlp"].quality, systems["routenlp"].cost * 0.5)
    got = paired_bootstrap({"routenlp": systems["routenlp"], "cheap": cheap}, rq, rc, n_resamples=100)
    assert got["cheap"]["diff"][COST_AT_Q]["excludes_zero"]
    assert got["cheap"]["diff"][COST_AT_Q]["ci"][1] < 0


def test_unreachable_numbers_become_open_interval_ends() -> None:
    n = 50
    rq = np.ones(n)
    rc = np.ones(n)
    weak = PointOutcomes(quality=np.zeros((1, n)), cost=np.full((1, n), 0.5))  # never reaches 0.97
    res = paired_bootstrap({"weak": weak}, rq, rc, baseline=None, n_resamples=50)
    assert res["weak"][COST_AT_Q] == [None, None]
    assert res["weak"][QUALITY_AT_C] == [None, None]  # cheapest point costs 0.5 > 0.16
    with pytest.raises(ValueError):
        PointOutcomes(quality=np.zeros(3), cost=np.zeros(3))
