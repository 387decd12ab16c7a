"""Matplotlib plots of an evaluation (Agg backend: no display needed), as PNG bytes.

Each function takes the evaluation-results JSON (a dict), so a report can be rebuilt from
a saved results file alone.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from routenlp.bench.metrics import upper_hull  # noqa: E402

HIGHLIGHT = ("routenlp",)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _style(name: str) -> dict[str, Any]:
    if name == "routenlp":
        return {"color": "black", "linewidth": 2.4, "zorder": 5}
    if name.startswith("routenlp-"):
        return {"linestyle": "--", "linewidth": 1.3}
    if name == "oracle":
        return {"color": "grey", "linestyle": ":", "linewidth": 1.2}
    return {"linewidth": 1.2}


def cost_quality_plot(results: dict[str, Any]) -> bytes:
    """Each system's swept points and upper convex hull; always-<tier> systems as markers."""
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for name, sysm in results["systems"].items():
        curve = sysm.get("curve") or [[sysm["cost_ratio"], sysm["quality_ratio"]]]
        if name.startswith("always-"):
            ax.scatter([sysm["cost_ratio"]], [sysm["quality_ratio"]], marker="x", color="grey", s=22)
            ax.annotate(name[7:], (sysm["cost_ratio"], sysm["quality_ratio"]), fontsize=6, color="grey")
            continue
        front = upper_hull(curve)
        xs = [c for c, _ in front]
        ys = [q for _, q in front]
        style = _style(name)
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=name, **style)
        ax.scatter([c for c, _ in curve], [q for _, q in curve], s=6, alpha=0.3, color=line.get_color())
    ax.axhline(0.97, color="red", linewidth=0.6, linestyle=":")
    ax.axvline(0.16, color="red", linewidth=0.6, linestyle=":")
    ax.set_xlabel(f"cost ratio (vs {results.get('reference', 'reference')})")
    ax.set_ylabel("quality ratio")
    ax.set_xlim(left=0)
    ax.set_title("Cost-quality trade-off (upper convex hulls of capped operating points)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def tier_share_plot(results: dict[str, Any], system: str = "routenlp") -> bytes | None:
    """Stacked bars: the share of each tier per task for one system."""
    sysm = results["systems"].get(system)
    if sysm is None or not sysm.get("per_task"):
        return None
    tiers = results["tiers"]
    tasks = sorted(sysm["per_task"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tasks) + 3), 4.5))
    bottom = [0.0] * len(tasks)
    cmap = plt.get_cmap("viridis", max(len(tiers), 2))
    for k, tier in enumerate(tiers):
        vals = [float(sysm["per_task"][t].get(f"share:{tier}") or 0.0) for t in tasks]
        if not any(vals):
            continue
        ax.bar(tasks, vals, bottom=bottom, label=tier, color=cmap(k))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("share of queries")
    ax.set_title(f"Tier shares per task ({system})")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=8)
    return _png(fig)


def latency_cdf_plot(results: dict[str, Any]) -> bytes | None:
    """CDF of end-to-end latency per system (from the stored percentiles)."""
    lq = results.get("latency_quantiles_ms") or {}
    if not lq:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, qs in lq.items():
        if name.startswith("always-"):
            continue
        ys = [i / (len(qs) - 1) for i in range(len(qs))]
        ax.plot(qs, ys, label=name, **_style(name))
    ax.set_xlabel("end-to-end latency (ms)" + (" - modelled" if results.get("flags", {}).get("modelled_latency") else ""))
    ax.set_ylabel("fraction of queries")
    ax.set_title("Latency CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def loop_rounds_plot(loop: dict[str, Any]) -> bytes | None:
    """Test cost ratio and quality ratio per closed-loop round, one line per strategy, each
    starting from the shared baseline at round 0; rejected rounds are marked with an x
    (their policy was never served), stopped rounds (nothing new was trained) are left out."""
    rounds = [r for r in loop.get("rounds") or [] if isinstance(r, dict)]
    base = next((r for r in rounds if r.get("round") == 0), None)
    strategies = list(dict.fromkeys(str(r.get("strategy")) for r in rounds if r.get("round") != 0))
    if base is None and not strategies:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], "cost_ratio", "test cost ratio"), (axes[1], "quality_ratio", "test quality ratio"))
    for ax, key, label in panels:
        marked = False
        for strategy in strategies or ["baseline"]:
            pts = [r for r in rounds if str(r.get("strategy")) == strategy and r.get("status") != "stopped"
                   and r.get(key) is not None]
            pts.sort(key=lambda r: r.get("round") or 0)
            if base is not None and base.get(key) is not None:
                pts = [base, *pts]
            if not pts:
                continue
            xs = [int(r.get("round") or 0) for r in pts]
            ys = [float(r[key]) for r in pts]
            style = {"color": "black", "linewidth": 2.0} if strategy == loop.get("primary") else {"linewidth": 1.4}
            ax.plot(xs, ys, marker="o", markersize=4, label=strategy, **style)
            rej = [(x, y) for x, y, r in zip(xs, ys, pts) if r.get("status") == "rejected"]
            if rej:
                ax.scatter(*zip(*rej), marker="x", s=70, color="red", zorder=6,
                           label=None if marked else "rejected")
                marked = True
        if key == "quality_ratio" and loop.get("target_quality") is not None:
            ax.axhline(float(loop["target_quality"]), color="red", linewidth=0.7, linestyle=":",
                       label="acceptance bar (cal split)")
        ax.set_xlabel("round (0 = baseline)")
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Closed loop: cost and quality per round")
    fig.tight_layout()
    return _png(fig)
