"""Evaluation metrics for routing systems replayed on a labelled test split.

Every system (RouteNLP, its ablations, each baseline) is reduced to one `Served` record
per test query: which tiers it tried, which one answered, the answer's quality, the total
cost (sum over tried tiers) and the end-to-end latency (sum over tried tiers). The
metrics below are pure functions of those records, so they can be checked by hand.

Definitions (all rates are fractions of test queries):
- quality ratio = mean served quality / mean quality of the reference system;
- cost ratio = total cost / total cost of the reference system (Always-top by default);
- p50 / p99 latency: numpy's linear-interpolation percentiles of end-to-end latency (ms);
- SLA-violation rate: end-to-end latency > the task's SLA;
- quality-violation rate: served quality < the task's tau;
- tier shares: share of queries whose answer came from each tier;
- escalation rate: share of queries where more than one tier was tried.

Cost-quality curve (one rule for every system): each operating point of a system is
(cost ratio, quality ratio). The curve is the *upper convex hull* of the points, from the
cheapest point to the best one: serving each query at one of two operating points at
random (with any mixing weight) achieves every point on the segment between them, so
every hull point is achievable and no dense grid is rewarded for lying on a straight
line. Matched numbers and the area are read off that hull:
- `cost_at_quality(points, 0.97)`: the least cost ratio at which the hull reaches
  quality ratio 0.97; None if it never does;
- `quality_at_cost(points, 0.16)`: the hull's quality ratio at cost ratio 0.16 (flat
  beyond the best point); None if the cheapest point costs more than 0.16;
- `curve_auc(points)`: the area under the hull over cost ratio in [0, 1], with quality 0
  below the cheapest point (a system cannot operate there) and flat after the best point.
  An ideal system (quality ratio 1 at zero cost) scores 1.0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

QUALITY_TARGET = 0.97
COST_TARGET = 0.16
COST_AT_Q = f"cost_ratio_at_quality_{QUALITY_TARGET}"
QUALITY_AT_C = f"quality_at_cost_{COST_TARGET}"


@dataclass(frozen=True)
class Served:
    """What one system did for one test query."""

    id: str
    task: str
    tier: str
    quality: float
    cost: float
    latency_ms: float | None
    tried: tuple[str, ...] = field(default=())
    tau: float = 1.0
    sla_ms: float | None = None

    @property
    def escalated(self) -> bool:
        return len(self.tried) > 1


class SystemMetrics(BaseModel):
    """One row of the results table (the evaluation-results JSON per system)."""

    quality_ratio: float
    cost_ratio: float
    mean_quality: float
    mean_cost: float
    p50_latency_ms: float | None
    p99_latency_ms: float | None
    sla_violation_rate: float | None
    quality_violation_rate: float
    tier_shares: dict[str, float]
    escalation_rate: float
    curve: list[list[float]] = Field(default_factory=list)
    hull: list[list[float]] = Field(default_factory=list)
    n_points: int = 0
    operating_point: dict[str, float | str | None] = Field(default_factory=dict)
    per_task: dict[str, dict[str, float | None]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    """The normaliser of the ratios: a system's mean quality and total cost."""

    name: str
    mean_quality: float
    total_cost: float

    @classmethod
    def of(cls, name: str, records: Sequence[Served]) -> Reference:
        return cls(name, mean_quality(records), total_cost(records))


# -- scalar metrics ---------------------------------------------------------------------


def mean_quality(records: Sequence[Served]) -> float:
    return float(np.mean([r.quality for r in records])) if records else 0.0


def total_cost(records: Sequence[Served]) -> float:
    return float(sum(r.cost for r in records))


def quality_ratio(records: Sequence[Served], ref: Reference) -> float:
    """Mean served quality over the reference's; 0 when the reference scores 0."""
    if ref.mean_quality <= 0:
        return 0.0
    return mean_quality(records) / ref.mean_quality


