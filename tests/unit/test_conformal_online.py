"""Online adaptation (adaptive conformal inference) under an injected shift, persistence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from routenlp.conformal.crc import crc_threshold
from routenlp.conformal.online import OnlineThresholds
from routenlp.conformal.thresholds import ThresholdEntry, Thresholds

ALPHA = 0.05


def _thresholds(delta: float | None, lo: float = 0.0, hi: float = 1.0) -> Thresholds:
    return Thresholds(
        alpha=ALPHA,
        method="crc",
        created_at=123.0,
        thresholds={"t": {"T1": ThresholdEntry(delta=delta, n=1000, u_lo=lo, u_hi=hi)}},
    )


def test_shift_online_holds_alpha_static_does_not() -> None:
    """20k-step stream; from step 4k the bad rate rises (domain shift).

    The static CRC threshold drifts to ~8% violations; ACI stays within alpha +- 0.01.
    """
    rng = np.random.default_rng(7)
    u_cal = rng.random(2000)
    bad_cal = rng.random(2000) < 0.05 + 0.5 * u_cal
    cal = crc_threshold(u_cal, bad_cal, ALPHA)
    assert cal.delta is not None

    T, shift_at = 20_000, 4_000
    u = rng.random(T)
    p_bad = np.where(np.arange(T) < shift_at, 0.05 + 0.5 * u, 0.15 + 0.6 * u)
    bad = rng.random(T) < p_bad

    static_err = (u <= cal.delta) & bad
    th = _thresholds(cal.delta, cal.u_lo or 0.0, cal.u_hi or 1.0)
    online = OnlineThresholds(th, gamma=0.01)
    t0 = time.perf_counter()
    online_err = np.zeros(T, dtype=bool)
    for t in range(T):
        d = online.delta("t", "T1")
        assert d is not None
        accepted = bool(u[t] <= d)
        online_err[t] = accepted and bad[t]
        online.observe("t", "T1", accepted=accepted, quality_bad=bool(bad[t]))
    elapsed = time.perf_counter() - t0

    static_rate, online_rate = float(static_err.mean()), float(online_err.mean())
    assert abs(online_rate - ALPHA) <= 0.01, online_rate
    assert static_rate > ALPHA + 0.01, static_rate
    # after the shift the online threshold moved down to accept less
    final = online.delta("t", "T1")
    assert final is not None and final < cal.delta
    st = online.status()
    assert st["pairs"]["t"]["T1"]["steps"] == T
    assert st["pairs"]["t"]["T1"]["effective_alpha"] == pytest.approx(online_rate)
    assert elapsed < 5.0


def test_deltas_are_bounded() -> None:
    online = OnlineThresholds(_thresholds(0.5), gamma=0.5, margin=0.1)
    for _ in range(100):
        online.update("t", "T1", err=True)
    assert online.delta("t", "T1") == pytest.approx(-0.1)
    for _ in range(1000):
        online.update("t", "T1", err=False)
    assert online.delta("t", "T1") == pytest.approx(1.1)


def test_never_accept_pairs_stay_frozen_and_unknown_pairs_ignored() -> None:
    online = OnlineThresholds(_thresholds(None), gamma=0.1)
    assert online.update("t", "T1", err=False) is None
    assert online.delta("t", "T1") is None
    assert online.update("other", "T9", err=True) is None
    assert online.status()["pairs"]["t"]["T1"]["frozen"] is True


def test_persisted_and_resumed(tmp_path: Path) -> None:
    state = tmp_path / "online.json"
    th = _thresholds(0.4)
    online = OnlineThresholds(th, gamma=0.05, path=state)
    for e in (True, False, True):
        online.update("t", "T1", err=e)
    assert state.exists()
    saved = json.loads(state.read_text())
    assert saved["pairs"]["t"]["T1"]["steps"] == 3
    resumed = OnlineThresholds.load(state, th)
    assert resumed.delta("t", "T1") == pytest.approx(online.delta("t", "T1"))
    assert resumed.status()["pairs"]["t"]["T1"]["violations"] == 2
    # a recalibration (new thresholds) supersedes the learned state
    newer = _thresholds(0.3)
    newer.created_at = 999.0
    fresh = OnlineThresholds.load(state, newer)
    assert fresh.delta("t", "T1") == pytest.approx(0.3)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_corrupt_state(tmp_path: Path) -> None:
    from routenlp.errors import DataError

    state = tmp_path / "online.json"
    state.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        OnlineThresholds.load(state, _thresholds(0.4))
