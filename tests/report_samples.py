"""Synthetic report inputs (an evaluation-results dict, a loop.json document, a
ClusterReport JSON and a round's gains) shared by the report tests: small, but with every
section populated and with text that needs escaping."""

from __future__ import annotations

from typing import Any

TIERS = ["T1", "T2", "T4"]
TASKS = ["qa", "math"]


def _system(q: float, c: float, shares: dict[str, float], curve: list[list[float]]) -> dict[str, Any]:
    per_task = {
        t: {"n": 20, "mean_quality": q * 0.8, "mean_cost": c * 1e-4, "escalation_rate": 0.2,
            "quality_violation_rate": 0.05, **{f"share:{k}": v for k, v in shares.items()}}
        for t in TASKS
    }
    return {"quality_ratio": q, "cost_ratio": c, "mean_quality": q * 0.8, "p50_latency_ms": 120.0,
            "p99_latency_ms": 900.0, "sla_violation_rate": 0.01, "quality_violation_rate": 0.05,
            "escalation_rate": 0.2, "tier_shares": shares, "per_task": per_task, "curve": curve}


def results() -> dict[str, Any]:
    return {
        "matrix": "synthetic <matrix>", "n_test": 40, "reference": "T4", "reference_mode": "top tier",
        "tiers": TIERS,
        "systems": {
            "routenlp": _system(0.98, 0.21, {"T1": 0.5, "T2": 0.3, "T4": 0.2},
                                [[0.1, 0.9], [0.21, 0.98], [0.5, 0.99]]),
            "oracle": _system(1.02, 0.12, {"T1": 0.7, "T2": 0.2, "T4": 0.1}, [[0.12, 1.02]]),
            "always-T4": _system(1.0, 1.0, {"T4": 1.0}, [[1.0, 1.0]]),
        },
        "matched": {"routenlp": {"cost_ratio_at_quality_0.97": 0.2, "quality_at_cost_0.16": 0.95}},
        "latency_quantiles_ms": {"routenlp": [10.0, 80.0, 120.0, 400.0, 900.0],
                                 "oracle": [10.0, 60.0, 100.0, 300.0, 700.0]},
        "descriptions": {"routenlp": "router + certified cascade"},
        "notes": ["synthetic data for the report tests"],
    }


def gains() -> list[dict[str, Any]]:
    return [
        {"cluster": "qa#1", "rank": 1, "tier": "T2", "n_test": 9, "quality_before": 0.41, "quality_after": 0.63},
        {"cluster": "math#0", "rank": 2, "tier": "T2", "n_test": 5, "quality_before": 0.5, "quality_after": 0.48},
    ]


def _rec(n: int, strategy: str, status: str, q: float, c: float, reason: str | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"round": n, "strategy": strategy, "status": status, "reason": reason, "quality_ratio": q,
            "cost_ratio": c, "cheap_share": 1 - c, "top_share": c / 2,
            "cal": {"quality_ratio": q - 0.005, "cost_ratio": c + 0.01, "cheap_share": 1 - c, "top_share": c / 2},
            "seconds": {"mine": 0.1, "distill": 30.0, "total": 42.5}, **extra}


def loop_doc() -> dict[str, Any]:
    distill = [{"tier": "T2", "kind": "local", "status": "trained", "n_examples": 48}]
    return {
        "primary": "targeted", "target_quality": 0.97,
        "rounds": [
            _rec(0, "baseline", "accepted", 0.98, 0.30),
            _rec(1, "targeted", "accepted", 0.985, 0.24, distill=distill, gains=gains(), volume={"T2": 48}),
            _rec(2, "targeted", "accepted", 0.981, 0.238, distill=distill, volume={"T2": 20},
                 stop="cost-ratio gain 0.0020 on the calibration split < epsilon 0.005"),
            _rec(1, "random", "accepted", 0.979, 0.28, distill=distill, volume={"T2": 48}),
            _rec(2, "random", "rejected", 0.95, 0.27, distill=distill, volume={"T2": 48},
                 reason="calibration quality ratio 0.9450 is below the target 0.9700 <b>&"),
        ],
    }


def cluster_report() -> dict[str, Any]:
    """The shape ClusterReport.save() writes."""
    long_q = "How many widgets " + "are there in the warehouse " * 10 + "today?"
    return {
        "n_failures": 20, "k_by_task": {"qa": 2, "math": 1}, "silhouette_by_task": {"qa": 0.31, "math": None},
        "clusters": [
            {"rank": 1, "key": "qa#1", "task": "qa", "size": 12, "mean_gap": 0.4, "score": 4.8,
             "failing_tiers": {"T1": 12, "T2": 7}, "ids": [f"q{i}" for i in range(12)],
             "examples": [long_q, "What is <script>alert(1)</script> in HTML?", "third query", "fourth query"]},
            {"rank": 2, "key": "math#0", "task": "math", "size": 6, "mean_gap": 0.3, "score": 1.8,
             "failing_tiers": {"T2": 6}, "ids": [f"m{i}" for i in range(6)], "examples": ["2 + 2 * 3 = ?"]},
            {"rank": 3, "key": "qa#0", "task": "qa", "size": 2, "mean_gap": 0.1, "score": 0.2,
             "failing_tiers": {"T1": 2}, "ids": ["q20", "q21"], "examples": ["short"]},
        ],
    }
