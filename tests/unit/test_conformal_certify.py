"""The certified policy: statistics on synthetic correlated cascades, the artifact, online
lambda, and the real Cascade serving an artifact."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from routenlp.conformal.certify import (
    Certificate,
    IsoMap,
    PolicyArtifact,
    Theta,
    accepts,
    certify,
    fit_map,
    min_n_B,
    p_value,
    pareto_order,
    split_ab,
    upper_bound,
)
from routenlp.conformal.online import OnlineLambda
from routenlp.conformal.simulate import World, evaluate, online_run, regret_matrix, run_trials
from routenlp.errors import DataError

ALPHA, DELTA = 0.05, 0.1


@pytest.fixture(scope="module")
def trials() -> object:
    return run_trials(100, n_cal=2000, n_test=10000, alpha=ALPHA, delta=DELTA, seed=0)


def test_per_tier_breaks_the_policy_bound_and_certified_holds_it(trials: object) -> None:
    s = trials
    # each tier's accepted-bad rate is bounded by alpha, so the served policy's regret is not
    assert s.per_tier_violation_rate >= 0.9 and s.mean_per_tier_risk > 1.5 * ALPHA  # type: ignore[attr-defined]
    # the certified policy: P(test risk > alpha) <= delta (+ Monte-Carlo slack)
    assert s.certified_violation_rate <= DELTA + 0.03  # type: ignore[attr-defined]
    assert s.n_uncertified == 0  # type: ignore[attr-defined]
    # ... while keeping most of the savings the best lambda (picked on test) would get
    assert s.savings_kept >= 0.70  # type: ignore[attr-defined]
    assert s.mean_cost_ratio < 1.0  # type: ignore[attr-defined]


def test_expected_guarantee_crc_bounds_mean_risk() -> None:
    s = run_trials(100, n_cal=2000, n_test=10000, alpha=ALPHA, guarantee="expected", seed=1)
    # CRC: E[risk] <= alpha over calibration draws (mean over 100 trials, MC slack 0.005)
    assert s.mean_certified_risk <= ALPHA + 0.005
    assert s.savings_kept >= 0.70


def test_too_few_rows_serves_the_top_and_names_the_n_needed() -> None:
    rng = np.random.default_rng(0)
    world = World()
    q, u = world.draw(40, rng)
    reg = regret_matrix(q)
    maps = [fit_map(u[:, j], reg[:, j] > 0) for j in range(2)]
    sel = certify([Theta(lam=x) for x in (0.2, 0.5, 1.0)], lambda th: evaluate(world, q, u, maps, th.lam),
                  ["t"] * 40, alpha=0.01, delta=0.1)
    assert sel.theta.lam == 0.0 and not sel.certificate.certified
    assert f"n_B >= {min_n_B(0.01, 0.1)}" in (sel.certificate.message or "")
    assert "no policy cheaper than always the top tier" in sel.certificate.plain()


def test_statistics_helpers() -> None:
    zeros = np.zeros(50)
    assert p_value(zeros, 0.05, "binary") == pytest.approx(0.95**50)
    assert p_value(np.r_[np.ones(5), np.zeros(45)], 0.05, "binary") > 0.5
    assert upper_bound(zeros, 0.1, "binary") == pytest.approx(1 - 0.1 ** (1 / 50))
    assert 0.1 < upper_bound(np.full(100, 0.1), 0.1, "bounded") < 0.3
    assert min_n_B(0.05, 0.1) == 45
    risk = np.array([0.0, 0.01, 0.02, 0.02, 0.05])
    cost = np.array([10.0, 7.0, 8.0, 5.0, 4.0])
    assert pareto_order(risk, cost) == [0, 1, 3, 4]  # 2 is dominated by 1
    ia, ib = split_ab(["a"] * 10 + ["b"] * 4, seed=3)
    assert len(ia) == 7 and len(ib) == 7 and not set(ia) & set(ib)
    assert not accepts(0.0, 0.0) and accepts(1.0, 1.0) and accepts(0.3, 0.3) and not accepts(0.3, 0.31)


def test_isotonic_map_is_increasing_and_clipped() -> None:
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, 500)
    y = rng.uniform(0, 1, 500) < u
    m = fit_map(list(u) + [None, math.inf], list(y) + [True, True])
    vals = m.p_hat_array(np.linspace(-1, 2, 50))
    assert np.all(np.diff(vals) >= -1e-12) and m.n == 500
    assert m.p_hat(-5.0) == m.values[0] and m.p_hat(9.0) == m.values[-1]
    assert m.p_hat(None) == 1.0
    assert fit_map([None], [True]).values == [1.0]


def _artifact(lam: float = 0.3) -> PolicyArtifact:
    cert = Certificate(alpha=0.026, delta=0.1, guarantee="high-probability", n_A=500, n_B=500,
                       p_value=0.01, ucb=0.024, theta=Theta(lam=lam), certified=True,
                       population="marginal over the calibration task mix: {qa: 100.0%}",
                       shares={"qa": 1.0})
    iso = IsoMap(thresholds=[0.0, 1.0], values=[0.0, 1.0], n=100)
    return PolicyArtifact(theta=Theta(lam=lam), maps={"qa": {"T1": iso, "T2": iso}}, certificate=cert,
                          ladders={"qa": ["T1", "T2", "T3"]},
                          signals={"qa": {"T1": "recorded", "T2": "recorded"}},
                          reject_rate={"qa": {"T1": 0.7, "T2": 0.5}})


def test_certificate_plain_words() -> None:
    text = _artifact().certificate.plain()
    assert text.startswith("with probability >= 90%, mean regret vs the top tier <= 0.026 on traffic like the calibration set")


def test_artifact_roundtrip_and_corrupt_files(tmp_path: Path) -> None:
    art = _artifact()
    p = art.save(tmp_path / "p.json")
    back = PolicyArtifact.load(p)
    assert back.theta == art.theta and back.p_hat("qa", "T1", 0.25) == pytest.approx(0.25)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        PolicyArtifact.load(bad)
    raw = json.loads(p.read_text())
    raw["maps"]["qa"]["T1"]["values"] = [0.9, 0.1]
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"maps\.qa\.T1.*non-decreasing"):
        PolicyArtifact.load(bad)
    bad.write_text(json.dumps({"alpha": 0.05, "thresholds": {}}))
    with pytest.raises(DataError, match="not a certified policy"):
        PolicyArtifact.load(bad)
    with pytest.raises(DataError, match="not found"):
        PolicyArtifact.load(tmp_path / "missing.json")


# -- online ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_maps() -> list[IsoMap]:
    world = World()
    q, u = world.draw(4000, np.random.default_rng(1))
    reg = regret_matrix(q)
    return [fit_map(u[:, j], reg[:, j] > 0) for j in range(2)]


def test_online_lambda_holds_alpha_under_a_downward_shift(fitted_maps: list[IsoMap]) -> None:
    shifted = replace(World(), u_shift=-0.7)  # answers look safer than they are
    static, _ = online_run(shifted, fitted_maps, lam0=0.3, alpha=ALPHA, gamma=0.05, steps=20000, online=False)
    assert static.mean() > ALPHA + 0.05
    reg, lams = online_run(shifted, fitted_maps, lam0=0.3, alpha=ALPHA, gamma=0.05, steps=20000)
    assert abs(reg.mean() - ALPHA) <= 0.01
    assert lams[-1] < 0.3  # it moved down to compensate


def test_online_lambda_recovers_from_accept_nothing(fitted_maps: list[IsoMap]) -> None:
    reg, lams = online_run(World(), fitted_maps, lam0=-0.5, alpha=ALPHA, gamma=0.05, steps=20000)
    assert lams[0] < 0 and np.all(reg[lams <= 0] == 0)  # accept nothing: always the top
    first_up = int(np.argmax(lams > 0))
    assert 0 < first_up < 1000  # no lower clamp, and it comes back
    assert abs(reg[first_up:].mean() - ALPHA) <= 0.01


def test_online_lambda_state_is_shared_by_several_writers(tmp_path: Path) -> None:
    path = tmp_path / "lam.json"
    writers = [OnlineLambda({"qa": 0.3}, {"qa": 0.05}, gamma=0.01, path=path, refresh_s=0.0) for _ in range(4)]

    def work(ol: OnlineLambda) -> None:
        for i in range(25):
            ol.update("qa", float(i % 2))

    threads = [threading.Thread(target=work, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = json.loads(path.read_text())
    assert state["seq"] == 100 and state["tasks"]["qa"]["steps"] == 100  # no lost update
    assert state["tasks"]["qa"]["lam"] == pytest.approx(0.3 + 0.01 * (100 * 0.05 - 48))  # 12 of 25 regrets are 1
    fresh = OnlineLambda({"qa": 0.3}, {"qa": 0.05}, gamma=0.01, path=path)
    assert fresh.lam("qa") == pytest.approx(state["tasks"]["qa"]["lam"])
    path.write_text("{torn")
    with pytest.raises(DataError, match="not valid JSON"):
        OnlineLambda({"qa": 0.3}, {"qa": 0.05}, path=path)
