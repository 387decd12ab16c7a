"""The runtime policy: router decision -> tier call -> uncertainty -> threshold -> accept or
escalate, within the task's latency SLA.

One `Cascade` object serves HTTP requests, replays labelled test splits (with replay tiers)
and drives the closed loop, so what is evaluated is exactly what is served.

SLA rules (all use each tier's expected latency = its p50):
  * latency profile, most specific first: the `latency` mapping given to the constructor,
    the tier config's `latency_p50_ms`, this Cascade's own observed running median (after
    `MIN_OBSERVED` calls), the store's profile (`store.latency_profile(tier, task)`);
    unknown -> the tier is never skipped for latency.
  * skip: a non-top tier whose p50 exceeds the remaining budget (sla_ms - elapsed) is
    skipped when some later tier may still fit (p50 unknown or <= remaining); when nothing
    later fits either, skipping would buy nothing, so the cheaper tier runs.
  * start higher: with a router decision, at start tier k with escalation probability
    p_esc(k) (router mass on the serving tiers above k), if
    p50(k) + p_esc(k) * p50(k+1) > sla_ms while p50(k+1) <= sla_ms, start at k+1 instead
    (repeated upward). The expected cost of the likely escalation path is what blows the
    SLA, so paying for the next tier directly is the better bet.
Escalation ladder (`ladder=`): the tiers a request may climb, cheapest first; the last
rung is the task's top and accepts unconditionally.
  * "frontier" (default when the router exposes `ladder(task)`): the tiers on the task's
    train cost-quality frontier (a tier both pricier and not better on the training matrix
    than another serving tier is dropped). Climbing through dominated tiers only pays for
    answers that are no better, and where the priciest tier is not the best (public
    routing matrices), ending at it serves a worse answer at the highest price.
  * "all": every serving tier in config (cost) order, the top being the most expensive.
    Used when no router / no frontier is available (the router does not know the task).
  The router's chosen tier is on its ladder (the success rule picks among the frontier);
  when it is not (label rule, another tier list), the request starts at the cheapest ladder
  tier at or above it in cost, or the ladder's top when none is.
Latency of a request = sum of the attempted tiers' `Generation.latency_s` (replay tiers give
recorded latency); router/cascade overhead is reported separately as `overhead_ms`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from routenlp.config import EnsembleConfig, TaskConfig
from routenlp.conformal.estimator import QualityEstimator
from routenlp.conformal.online import OnlineThresholds
from routenlp.conformal.scores import uncertainty_of
from routenlp.conformal.thresholds import Thresholds
from routenlp.errors import ConfigError, RouteNLPError, TierError
from routenlp.tiers.base import Generation, Request, Tier

MIN_OBSERVED = 5
OBSERVED_WINDOW = 256
STORE_PROFILE_TTL_S = 60.0

RequestBuilder = Callable[[TaskConfig, str, str | None], Request]
LadderMode = Literal["frontier", "all"]


class _Router(Protocol):
    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Any: ...


class _LatencyStore(Protocol):
    def latency_profile(self, tier: str, task: str | None = None) -> tuple[float, float] | None: ...


@dataclass
class CascadeResult:
    """The accepted answer and the routing record of one request."""

    generation: Generation
    tier: str
    steps: list[dict[str, Any]]
    total_cost: float
    latency_ms: float
    sla_ms: float
    sla_met: bool
    escalated: bool
    task: str = ""
    id: str | None = None
    start_tier: str | None = None
    router_tier: str | None = None
    p_escalate: float | None = None
    overhead_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    ladder: list[str] = field(default_factory=list)
    ladder_mode: str = "all"

    @property
    def quality(self) -> float | None:
        return self.generation.quality

    def to_record(self) -> dict[str, Any]:
        """JSON-ready routing record for the store and the HTTP response."""
        return {
            "id": self.id,
            "task": self.task,
            "tier": self.tier,
            "start_tier": self.start_tier,
            "router_tier": self.router_tier,
            "p_escalate": self.p_escalate,
            "steps": [dict(s) for s in self.steps],
            "tiers_tried": [s["tier"] for s in self.steps if s.get("skipped_reason") is None],
            "total_cost": self.total_cost,
            "latency_ms": self.latency_ms,
            "overhead_ms": self.overhead_ms,
            "sla_ms": self.sla_ms,
            "sla_met": self.sla_met,
            "escalated": self.escalated,
            "ladder": list(self.ladder),
            "ladder_mode": self.ladder_mode,
            "output": self.generation.text,
            "quality": self.generation.quality,
            "usage": {
                "tokens_in": self.generation.usage.tokens_in,
                "tokens_out": self.generation.usage.tokens_out,
            },
            **({"meta": self.meta} if self.meta else {}),
        }


def _step(tier: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tier": tier,
        "u": None,
        "threshold": None,
        "accepted": False,
        "latency_ms": 0.0,
        "cost": 0.0,
        "error": None,
        "skipped_reason": None,
    }
    base.update(kw)
    return base


def default_request_builder() -> RequestBuilder:
    """Requests rendered by the task registry (prompt template per task kind)."""
    from routenlp.tasks import get_task_spec

    specs: dict[str, Any] = {}
    lock = threading.Lock()

    def build(task_cfg: TaskConfig, query: str, id: str | None) -> Request:
        with lock:
            spec = specs.get(task_cfg.name)
            if spec is None:
                spec = specs[task_cfg.name] = get_task_spec(task_cfg)
        return spec.build_request(query, id=id)

    return build


class Cascade:
    """Router -> tier -> uncertainty -> accept or escalate, SLA-aware. Thread-safe."""

    def __init__(
        self,
        config: EnsembleConfig,
        tiers: Mapping[str, Tier],
        *,
        router: _Router | None = None,
        thresholds: Thresholds,
        latency: Mapping[str, float | tuple[float, float]] | None = None,
        sla_aware: bool = True,
        store: _LatencyStore | None = None,
        online: OnlineThresholds | None = None,
        estimator: QualityEstimator | None = None,
        request_builder: RequestBuilder | None = None,
        ladder: LadderMode | None = None,
    ) -> None:
        if ladder not in (None, "frontier", "all"):
            raise ConfigError(f"cascade: ladder must be 'frontier' or 'all', got {ladder!r}")
        has_frontier = router is not None and callable(getattr(router, "ladder", None))
        if ladder == "frontier" and not has_frontier:
            raise ConfigError(
                "cascade: ladder='frontier' needs a router exposing ladder(task) (the per-task "
                "train cost-quality frontier)",
                hint="pass the trained router, or use ladder='all'",
            )
        missing = [t for t in config.tier_names if t not in tiers]
        if missing:
            raise ConfigError(
                f"cascade: no tier object for configured tier(s) {missing}; "
                f"given: {sorted(tiers)}"
            )
        needs_est = sorted(
            {f"{t}/{k}" for t, k, e in thresholds.pairs() if e.signal == "estimator"}
            | {
                f"*/{t.name}"
                for t in config.tiers
                if t.uncertainty == "estimator" and t.name != config.tier_names[-1]
            }
        )
        if needs_est and estimator is None:
            raise ConfigError(
                f"cascade: thresholds/tiers use the learned quality estimator ({needs_est[:4]}) "
                "but no estimator was given",
                hint="load it with QualityEstimator.load(DIR) and pass estimator=...",
            )
        self.config = config
        self.tiers = dict(tiers)
        self.router = router
        self.thresholds = thresholds
        self.online = online
        self.estimator = estimator
        self.sla_aware = sla_aware
        self.ladder_mode: LadderMode = ladder or ("frontier" if has_frontier else "all")
        self.store = store
        self._latency: dict[str, float] = {}
        for name, prof in (latency or {}).items():
            self._latency[name] = float(prof[0] if isinstance(prof, tuple | list) else prof)
        self._builder = request_builder
        self._lock = threading.Lock()
        self._observed: dict[str, deque[float]] = {}
        self._store_cache: dict[tuple[str, str], tuple[float, float | None]] = {}

    # -- latency profiles --------------------------------------------------------------
    def expected_ms(self, tier: str, task: str | None = None) -> float | None:
        """Expected (p50) latency of a tier in ms, or None if unknown."""
        if tier in self._latency:
            return self._latency[tier]
        cfg = self.config.tier(tier)
        if cfg.latency_p50_ms is not None:
            return float(cfg.latency_p50_ms)
        with self._lock:
            obs = self._observed.get(tier)
            if obs is not None and len(obs) >= MIN_OBSERVED:
                return float(statistics.median(obs))
        if self.store is not None:
            return self._store_p50(tier, task)
        return None

    def _store_p50(self, tier: str, task: str | None) -> float | None:
        key = (tier, task or "")
        now = time.monotonic()
        with self._lock:
            hit = self._store_cache.get(key)
            if hit is not None and now - hit[0] < STORE_PROFILE_TTL_S:
                return hit[1]
        assert self.store is not None
        try:
            prof = self.store.latency_profile(tier, task)
        except RouteNLPError:
            prof = None
        p50 = None if prof is None else float(prof[0])
        with self._lock:
            self._store_cache[key] = (now, p50)
        return p50

    def _observe(self, tier: str, ms: float) -> None:
        with self._lock:
            self._observed.setdefault(tier, deque(maxlen=OBSERVED_WINDOW)).append(ms)

    # -- policy --------------------------------------------------------------------------
    def ladder_for(self, task: str) -> tuple[list[str], LadderMode]:
        """The task's escalation ladder (cheapest first; the last tier accepts
        unconditionally) and the mode it came from ("all" when the frontier is unknown)."""
        serving = [t.name for t in self.config.tiers_for(task)]
        if self.ladder_mode == "frontier" and self.router is not None:
            frontier = set(self.router.ladder(task))  # type: ignore[attr-defined]
            rungs = [t for t in serving if t in frontier]
            if rungs:
                return rungs, "frontier"
        return serving, "all"

    def _delta(self, task: str, tier: str) -> float | None:
        if self.online is not None and self.online.has(task, tier):
            return self.online.delta(task, tier)
        return self.thresholds.delta(task, tier)

    def _request(self, task_cfg: TaskConfig, query: str, id: str | None) -> Request:
        if self._builder is None:
            built = default_request_builder()
            with self._lock:
                if self._builder is None:
                    self._builder = built
        assert self._builder is not None
        return self._builder(task_cfg, query, id)

    def _call(self, tier: Tier, request: Request) -> tuple[Generation, float]:
        t0 = time.perf_counter()
        try:
            gen = tier.generate(request)
        except Exception as err:  # a tier must not raise; if one does, escalate anyway
            gen = Generation(text="", error=f"{type(err).__name__}: {err}")
        wall_ms = (time.perf_counter() - t0) * 1000.0
        lat_ms = gen.latency_s * 1000.0 if gen.latency_s and gen.latency_s > 0 else wall_ms
        if gen.ok and not gen.text.strip() and gen.quality is None:
            gen.error = "empty answer"
        return gen, lat_ms

    def _at_or_above(self, ladder: list[str], tier: str) -> int:
        """Index of the cheapest ladder tier at or above `tier` in cost order (the top when
        none is; the cheapest when `tier` is not configured at all)."""
        if tier in ladder:
            return ladder.index(tier)
        order = self.config.tier_names
        pos = order.index(tier) if tier in order else 0
        for i, name in enumerate(ladder):
            if order.index(name) >= pos:
                return i
        return len(ladder) - 1

    def _start(
        self, task: str, query: str, ladder: list[str], start_tier: str | None
    ) -> tuple[int, str | None, dict[str, float] | None, float | None]:
        if start_tier is not None:
            serving = [t.name for t in self.config.tiers_for(task)]
            if start_tier not in serving:
                raise ConfigError(
                    f"start tier {start_tier!r} does not serve task {task!r}; "
                    f"serving tiers: {serving}"
                )
            return self._at_or_above(ladder, start_tier), None, None, None
        if self.router is None:
            return 0, None, None, None
        dec = self.router.decide(task, query)
        probs = {str(k): float(v) for k, v in (getattr(dec, "probs", None) or {}).items()}
        p_esc = getattr(dec, "p_escalate", None)
        # off-ladder choice (label rule, a router trained on another tier list): start at
        # the cheapest ladder tier at or above it
        return self._at_or_above(ladder, dec.tier), dec.tier, probs, p_esc

    def run(
        self, task: str, query: str, *, id: str | None = None, start_tier: str | None = None
    ) -> CascadeResult:
        """Serve one query; raises TierError only when the top tier fails too."""
        t_begin = time.perf_counter()
        task_cfg = self.config.task(task)
        serving, ladder_mode = self.ladder_for(task)  # the escalation ladder, cheapest first
        i, router_tier, probs, p_esc = self._start(task, query, serving, start_tier)
        sla = float(task_cfg.sla_ms)
        steps: list[dict[str, Any]] = []

        if self.sla_aware and probs is not None:
            while i < len(serving) - 1:
                k, nxt = serving[i], serving[i + 1]
                pk, pn = self.expected_ms(k, task), self.expected_ms(nxt, task)
                if pk is None or pn is None:
                    break
                pe = sum(probs.get(t, 0.0) for t in serving[i + 1 :])
                expected = pk + pe * pn
                if expected <= sla or pn > sla:
                    break
                steps.append(
                    _step(
                        k,
                        skipped_reason=f"start higher: p50 {pk:.0f} ms + p_escalate {pe:.2f} x "
                        f"{nxt} p50 {pn:.0f} ms = {expected:.0f} ms > SLA {sla:.0f} ms",
                    )
                )
                i += 1
        first = i

        elapsed = 0.0
        total_cost = 0.0
        accepted_gen: Generation | None = None
        accepted_tier: str | None = None
        for j in range(first, len(serving)):
            name = serving[j]
            is_top = j == len(serving) - 1
            tier_cfg = self.config.tier(name)
            if not is_top and self._delta(task, name) is None:
                # calibration found no threshold meeting alpha: calling the tier could only
                # add cost and latency before the escalation that must follow
                steps.append(_step(name, skipped_reason="never accepts: no calibrated threshold"))
                continue
            if self.sla_aware and not is_top:
                exp = self.expected_ms(name, task)
                remaining = sla - elapsed
                if exp is not None and exp > remaining:
                    later = [self.expected_ms(t, task) for t in serving[j + 1 :]]
                    if any(x is None or x <= remaining for x in later):
                        steps.append(
                            _step(
                                name,
                                skipped_reason=f"p50 {exp:.0f} ms > remaining budget "
                                f"{remaining:.0f} ms",
                            )
                        )
                        continue
            gen, lat_ms = self._call(self.tiers[name], self._request(task_cfg, query, id))
            elapsed += lat_ms
            cost = float(gen.cost or 0.0)
            total_cost += cost
            self._observe(name, lat_ms)
            if not gen.ok:
                steps.append(_step(name, latency_ms=lat_ms, cost=cost, error=gen.error))
                if is_top:
                    tried = "; ".join(
                        f"{s['tier']}: "
                        + (
                            f"error {s['error']}"
                            if s["error"]
                            else s["skipped_reason"] or f"rejected (u={s['u']})"
                        )
                        for s in steps
                    )
                    err = TierError(
                        f"task {task!r}: the top tier {name!r} failed ({gen.error}); "
                        f"no answer can be served. Tiers tried: {tried}",
                        hint="check the top tier's endpoint/model (routenlp bench tiers)",
                    )
                    err.steps = steps  # type: ignore[attr-defined]
                    raise err
                continue
            sig = "estimator" if self.thresholds.signal(task, name) == "estimator" else None
            try:
                u = uncertainty_of(gen, tier_cfg, query=query, estimator=self.estimator, signal=sig)
            except RouteNLPError:
                if not is_top:
                    raise
                u = None  # the top tier accepts regardless; u is only informative there
            delta = None if is_top else self._delta(task, name)
            accepted = is_top or (u is not None and delta is not None and u <= delta)
            steps.append(
                _step(name, u=u, threshold=delta, accepted=accepted, latency_ms=lat_ms, cost=cost)
            )
            if accepted:
                accepted_gen, accepted_tier = gen, name
                break
        assert accepted_gen is not None and accepted_tier is not None
        attempted = [s for s in steps if s["skipped_reason"] is None]
        tier_ms = sum(s["latency_ms"] for s in attempted)
        overhead = (time.perf_counter() - t_begin) * 1000.0 - tier_ms
        return CascadeResult(
            generation=accepted_gen,
            tier=accepted_tier,
            steps=steps,
            total_cost=total_cost,
            latency_ms=elapsed,
            sla_ms=sla,
            sla_met=elapsed <= sla,
            escalated=len(attempted) > 1,
            task=task,
            id=id,
            start_tier=serving[first],
            router_tier=router_tier,
            p_escalate=p_esc,
            overhead_ms=max(0.0, overhead),
            ladder=list(serving),
            ladder_mode=ladder_mode,
        )

    # -- feedback ------------------------------------------------------------------------
    def feedback(self, record: CascadeResult | Mapping[str, Any], quality: float) -> int:
        """Audited quality of a served answer -> online threshold updates.

        Every attempted non-top step of the request (top = the last rung of the request's
        ladder, which accepts unconditionally) is one ACI step for its (task, tier): err = 1
        iff that tier accepted the answer and quality < tau. Returns the number of updates
        made (0 without online adaptation).
        """
        if self.online is None:
            return 0
        rec = record.to_record() if isinstance(record, CascadeResult) else record
        task = str(rec["task"])
        tau = self.config.task(task).tau
        ladder = rec.get("ladder") or [t.name for t in self.config.tiers_for(task)]
        top = ladder[-1]
        bad = quality < tau
        n = 0
        for s in rec.get("steps", []):
            if s.get("skipped_reason") is not None or s["tier"] == top:
                continue
            if self.online.update(task, s["tier"], bool(s.get("accepted")) and bad) is not None:
                n += 1
        return n
