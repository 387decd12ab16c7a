"""Conformal risk control: exact search, edge cases and the finite-sample guarantee."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp.conformal.crc import accepted_bad_rate, crc_threshold, min_samples

ALPHA = 0.05


def synth(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """u ~ U(0,1); P(bad | u) = 0.05 + shift + 0.5 u: riskier answers are more often bad."""
    u = rng.random(n)
    bad = rng.random(n) < np.clip(0.05 + shift + 0.5 * u, 0, 1)
    return u, bad


def test_hand_computed_example() -> None:
    u = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    bad = [0, 0, 1, 0, 0, 1, 0, 1, 1, 1]
    # cumulative bad 0,0,1,1,1,2,...; (L + 1)/11 <= 0.2  <=>  L <= 1  -> last such u = 0.5
    r = crc_threshold(u, bad, alpha=0.2)
    assert r.delta == pytest.approx(0.5)
    assert r.n == 10
    assert r.risk == pytest.approx(0.1)
    assert r.bound == pytest.approx(2 / 11)
    assert r.accept_rate == pytest.approx(0.5)
    assert r.reason is None


def test_ties_are_accepted_together() -> None:
    # the bad sample ties with a good one at 0.3: accepting 0.3 accepts both
    u = [0.1, 0.2, 0.3, 0.3, 0.5] * 4
    bad = [0, 0, 1, 0, 0] * 4
    r = crc_threshold(u, bad, alpha=0.2)
    # at delta=0.2: L=0, (0+1)/21 ok; at 0.3: L=4, 5/21 = 0.238 > 0.2
    assert r.delta == pytest.approx(0.2)
    assert r.accept_rate == pytest.approx(0.4)


def test_too_few_samples_never_accepts_with_reason() -> None:
    assert min_samples(0.05) == 19
    r = crc_threshold([0.1] * 18, [False] * 18, alpha=0.05)
    assert r.delta is None
    assert r.reason is not None and "need n >= 19" in r.reason and "have 18" in r.reason
    ok = crc_threshold([0.1] * 19, [False] * 19, alpha=0.05)
    assert ok.delta == pytest.approx(0.1)


def test_all_good_accepts_everything() -> None:
    rng = np.random.default_rng(0)
    u = rng.random(200)
    r = crc_threshold(u, np.zeros(200, dtype=bool), alpha=ALPHA)
    assert r.delta == pytest.approx(u.max())
    assert r.accept_rate == 1.0
    assert r.risk == 0.0


def test_infinite_u_counts_in_n_but_is_never_accepted() -> None:
    u = [0.1] * 30 + [float("inf")] * 10
    bad = [False] * 30 + [True] * 10
    r = crc_threshold(u, bad, alpha=ALPHA)
    assert r.n == 40
    assert r.delta == pytest.approx(0.1)
    assert r.accept_rate == pytest.approx(0.75)


def test_most_confident_sample_bad_never_accepts() -> None:
    # n = 30: even one accepted bad answer gives (1 + 1)/31 > 0.05
    u = np.linspace(0, 1, 30)
    bad = np.ones(30, dtype=bool)
    r = crc_threshold(u, bad, alpha=ALPHA)
    assert r.delta is None and r.reason and "never accept" in r.reason


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        crc_threshold([0.1], [True, False], alpha=0.1)
    with pytest.raises(ValueError):
        crc_threshold([0.1], [True], alpha=1.5)


def test_expected_risk_guarantee_over_random_splits() -> None:
    """Over 300 exchangeable calibration/test splits the mean accepted-but-bad rate <= alpha."""
    rng = np.random.default_rng(20260423)
    rates, accepts = [], []
    for _ in range(300):
        u, bad = synth(rng, 1000)
        perm = rng.permutation(1000)
        cal, test = perm[:500], perm[500:]
        r = crc_threshold(u[cal], bad[cal], ALPHA)
        rates.append(accepted_bad_rate(u[test], bad[test], r.delta))
        accepts.append(np.mean(u[test] <= r.delta) if r.delta is not None else 0.0)
    mean_rate = float(np.mean(rates))
    assert mean_rate <= ALPHA + 0.005, mean_rate
    # not vacuous: the threshold accepts a real share and the risk is near the target
    assert float(np.mean(accepts)) > 0.25
    assert mean_rate > ALPHA - 0.015
