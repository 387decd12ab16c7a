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

Cost-quality curve: each operating point of a system is (cost ratio, quality ratio). The
curve is the Pareto front of the points (a point is dropped if another is no more
expensive and at least as good), joined by straight lines: any point on a segment is
reachable by serving each query at one of its two end points at random, so the line is
an achievable trade-off. Matched numbers and the area are read off that front:
- `cost_at_quality(front, 0.97)`: the least cost ratio at which the front reaches quality
  ratio 0.97 (linear interpolation between front points); None if it never does;
- `quality_at_cost(front, 0.16)`: the front's quality ratio at cost ratio 0.16 (flat
  beyond the most expensive point); None if the cheapest point costs more than 0.16;
- `curve_auc(front)`: the trapezoid area under the front over cost ratio in [0, 1], with
  quality 0 below the cheapest point (a system cannot operate there) and flat after the
  most expensive point. An ideal system (quality ratio 1 at zero cost) scores 1.0.
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


def quality_at_cost(points: Sequence[Sequence[float]], cost: float = COST_TARGET) -> float | None:
    """Quality ratio the front reaches at a cost ratio (None if it cannot operate there)."""
    front = pareto_front(points)
    if not front or front[0][0] > cost + 1e-12:
        return None
    for (c0, q0), (c1, q1) in zip(front, front[1:]):
        if c0 <= cost <= c1:
            if c1 == c0:
                return q1
            return q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return front[-1][1]


def cost_at_quality(
    points: Sequence[Sequence[float]], quality: float = QUALITY_TARGET
) -> float | None:
    """Least cost ratio at which the front reaches a quality ratio (None if never)."""
    front = pareto_front(points)
    if not front or front[-1][1] < quality - 1e-12:
        return None
    if front[0][1] >= quality:
        return front[0][0]
    for (c0, q0), (c1, q1) in zip(front, front[1:]):
        if q0 < quality <= q1:
            return c0 + (c1 - c0) * (quality - q0) / (q1 - q0)
    return front[-1][0]  # pragma: no cover - unreachable given the checks above


def curve_auc(points: Sequence[Sequence[float]], lo: float = 0.0, hi: float = 1.0) -> float:
    """Trapezoid area under the front over cost ratio [lo, hi] (see module docstring)."""
    front = pareto_front(points)
    if not front:
        return 0.0
    # knots: the front's points inside (lo, hi) plus the interval ends
    knots = sorted({lo, hi, *(c for c, _ in front if lo < c < hi)})
    first_cost = front[0][0]

    def q_at(c: float) -> float:
        if c < first_cost - 1e-12:
            return 0.0
        got = quality_at_cost(front, c)
        return 0.0 if got is None else got

    area = 0.0
    for a, b in zip(knots, knots[1:]):
        if a < first_cost - 1e-12:
            continue  # first_cost is a knot, so a segment is wholly before or after it
        area += (q_at(a) + q_at(b)) / 2 * (b - a)
    return float(area)


def matched(points: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """The two matched-operating-point numbers of the results JSON."""
    return {
        f"cost_ratio_at_quality_{QUALITY_TARGET}": cost_at_quality(points, QUALITY_TARGET),
        f"quality_at_cost_{COST_TARGET}": quality_at_cost(points, COST_TARGET),
    }
