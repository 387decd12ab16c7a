"""Metric functions against hand-computed tables."""

from __future__ import annotations

import pytest

from routenlp.bench.metrics import (
    Reference,
    Served,
    cost_at_quality,
    cost_ratio,
    curve_auc,
    escalation_rate,
    latency_percentile,
    matched,
    pareto_front,
    subsample_grid,
    upper_hull,
    quality_at_cost,
    quality_ratio,
    quality_violation_rate,
    sla_violation_rate,
    summarize,
    tier_shares,
)


def _s(i: int, tier: str, q: float, c: float, lat: float | None, tried: tuple[str, ...], sla: float = 100.0) -> Served:
    return Served(id=str(i), task="t", tier=tier, quality=q, cost=c, latency_ms=lat, tried=tried, tau=1.0, sla_ms=sla)


# four queries; reference (always-T2): quality 1,1,1,0 (mean 0.75), cost 10 each (total 40)
REF = [_s(i, "T2", q, 10.0, 50.0, ("T2",)) for i, q in enumerate([1, 1, 1, 0])]
SYS = [
    _s(0, "T1", 1.0, 1.0, 20.0, ("T1",)),
    _s(1, "T2", 1.0, 11.0, 120.0, ("T1", "T2")),  # escalated, over SLA
    _s(2, "T1", 0.0, 1.0, 20.0, ("T1",)),  # accepted but bad
    _s(3, "T2", 0.5, 11.0, 80.0, ("T1", "T2")),
]


def test_ratios_by_hand() -> None:
    ref = Reference.of("always-T2", REF)
    assert ref.mean_quality == pytest.approx(0.75)
    assert ref.total_cost == pytest.approx(40.0)
    # mean quality 2.5/4 = 0.625 -> 0.625/0.75; cost 24/40
    assert quality_ratio(SYS, ref) == pytest.approx(0.625 / 0.75)
    assert cost_ratio(SYS, ref) == pytest.approx(0.6)


def test_rates_and_shares_by_hand() -> None:
    assert quality_violation_rate(SYS) == pytest.approx(0.5)  # q=0 and q=0.5 < tau 1
    assert sla_violation_rate(SYS) == pytest.approx(0.25)  # 120 > 100
    assert escalation_rate(SYS) == pytest.approx(0.5)
    assert tier_shares(SYS, ["T1", "T2", "T3"]) == {"T1": 0.5, "T2": 0.5, "T3": 0.0}
    # latencies 20,20,80,120: numpy linear percentiles: p50 = 50, p99 = 80 + 0.97*40
    assert latency_percentile(SYS, 50) == pytest.approx(50.0)
    assert latency_percentile(SYS, 99) == pytest.approx(80 + 0.97 * 40)


def test_unknown_latency_gives_none() -> None:
    recs = [_s(0, "T1", 1.0, 1.0, None, ("T1",))]
    assert latency_percentile(recs, 99) is None
    assert sla_violation_rate(recs) is None


def test_summarize_collects_everything() -> None:
    ref = Reference.of("always-T2", REF)
    m = summarize(SYS, ref, ["T1", "T2"], curve=[[0.6, 0.8333]])
    assert m.cost_ratio == pytest.approx(0.6)
    assert m.mean_quality == pytest.approx(0.625)
    assert m.per_task["t"]["share:T1"] == pytest.approx(0.5)
    assert m.curve == [[0.6, 0.8333]]


def test_pareto_front_drops_dominated() -> None:
    pts = [[0.5, 0.9], [0.2, 0.7], [0.3, 0.6], [0.8, 0.9], [1.0, 1.0]]
    assert pareto_front(pts) == [(0.2, 0.7), (0.5, 0.9), (1.0, 1.0)]