def cost_ratio(records: Sequence[Served], ref: Reference) -> float:
    """Total cost over the reference's; 0 when the reference costs nothing."""
    if ref.total_cost <= 0:
        return 0.0
    return total_cost(records) / ref.total_cost


def latency_percentile(records: Sequence[Served], q: float) -> float | None:
    """q-th percentile (0-100, linear interpolation) of end-to-end latency; None if unknown."""
    lat = [r.latency_ms for r in records if r.latency_ms is not None]
    if not lat or len(lat) < len(records):
        return None
    return float(np.percentile(np.asarray(lat, dtype=float), q))


def sla_violation_rate(records: Sequence[Served]) -> float | None:
    """Share of queries over their SLA; None when latency or SLA is unknown for any."""
    if not records or any(r.latency_ms is None or r.sla_ms is None for r in records):
        return None
    return sum(1 for r in records if r.latency_ms > r.sla_ms) / len(records)  # type: ignore[operator]


def quality_violation_rate(records: Sequence[Served]) -> float:
    """Share of served answers whose quality is below the task's tau."""
    if not records:
        return 0.0
    return sum(1 for r in records if r.quality < r.tau - 1e-12) / len(records)


def tier_shares(records: Sequence[Served], tiers: Sequence[str]) -> dict[str, float]:
    """Share of answers served by each tier (every tier listed, zeros included)."""
    counts = Counter(r.tier for r in records)
    n = max(len(records), 1)
    return {t: counts.get(t, 0) / n for t in tiers}


def escalation_rate(records: Sequence[Served]) -> float:
    if not records:
        return 0.0
    return sum(1 for r in records if r.escalated) / len(records)


def summarize(
    records: Sequence[Served],
    ref: Reference,
    tiers: Sequence[str],
    *,
    curve: Sequence[Sequence[float]] = (),
    operating_point: dict[str, float | str | None] | None = None,
) -> SystemMetrics:
    """All table metrics of one system at one operating point (+ its swept curve)."""
    by_task: dict[str, list[Served]] = {}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    per_task: dict[str, dict[str, float | None]] = {}
    for task, recs in sorted(by_task.items()):
        per_task[task] = {
            "n": float(len(recs)),
            "mean_quality": mean_quality(recs),
            "mean_cost": total_cost(recs) / len(recs),
            "quality_violation_rate": quality_violation_rate(recs),
            "escalation_rate": escalation_rate(recs),
            "p99_latency_ms": latency_percentile(recs, 99),
        }
        for t, share in tier_shares(recs, tiers).items():
            per_task[task][f"share:{t}"] = share
    return SystemMetrics(
        quality_ratio=quality_ratio(records, ref),
        cost_ratio=cost_ratio(records, ref),
        mean_quality=mean_quality(records),
        mean_cost=total_cost(records) / max(len(records), 1),
        p50_latency_ms=latency_percentile(records, 50),
        p99_latency_ms=latency_percentile(records, 99),
        sla_violation_rate=sla_violation_rate(records),
        quality_violation_rate=quality_violation_rate(records),
        tier_shares=tier_shares(records, tiers),
        escalation_rate=escalation_rate(records),
        curve=[[float(c), float(q)] for c, q in curve],
        hull=[[float(c), float(q)] for c, q in upper_hull(curve)],
        n_points=len(curve),
        operating_point=operating_point or {},
        per_task=per_task,
    )


# -- cost-quality curve -----------------------------------------------------------------


