"""RouteNLP's own evaluation stage: the router + conformal Cascade replayed on the test split.

Kept apart from the baselines because how RouteNLP's operating points are produced is
RouteNLP's business: `evaluate_routenlp` takes a list of `RouteNLPPoint`s (a cost_bias and
the thresholds the Cascade accepts with, chosen without the test split) and replays each
through the real `Cascade` with `ReplayTier` tiers, so the evaluated policy is the served
one. `routenlp_points` builds the default list: the router rule's cost_bias grid at the
calibrated thresholds (alpha is fixed at calibration, never chosen on test). A caller with
certified operating points (e.g. theta = (cost_bias, lambda) from `conformal`) passes its
own list instead.

Ablations use the same Cascade (cascade from the ladder's cheapest tier = no router; no
SLA awareness; every serving tier as the ladder) or the router alone (no cascade).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routenlp.bench.baselines.base import MatrixView, Path_
from routenlp.bench.metrics import Served, subsample_grid
from routenlp.bench.settings import EvalData, EvalSettings, SystemRun, outcomes_of
from routenlp.config import EnsembleConfig, TaskConfig
from routenlp.errors import ConfigError, TierError
from routenlp.tiers.base import Request

# rule "label": argmax_k log p_k - b * c_k / c_K (router.inference); log-prob units and
# c_k / c_K spans ~0.01-1, so separating cheap tiers needs large b
LABEL_COST_BIASES: tuple[float, ...] = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# rule "success": argmax_k P(success_k) - b * c_k / c_K; b is the success probability given
# up for a full top-tier price (~0..1), and most of the cost range moves for small b (the
# router's own selection grid is 0..1.5 in steps of 0.01), so the grid is dense near 0
SUCCESS_COST_BIASES: tuple[float, ...] = (
    -0.2, -0.05, 0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
)
ABLATIONS = (
    "routenlp-per-tier",
    "routenlp-paper-objective",
    "routenlp-router-only",
    "routenlp-cascade-from-t1",
    "routenlp-no-sla",
    "routenlp-all-tiers",
)


def default_cost_biases(router: Any) -> tuple[float, ...]:
    """The cost_bias sweep grid in the units of the router's decision rule."""
    rule = getattr(router, "rule", "label")
    return SUCCESS_COST_BIASES if rule == "success" else LABEL_COST_BIASES


def _text(response: Any) -> str:
    from routenlp.tiers.replay import response_text

    return response_text(response)


# -- replay through the Cascade ---------------------------------------------------------


class _FixedBiasRouter:
    """The real router with decisions for this split computed in batch at one cost_bias.

    `decide` returns exactly what `router.decide(task, text, cost_bias=bias)` returns (the
    batch and single-query paths share the model); a query outside the batch falls back to
    the real call.
    """

    def __init__(self, router: Any, tasks: Sequence[str], texts: Sequence[str], bias: float | None) -> None:
        self.router = router
        self.bias = bias
        self.rule = getattr(router, "rule", None)
        if callable(getattr(router, "ladder", None)):
            self.ladder = router.ladder  # the Cascade's per-task frontier ladder
        decisions = router.decide_batch(list(tasks), list(texts), cost_bias=bias)
        self._by_key = {(t, x): d for t, x, d in zip(tasks, texts, decisions)}

    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Any:
        d = self._by_key.get((task, text))
        if d is None:
            return self.router.decide(task, text, cost_bias=self.bias)
        return d


def _request_builder(task_cfg: TaskConfig, query: str, id: str | None) -> Request:
    """Replay tiers look answers up by id: no prompt rendering needed."""
    return Request(task=task_cfg.name, prompt=query, query=query, id=id)


def _latency_of(view: MatrixView, i: int, tried: Sequence[int]) -> float | None:
    vals = [view.L[i, j] for j in tried]
    if any(not np.isfinite(v) for v in vals):
        return None
    return float(sum(vals))


def served_from_path(view: MatrixView, i: int, path: Path_) -> Served:
    j = path[-1]
    return Served(
        id=view.rows[i].id,
        task=view.tasks[i],
        tier=view.tiers[j],
        quality=float(view.Q[i, j]),
        cost=float(sum(view.C[i, jj] for jj in path)),
        latency_ms=_latency_of(view, i, path),
        tried=tuple(view.tiers[jj] for jj in path),
        tau=float(view.tau[i]),
        sla_ms=float(view.sla[i]) if np.isfinite(view.sla[i]) else None,
    )


