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


# -- paired_change: one system before and after a change on the same queries ------------
def _one(points: list[tuple[float, float]], u: np.ndarray, noise: np.ndarray) -> PointOutcomes:
    q = np.stack([(u < p).astype(float) for p, _ in points])
    c = np.stack([mc * noise for _, mc in points])
    return PointOutcomes(quality=q, cost=c)


def test_paired_change_finds_a_real_saving_and_reports_the_point_values() -> None:
    from routenlp.bench.bootstrap import paired_change

    rng = np.random.default_rng(3)
    n = 400
    u, noise = rng.random(n), 0.5 + rng.random(n)
    before = _one([(0.60, 0.1), (0.84, 0.5)], u, noise)
    after = _one([(0.60, 0.05), (0.84, 0.3)], u, noise)  # same answers, cheaper
    res = paired_change(before, after, _one([(0.84, 0.5)], u, noise), _one([(0.84, 0.3)], u, noise),
                        (u < REF_P).astype(float), 0.5 + rng.random(n), n_resamples=300, seed=1)
    m = res[COST_AT_Q]
    assert m["diff"] == pytest.approx(m["after"] - m["before"])
    assert m["diff"] < 0 and m["ci"][1] < 0 and m["excludes_zero"]
    d = res["cost_ratio"]
    assert d["diff"] < 0 and d["excludes_zero"]
    q = res["quality_ratio"]  # the same answers: quality unchanged, interval is [0, 0]
    assert q["diff"] == pytest.approx(0.0) and not q["excludes_zero"]


def test_paired_change_does_not_claim_a_change_that_is_noise() -> None:
    """Before and after drawn from the same system with independent answers: the interval
    of the change must cover 0 in about 95% of seeded trials (it is a test, so it may miss)."""
    from routenlp.bench.bootstrap import paired_change

    rng = np.random.default_rng(11)
    trials, covered = 120, 0
    pts = [(0.60, 0.1), (0.84, 0.5)]
    for t in range(trials):
        n = 200
        noise = 0.5 + rng.random(n)
        ub, ua = rng.random(n), rng.random(n)
        b, a = _one(pts, ub, noise), _one(pts, ua, noise)
        res = paired_change(b, a, _one(pts[1:], ub, noise), _one(pts[1:], ua, noise),
                            (rng.random(n) < REF_P).astype(float), noise, n_resamples=200, seed=t)
        covered += not res[COST_AT_Q]["excludes_zero"]
    assert covered / trials >= 0.88


def test_paired_change_rejects_misaligned_arrays() -> None:
    from routenlp.bench.bootstrap import paired_change

    a = PointOutcomes(quality=np.ones((1, 5)), cost=np.ones((1, 5)))
    b = PointOutcomes(quality=np.ones((1, 4)), cost=np.ones((1, 4)))
    with pytest.raises(ValueError, match="after has 4 queries"):
        paired_change(a, b, a, a, np.ones(5), np.ones(5))