def pareto_front(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """Non-dominated (cost, quality) points sorted by cost (strictly rising quality)."""
    pts = sorted(
        ((float(c), float(q)) for c, q in points if not (math.isnan(c) or math.isnan(q))),
        key=lambda p: (p[0], -p[1]),
    )
    front: list[tuple[float, float]] = []
    for c, q in pts:
        if not front or q > front[-1][1] + 1e-12:
            front.append((c, q))
    return front


def upper_hull(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The upper convex hull of (cost, quality) points from the cheapest to the best one
    (rising cost, rising quality, concave): every point on it is a random mixture of two
    operating points."""
    front = pareto_front(points)
    hull: list[tuple[float, float]] = []
    for p in front:
        # drop the last hull point while it lies on or below the chord to p
        while len(hull) >= 2:
            (c0, q0), (c1, q1) = hull[-2], hull[-1]
            if (q1 - q0) * (p[0] - c0) <= (p[1] - q0) * (c1 - c0) + 1e-15:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _quality_on_hull(hull: Sequence[tuple[float, float]], cost: float) -> float | None:
    if not hull or hull[0][0] > cost + 1e-12:
        return None
    for (c0, q0), (c1, q1) in zip(hull, hull[1:]):
        if c0 <= cost <= c1:
            return q1 if c1 == c0 else q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return hull[-1][1]


def _cost_on_hull(hull: Sequence[tuple[float, float]], quality: float) -> float | None:
    if not hull or hull[-1][1] < quality - 1e-12:
        return None
    if hull[0][1] >= quality:
        return hull[0][0]
    for (c0, q0), (c1, q1) in zip(hull, hull[1:]):
        if q0 < quality <= q1:
            return c0 + (c1 - c0) * (quality - q0) / (q1 - q0)
    return hull[-1][0]  # pragma: no cover - unreachable given the checks above


def quality_at_cost(points: Sequence[Sequence[float]], cost: float = COST_TARGET) -> float | None:
    """Quality ratio the hull reaches at a cost ratio (None if it cannot operate there)."""
    return _quality_on_hull(upper_hull(points), cost)


def cost_at_quality(
    points: Sequence[Sequence[float]], quality: float = QUALITY_TARGET
) -> float | None:
    """Least cost ratio at which the hull reaches a quality ratio (None if never)."""
    return _cost_on_hull(upper_hull(points), quality)


def curve_auc(points: Sequence[Sequence[float]], lo: float = 0.0, hi: float = 1.0) -> float:
    """Area under the hull over cost ratio [lo, hi] (see module docstring)."""
    front = upper_hull(points)
    if not front:
        return 0.0
    # knots: the front's points inside (lo, hi) plus the interval ends
    knots = sorted({lo, hi, *(c for c, _ in front if lo < c < hi)})
    first_cost = front[0][0]

    def q_at(c: float) -> float:
        if c < first_cost - 1e-12:
            return 0.0
        got = _quality_on_hull(front, c)
        return 0.0 if got is None else got

    area = 0.0
    for a, b in zip(knots, knots[1:]):
        if a < first_cost - 1e-12:
            continue  # first_cost is a knot, so a segment is wholly before or after it
        area += (q_at(a) + q_at(b)) / 2 * (b - a)
    return float(area)


def matched(points: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """The two matched-operating-point numbers of the results JSON (read off the hull)."""
    hull = upper_hull(points)
    return {
        COST_AT_Q: _cost_on_hull(hull, QUALITY_TARGET),
        QUALITY_AT_C: _quality_on_hull(hull, COST_TARGET),
    }


def subsample_grid(values: Sequence[float], cap: int, keep: float | None = None) -> list[float]:
    """At most `cap` knob values, evenly spaced over the sorted grid (both ends kept), so
    every system gets the same number of operating points; `keep` (the default knob) is
    always in, replacing its nearest pick. Deterministic."""
    vals = sorted(dict.fromkeys(float(v) for v in values))
    if cap < 1:
        raise ValueError(f"the operating-point cap must be >= 1, got {cap}")
    if len(vals) <= cap:
        return vals
    idx = sorted({int(round(x)) for x in np.linspace(0, len(vals) - 1, cap)})
    picked = [vals[i] for i in idx]
    if keep is not None and float(keep) in vals and float(keep) not in picked:
        near = min(range(len(picked)), key=lambda k: (abs(picked[k] - float(keep)), k))
        picked[near] = float(keep)
    return sorted(picked)