def run_cascade(
    config: EnsembleConfig,
    view: MatrixView,
    *,
    router: Any,
    thresholds: Any,
    sla_aware: bool,
    latency: Mapping[str, float] | None,
    estimator: Any = None,
    start_at_first: bool = False,
    ladder: str | None = None,
) -> list[Served]:
    """Replay every test query through a fresh Cascade over replay tiers.

    `start_at_first`: no router decision; each query starts at the cheapest tier of its
    ladder (the router still supplies the frontier ladder when one is given).
    `ladder`: the Cascade's ladder option (None: frontier when the router provides it)."""
    from routenlp.cascade import Cascade
    from routenlp.tiers.replay import build_replay_tiers

    from routenlp.conformal.certify import PolicyArtifact

    tiers = build_replay_tiers(config, view.rows)
    certified = isinstance(thresholds, PolicyArtifact)
    cascade = Cascade(
        config,
        tiers,
        router=router,
        thresholds=None if certified else thresholds,
        policy=thresholds if certified else None,
        online=False,
        latency=latency,
        sla_aware=sla_aware,
        estimator=estimator,
        request_builder=_request_builder,
        ladder=ladder,  # type: ignore[arg-type]
    )
    pos = {t: j for j, t in enumerate(view.tiers)}
    out: list[Served] = []
    for i, row in enumerate(view.rows):
        try:
            start = cascade.ladder_for(row.task)[0][0] if start_at_first else None
            res = cascade.run(row.task, row.prompt, id=row.id, start_tier=start)
        except TierError as err:  # the top tier has no usable answer: a failed request
            steps = getattr(err, "steps", [])
            tried = [s["tier"] for s in steps if s.get("skipped_reason") is None]
            top = tried[-1] if tried else cascade.ladder_for(row.task)[0][-1]
            out.append(
                Served(
                    id=row.id,
                    task=row.task,
                    tier=top,
                    quality=0.0,
                    cost=float(sum(s.get("cost") or 0.0 for s in steps)),
                    latency_ms=_latency_of(view, i, [pos[t] for t in tried]),
                    tried=tuple(tried),
                    tau=float(view.tau[i]),
                    sla_ms=float(view.sla[i]),
                )
            )
            continue
        tried = [s["tier"] for s in res.steps if s.get("skipped_reason") is None]
        q = res.generation.quality
        out.append(
            Served(
                id=row.id,
                task=row.task,
                tier=res.tier,
                quality=0.0 if (q is None or not res.generation.ok) else float(q),
                cost=float(res.total_cost),
                latency_ms=_latency_of(view, i, [pos[t] for t in tried]),
                tried=tuple(tried),
                tau=float(view.tau[i]),
                sla_ms=float(res.sla_ms),
            )
        )
    return out


def router_only(view: MatrixView, router: _FixedBiasRouter) -> list[Served]:
    """The router's tier, accepted as is (no confidence check, no escalation)."""
    out = []
    for i, row in enumerate(view.rows):
        d = router.decide(row.task, row.prompt)
        j = view.tiers.index(d.tier) if d.tier in view.tiers else 0
        out.append(served_from_path(view, i, [view.serving_at_or_above(i, j)]))
    return out


# -- operating points -------------------------------------------------------------------


@dataclass(frozen=True)
class RouteNLPPoint:
    """One RouteNLP operating point: the router's cost_bias and the Cascade's thresholds.

    `label` is what the results JSON shows as its operating point; `default` marks the
    table row (exactly one point should carry it)."""

    cost_bias: float
    thresholds: Any
    label: Mapping[str, float | str | None] = field(default_factory=dict)
    default: bool = False


def routenlp_points(
    config: EnsembleConfig, router: Any, thresholds: Any, settings: EvalSettings
) -> list[RouteNLPPoint]:
    """The default points: the rule's cost_bias grid (capped at `settings.points`, the
    router's own cost_bias always in) at the calibrated thresholds."""
    default_bias = float(getattr(router, "cost_bias", config.router.cost_bias))
    grid = default_cost_biases(router) if settings.cost_biases is None else settings.cost_biases
    biases = subsample_grid([*grid, default_bias], settings.points, keep=default_bias)
    alpha = getattr(thresholds, "alpha", None)
    return [
        RouteNLPPoint(b, thresholds, {"cost_bias": b, "alpha": alpha}, default=(b == default_bias))
        for b in biases
    ]