def test_matched_numbers_interpolate() -> None:
    pts = [[0.1, 0.9], [0.3, 1.0]]
    # 0.97 between 0.9 (c 0.1) and 1.0 (c 0.3): 0.1 + 0.2 * 0.7 = 0.24
    assert cost_at_quality(pts, 0.97) == pytest.approx(0.24)
    # 0.16 between: 0.9 + 0.1 * 0.06/0.2 = 0.93
    assert quality_at_cost(pts, 0.16) == pytest.approx(0.93)
    assert matched(pts) == {
        "cost_ratio_at_quality_0.97": pytest.approx(0.24),
        "quality_at_cost_0.16": pytest.approx(0.93),
    }


def test_matched_none_when_unreachable() -> None:
    assert cost_at_quality([[0.1, 0.5], [0.9, 0.96]], 0.97) is None
    assert quality_at_cost([[0.2, 0.99]], 0.16) is None
    assert quality_at_cost([[0.05, 0.8]], 0.16) == pytest.approx(0.8)  # flat after the last point
    assert cost_at_quality([[0.05, 0.99]], 0.97) == pytest.approx(0.05)


def test_auc_by_hand() -> None:
    # single point (0.2, 0.5): 0 before 0.2, flat 0.5 after -> 0.5 * 0.8
    assert curve_auc([[0.2, 0.5]]) == pytest.approx(0.4)
    # (0, 0.5) -> (0.5, 1.0), then flat: trapezoid 0.375 + 0.5
    assert curve_auc([[0.0, 0.5], [0.5, 1.0]]) == pytest.approx(0.875)
    # a point beyond cost 1 is interpolated, the area stops at 1
    assert curve_auc([[0.0, 0.0], [2.0, 1.0]]) == pytest.approx(0.25)
    assert curve_auc([]) == 0.0


def test_upper_hull_drops_points_below_a_chord() -> None:
    pts = [[0.1, 0.5], [0.2, 0.55], [0.3, 0.9], [0.5, 1.0], [0.6, 0.95]]
    # (0.2, 0.55) is below the chord (0.1, 0.5)-(0.3, 0.9) (0.7 there); (0.6, 0.95) is dominated
    assert upper_hull(pts) == [(0.1, 0.5), (0.3, 0.9), (0.5, 1.0)]
    # a point exactly on a chord adds nothing
    assert upper_hull([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]) == [(0.0, 0.0), (1.0, 1.0)]


def test_matched_numbers_read_off_the_hull() -> None:
    pts = [[0.1, 0.5], [0.2, 0.55], [0.3, 0.9], [0.5, 1.0]]
    # 0.97 between (0.3, 0.9) and (0.5, 1.0): 0.3 + 0.2 * 0.7 = 0.44
    assert cost_at_quality(pts, 0.97) == pytest.approx(0.44)
    # at 0.16 the hull runs (0.1, 0.5) -> (0.3, 0.9): 0.5 + 0.4 * 0.3 = 0.62 (the Pareto
    # front through (0.2, 0.55) would have said 0.53: mixing beats the dense middle point)
    assert quality_at_cost(pts, 0.16) == pytest.approx(0.62)
    # area: 0 before 0.1; trapezoids (0.1..0.3) 0.14, (0.3..0.5) 0.19; flat 1.0 over 0.5..1
    assert curve_auc(pts) == pytest.approx(0.14 + 0.19 + 0.5)


def test_subsample_grid_is_even_capped_and_keeps_the_default() -> None:
    vals = [float(i) for i in range(100)]
    got = subsample_grid(vals, 5)
    assert got == [0.0, 25.0, 50.0, 74.0, 99.0]  # round(linspace(0, 99, 5))
    assert len(subsample_grid(vals, 40)) == 40
    kept = subsample_grid(vals, 5, keep=60.0)
    assert len(kept) == 5 and 60.0 in kept and 0.0 in kept and 99.0 in kept
    assert subsample_grid([3.0, 1.0, 2.0, 2.0], 40) == [1.0, 2.0, 3.0]
    assert subsample_grid(vals, 5) == subsample_grid(list(reversed(vals)), 5)  # deterministic
