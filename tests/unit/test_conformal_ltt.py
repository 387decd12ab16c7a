"""Learn-then-test: Hoeffding-Bentkus p-values and the high-probability bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routenlp.conformal.crc import crc_threshold
from routenlp.conformal.ltt import hb_pvalues, hb_upper_bound, ltt_threshold

ALPHA, DELTA_CONF = 0.05, 0.1


def true_risk(delta: float | None) -> float:
    """P(u <= delta and bad) for u ~ U(0,1), P(bad | u) = 0.05 + 0.5 u."""
    if delta is None:
        return 0.0
    d = min(max(delta, 0.0), 1.0)
    return 0.05 * d + 0.25 * d * d


def test_pvalues_monotone_and_valid() -> None:
    p = hb_pvalues([0.0, 0.01, 0.03, 0.05, 0.2], n=500, alpha=ALPHA)
    assert np.all(np.diff(p) >= 0)
    assert p[-1] == pytest.approx(1.0)
    # zero empirical risk: Hoeffding term exp(-n log(1/(1-alpha))) = (1-alpha)^n
    assert p[0] <= (1 - ALPHA) ** 500 + 1e-12


def test_upper_bound_contains_empirical_risk() -> None:
    ub = hb_upper_bound(0.02, 1000, DELTA_CONF)
    assert 0.02 < ub < 0.05
    assert hb_pvalues([0.02], 1000, ub)[0] <= DELTA_CONF + 1e-9


def test_too_few_samples() -> None:
    need = math.ceil(math.log(DELTA_CONF) / math.log(1 - ALPHA))
    r = ltt_threshold([0.1] * (need - 1), [False] * (need - 1), ALPHA, DELTA_CONF)
    assert r.delta is None and r.reason and f"need n >= {need}" in r.reason
    assert ltt_threshold([0.1] * need, [False] * need, ALPHA, DELTA_CONF).delta == 0.1


def test_fixed_sequence_stops_at_first_failure() -> None:
    # good, good, ..., then a burst of bad: ltt never passes the burst
    u = np.arange(400) / 400
    bad = np.zeros(400, dtype=bool)
    bad[200:230] = True
    r = ltt_threshold(u, bad, ALPHA, DELTA_CONF)
    assert r.delta is not None and r.delta < 230 / 400
    assert r.risk is not None and r.risk <= ALPHA
    assert r.p_value is not None and r.p_value <= DELTA_CONF


def test_ltt_is_more_conservative_than_crc() -> None:
    rng = np.random.default_rng(3)
    u = rng.random(800)
    bad = rng.random(800) < 0.05 + 0.5 * u
    crc = crc_threshold(u, bad, ALPHA).delta
    ltt = ltt_threshold(u, bad, ALPHA, DELTA_CONF).delta
    assert crc is not None and ltt is not None and ltt <= crc


def test_high_probability_bound_over_random_calibration_sets() -> None:
    """P(true risk(delta_hat) > alpha) <= delta_conf, checked over 300 seeded draws."""
    rng = np.random.default_rng(11)
    exceed, deltas = 0, []
    trials = 300
    for _ in range(trials):
        u = rng.random(500)
        bad = rng.random(500) < 0.05 + 0.5 * u
        r = ltt_threshold(u, bad, ALPHA, DELTA_CONF)
        deltas.append(r.delta or 0.0)
        exceed += true_risk(r.delta) > ALPHA
    assert exceed / trials <= DELTA_CONF
    assert float(np.mean(deltas)) > 0.15  # not vacuous (risk-alpha threshold is ~0.358)