def certified_points(policy: Any, router: Any, settings: EvalSettings) -> list[RouteNLPPoint]:
    """The certified policy's points: the served theta (the table row) plus the Pareto
    front on calibration split A that the fixed-sequence test walked (capped at
    `settings.points`). Every theta was fixed on calibration rows; the test split only
    scores them."""
    from routenlp.conformal.certify import Theta, pareto_order

    table = list(policy.meta.get("table") or [])
    thetas = [Theta.model_validate(r["theta"]) for r in table]
    if thetas:
        risk = np.array([float(r["risk_A"]) for r in table])
        cost = np.array([float(r["cost_A"]) for r in table])
        front = [thetas[j] for j in pareto_order(risk, cost)]
    else:
        front = []
    served = policy.theta
    idx = subsample_grid(list(range(len(front))), max(1, settings.points - 1), keep=None) if front else []
    chosen = [front[int(i)] for i in idx if front[int(i)] != served]
    default_b = float(getattr(router, "cost_bias", 0.0))
    cert = policy.certificate

    def point(th: Any, default: bool) -> RouteNLPPoint:
        b = default_b if th.b is None else float(th.b)
        return RouteNLPPoint(
            b, policy.with_theta(th),
            {"cost_bias": b, "lambda": float(th.lam), "alpha": float(cert.alpha), "delta": float(cert.delta),
             "guarantee": cert.guarantee, "certified": bool(cert.certified)},
            default=default,
        )

    return [point(served, True), *(point(th, False) for th in chosen)]


# -- the stage --------------------------------------------------------------------------


