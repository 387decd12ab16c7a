"""Paired bootstrap over test queries for the matched numbers of every system.

Why paired: every system answers the same test queries, so resampling query indices once
per replicate and re-scoring every system on that same resample keeps the correlation
between systems; a difference's interval is then much tighter (and honest) compared with
two independent intervals.

Per replicate: draw n query indices with replacement (numpy, seeded); for every operating
point of every system, recompute (cost ratio, quality ratio) from its per-query quality
and cost on the resample (the reference system's totals are recomputed on the same
resample); re-take each system's upper convex hull; read cost @ q0.97 and quality @ c0.16
off it. The interval is the percentile interval (2.5 %, 97.5 %) over replicates.

A matched number a hull cannot reach on a replicate (cost @ q0.97 when the hull stays
below 0.97; quality @ c0.16 when the cheapest point costs more) counts as +inf / -inf
there, so "never" ranks correctly; an interval end that is infinite is written as null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from routenlp.bench.metrics import COST_AT_Q, COST_TARGET, QUALITY_AT_C, QUALITY_TARGET, matched

N_RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class PointOutcomes:
    """Per-query outcomes of one system's operating points: arrays of shape (P, n)."""

    quality: np.ndarray
    cost: np.ndarray

    def __post_init__(self) -> None:
        if self.quality.shape != self.cost.shape or self.quality.ndim != 2:
            raise ValueError("quality and cost must both be (points, queries) arrays")


def ratio_points(
    outcomes: PointOutcomes, ref_quality: np.ndarray, ref_cost: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """(cost ratio, quality ratio) of every operating point, optionally on a resample given
    as per-query counts `weights` (shape (n,) or (B, n)). Returns (P, 2) or (B, P, 2)."""
    w = np.ones(ref_quality.shape[0]) if weights is None else np.asarray(weights, dtype=float)
    rq = w @ ref_quality
    rc = w @ ref_cost
    q = w @ outcomes.quality.T  # (..., P)
    c = w @ outcomes.cost.T
    with np.errstate(divide="ignore", invalid="ignore"):
        qr = np.where(np.asarray(rq)[..., None] > 0, q / np.asarray(rq)[..., None], 0.0)
        cr = np.where(np.asarray(rc)[..., None] > 0, c / np.asarray(rc)[..., None], 0.0)
    return np.stack([cr, qr], axis=-1)


def _matched_arrays(pts: np.ndarray) -> tuple[float, float]:
    m = matched(pts.tolist())
    c = m[COST_AT_Q]
    q = m[QUALITY_AT_C]
    return (np.inf if c is None else float(c)), (-np.inf if q is None else float(q))


def _interval(vals: np.ndarray, level: float) -> list[float | None]:
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return [None, None]
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a], method="inverted_cdf")
    return [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None]


def _excludes_zero(vals: np.ndarray, level: float) -> bool:
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return False
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a], method="inverted_cdf")
    return bool(lo > 0 or hi < 0)


def resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) per-query counts of a seeded bootstrap over n queries."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    weights = np.zeros((n_resamples, n))
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)
    return weights


def paired_bootstrap(
    systems: Mapping[str, PointOutcomes],
    ref_quality: np.ndarray,
    ref_cost: np.ndarray,
    *,
    baseline: str | None = "routenlp",
    n_resamples: int = N_RESAMPLES,
    seed: int = 13,
    level: float = LEVEL,
) -> dict[str, dict[str, object]]:
    """Intervals of every system's matched numbers and of each difference to `baseline`.

    Returns {system: {"cost_ratio_at_quality_0.97": [lo, hi], "quality_at_cost_0.16": [lo, hi],
    "diff": {metric: {"ci": [lo, hi], "excludes_zero": bool}}}} ("diff": system minus
    baseline, absent for the baseline itself and when it is not among the systems)."""
    weights = resample_weights(ref_quality.shape[0], n_resamples, seed)
    stats: dict[str, np.ndarray] = {}
    for name, out in systems.items():
        pts = ratio_points(out, ref_quality, ref_cost, weights)  # (B, P, 2)
        stats[name] = np.array([_matched_arrays(pts[b]) for b in range(n_resamples)])  # (B, 2)
    keys = (COST_AT_Q, QUALITY_AT_C)
    res: dict[str, dict[str, object]] = {}
    base = stats.get(baseline) if baseline is not None else None
    for name, st in stats.items():
        entry: dict[str, object] = {k: _interval(st[:, m], level) for m, k in enumerate(keys)}
        if base is not None and name != baseline:
            diff: dict[str, object] = {}
            for m, k in enumerate(keys):
                with np.errstate(invalid="ignore"):
                    d = st[:, m] - base[:, m]  # inf - inf -> nan: both never reach; dropped
                diff[k] = {"ci": _interval(d, level), "excludes_zero": _excludes_zero(d, level)}
            entry["diff"] = diff
        res[name] = entry
    return res