def evaluate_routenlp(
    data: EvalData,
    settings: EvalSettings,
    *,
    router: Any,
    thresholds: Any,
    estimator: Any = None,
    points: Sequence[RouteNLPPoint] | None = None,
    policy: Any = None,
    ablation_routers: Mapping[str, Any] | None = None,
) -> tuple[dict[str, SystemRun], list[str]]:
    """RouteNLP and its ablations: ({name: run}, notes).

    Every point is replayed through the Cascade (SLA-aware per the settings), without SLA
    awareness and with the all-tiers ladder; the router alone is scored at every point's
    cost_bias; the cascade from the ladder's cheapest tier runs at the default point only
    (it has no router knob)."""
    cfg, test = data.config, data.test
    per_tier_pts: list[RouteNLPPoint] = []
    if policy is not None and points is None:
        # the served policy is the certified one; the per-tier thresholds are its ablation
        per_tier_pts = routenlp_points(cfg, router, thresholds, settings) if thresholds is not None else []
        pts = certified_points(policy, router, settings)
    else:
        pts = list(points) if points is not None else routenlp_points(cfg, router, thresholds, settings)
    if not pts:
        raise ConfigError("RouteNLP needs at least one operating point")
    defaults = [p for p in pts if p.default]
    default = defaults[0] if defaults else pts[0]
    tasks = [r.task for r in test.rows]
    texts = [r.prompt for r in test.rows]
    routers: dict[float, _FixedBiasRouter] = {}
    all_biases = sorted({p.cost_bias for p in [*pts, *per_tier_pts]})
    n_biases = len(all_biases)
    for k, b in enumerate(all_biases):
        routers[b] = _FixedBiasRouter(router, tasks, texts, b)
        settings.step("router decisions", k + 1, n_biases)
    warm_cascade_cache(cfg, estimator, test)

    def replay(p: RouteNLPPoint, **kw: Any) -> list[Served]:
        kw.setdefault("sla_aware", settings.sla_aware)
        kw.setdefault("ladder", settings.ladder)
        return run_cascade(cfg, test, router=routers[p.cost_bias], thresholds=p.thresholds,
                           latency=data.latency, estimator=estimator, **kw)

    curves: dict[str, list[list[Served]]] = {n: [] for n in ("routenlp", "routenlp-no-sla", "routenlp-all-tiers")}
    rows: dict[str, list[Served]] = {}
    for k, p in enumerate(pts):
        for name, kw in (("routenlp", {}), ("routenlp-no-sla", {"sla_aware": False}), ("routenlp-all-tiers", {"ladder": "all"})):
            recs = replay(p, **kw)
            curves[name].append(recs)
            if p is default:
                rows[name] = recs
        settings.step("RouteNLP cascade sweep", k + 1, len(pts))
    ro_biases = sorted({p.cost_bias for p in (per_tier_pts or pts)})
    ro_curve = {b: router_only(test, routers[b]) for b in ro_biases}
    ro_default = default.cost_bias if default.cost_bias in ro_curve else ro_biases[0]
    t1 = replay(default, start_at_first=True)
    per_tier_run: SystemRun | None = None
    if per_tier_pts:
        pt_default = next((p for p in per_tier_pts if p.default), per_tier_pts[0])
        pt_curve = []
        for k, p in enumerate(per_tier_pts):
            pt_curve.append(replay(p))
            if p is pt_default:
                pt_rows = pt_curve[-1]
            settings.step("per-tier ablation sweep", k + 1, len(per_tier_pts))
        per_tier_run = SystemRun(
            "routenlp-per-tier", pt_rows, outcomes_of(pt_curve),
            "ablation: router + cascade with per-(task, tier) CRC/LTT thresholds (bounds each tier "
            "alone, not the served policy)", dict(pt_default.label),
        )

    has_frontier = callable(getattr(router, "ladder", None))
    ladder_mode = "frontier" if settings.ladder in (None, "frontier") and has_frontier else "all"
    op = {**default.label, "ladder": ladder_mode}
    runs = {
        "routenlp": SystemRun("routenlp", rows["routenlp"], outcomes_of(curves["routenlp"]),
                              "router -> conformal cascade (SLA-aware), replayed through Cascade", op),
        "routenlp-router-only": SystemRun(
            "routenlp-router-only", ro_curve[ro_default], outcomes_of(list(ro_curve.values())),
            "ablation: router decision served as is (no cascade)", {"cost_bias": ro_default}),
        "routenlp-cascade-from-t1": SystemRun(
            "routenlp-cascade-from-t1", t1, outcomes_of([t1]),
            "ablation: cascade from the cheapest ladder tier (no router decision)",
            {"alpha": default.label.get("alpha"), "ladder": ladder_mode}),
        "routenlp-no-sla": SystemRun("routenlp-no-sla", rows["routenlp-no-sla"], outcomes_of(curves["routenlp-no-sla"]),
                                     "ablation: router + cascade without SLA awareness", dict(op)),
        "routenlp-all-tiers": SystemRun(
            "routenlp-all-tiers", rows["routenlp-all-tiers"], outcomes_of(curves["routenlp-all-tiers"]),
            "ablation: router + cascade through every serving tier in cost order (pre-frontier ladder)",
            {**default.label, "ladder": "all"}),
    }
    for name, other in (ablation_routers or {}).items():
        runs[name] = router_alone_run(name, other, test, settings)
    if per_tier_run is not None:
        runs["routenlp-per-tier"] = per_tier_run
        runs["routenlp"].description = "router -> certified cascade (one guarantee for the served policy)"
    notes = [
        f"RouteNLP curve: {len(pts)} operating points (cost_bias {sorted({p.cost_bias for p in pts})}) "
        "at thresholds fixed before the test split",
        f"RouteNLP cost_bias grid in the units of the router's rule "
        f"({getattr(router, 'rule', 'label')!r}); escalation ladder: {ladder_mode}",
    ]
    return runs, notes


def router_alone_run(name: str, router: Any, test: MatrixView, settings: EvalSettings) -> SystemRun:
    """Another trained router (e.g. `--objective paper`) served alone over its own rule's
    cost_bias grid (capped), its trained knob as the default point."""
    tasks, texts = [r.task for r in test.rows], [r.prompt for r in test.rows]
    default_b = float(getattr(router, "cost_bias", 0.0))
    biases = subsample_grid([*default_cost_biases(router), default_b], settings.points, keep=default_b)
    curve = {b: router_only(test, _FixedBiasRouter(router, tasks, texts, b)) for b in biases}
    return SystemRun(
        name, curve[default_b], outcomes_of(list(curve.values())),
        f"ablation: a router trained with the {getattr(router.meta, 'hyper', {}).get('objective', '?')!r} "
        f"objective and {router.rule!r} rule, served alone",
        {"cost_bias": default_b, "rule": router.rule},
    )


def warm_cascade_cache(config: EnsembleConfig, estimator: Any, view: MatrixView) -> None:
    """Embed the test queries and answers in batch before the per-query replay, so the
    estimator's per-call encodes are cache hits (same encoder instance)."""
    if estimator is None:
        return
    texts = estimator._queries([r.prompt for r in view.rows])
    for r in view.rows:
        for o in r.outcomes.values():
            texts.append(_text(o.response))
    enc = estimator.encoder
    uniq = list(dict.fromkeys(texts))
    enc.encode(uniq)