def paired_change(
    before: PointOutcomes,
    after: PointOutcomes,
    before_default: PointOutcomes,
    after_default: PointOutcomes,
    ref_quality: np.ndarray,
    ref_cost: np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 13,
    level: float = LEVEL,
) -> dict[str, dict[str, object]]:
    """One system before and after a change (a loop round) on the same test queries:
    each matched number and the default point's ratios, before, after and after minus
    before with its paired-bootstrap interval. Two separate intervals that overlap say
    little; the interval of the paired difference is the test of "the round changed it".

    All arrays are aligned on the same query order; `*_default` hold one point each."""
    n = ref_quality.shape[0]
    for name, arr in (("before", before), ("after", after), ("before_default", before_default),
                      ("after_default", after_default)):
        if arr.quality.shape[1] != n:
            raise ValueError(f"{name} has {arr.quality.shape[1]} queries, the reference {n}")
    weights = resample_weights(n, n_resamples, seed)

    def matched_stats(out: PointOutcomes, w: np.ndarray | None) -> np.ndarray:
        pts = ratio_points(out, ref_quality, ref_cost, w)
        if w is None:
            return np.array(_matched_arrays(pts))
        return np.array([_matched_arrays(pts[b]) for b in range(w.shape[0])])  # (B, 2)

    def default_stats(out: PointOutcomes, w: np.ndarray | None) -> np.ndarray:
        pts = ratio_points(out, ref_quality, ref_cost, w)  # (..., 1, 2): cost ratio, quality ratio
        return pts[..., 0, :]

    res: dict[str, dict[str, object]] = {}
    for keys, stat, (b, a) in (
        ((COST_AT_Q, QUALITY_AT_C), matched_stats, (before, after)),
        (("cost_ratio", "quality_ratio"), default_stats, (before_default, after_default)),
    ):
        pb, pa = stat(b, None), stat(a, None)
        sb, sa = stat(b, weights), stat(a, weights)
        for m, k in enumerate(keys):
            with np.errstate(invalid="ignore"):
                d = sa[:, m] - sb[:, m]
            point_b, point_a = float(pb[m]), float(pa[m])
            ci = _interval(d, level)
            res[k] = {
                "before": point_b if np.isfinite(point_b) else None,
                "after": point_a if np.isfinite(point_a) else None,
                "diff": float(point_a - point_b) if np.isfinite(point_a - point_b) else None,
                "ci": ci,
                # an end at +-inf (one side never reaches the point on many resamples) is no
                # measured change; only a finite interval away from 0 counts
                "excludes_zero": None not in ci and _excludes_zero(d, level),
            }
    return res


__all__ = [
    "COST_TARGET",
    "LEVEL",
    "N_RESAMPLES",
    "PointOutcomes",
    "QUALITY_TARGET",
    "paired_bootstrap",
    "paired_change",
    "resample_weights",
    "ratio_points",
]


def default_point_intervals(
    rows: list[Mapping[str, object]],
    reference: str,
    *,
    resamples: int = N_RESAMPLES,
    seed: int = 13,
    level: float = LEVEL,
) -> dict[str, dict[str, list[float | None]]]:
    """Paired-bootstrap intervals of each system's quality and cost ratio at its default
    point, from `EvalResults.per_query_rows()` (one row per system and test query): the
    main table's "(quality, cost) with intervals" next to the matched numbers above."""
    by_sys: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        q = r.get("quality")
        by_sys.setdefault(str(r["system"]), {})[str(r["id"])] = (
            float(q) if isinstance(q, (int, float)) and np.isfinite(q) else 0.0,
            float(r.get("cost") or 0.0),  # type: ignore[arg-type]
        )
    if reference not in by_sys:
        return {}
    ids = sorted(by_sys[reference])
    n = len(ids)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))

    def arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
        got = by_sys[name]
        return (np.array([got.get(i, (0.0, 0.0))[0] for i in ids]),
                np.array([got.get(i, (0.0, 0.0))[1] for i in ids]))

    ref_q, ref_c = arrays(reference)
    rq, rc = ref_q[idx].mean(axis=1), ref_c[idx].mean(axis=1)
    out: dict[str, dict[str, list[float | None]]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in by_sys:
            q, c = arrays(name)
            out[name] = {
                "quality_ratio": _interval(np.where(rq > 0, q[idx].mean(axis=1) / rq, np.nan), level),
                "cost_ratio": _interval(np.where(rc > 0, c[idx].mean(axis=1) / rc, np.nan), level),
            }
    return out
