"""The runtime loop: router decision -> tier call -> uncertainty -> accept rule -> accept or
escalate, within the task's latency SLA.

The accept rule lives in `routenlp.conformal.policy`: by default the certified policy
(`policy=PolicyArtifact`: rung k accepts iff p_hat(u) <= lambda, one guarantee for the whole
served policy), or `thresholds=Thresholds` (`policy="per-tier"`: u <= delta per tier).

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
Skips before the call (unpaid): a rung the rule can never accept at (lambda <= 0, p_hat's
floor above lambda, no calibrated threshold), and a rung whose signal is query-only (the
learned estimator trained without answer features) when that signal rejects the query.
Start higher uses the rung's calibrated reject rate as p_esc when the rule has one.
Failures: a scoring error at a non-top rung escalates; when nothing is accepted (the top
failed), the best answer already produced is served flagged `degraded` (lowest p_hat, else
the priciest), else the next serving tier off the ladder; only when no tier produced an
answer does `TierError` list every tier.
Latency of a request = sum of the attempted tiers' `Generation.latency_s` (replay tiers give
recorded latency); router/cascade overhead is reported separately as `overhead_ms`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from routenlp.config import EnsembleConfig, TaskConfig
from routenlp.conformal.certify import PolicyArtifact
from routenlp.conformal.estimator import QualityEstimator
from routenlp.conformal.online import OnlineLambda, OnlineThresholds
from routenlp.conformal.policy import AcceptRule, CertifiedRule, PerTierRule
from routenlp.conformal.scores import uncertainty_of
from routenlp.conformal.thresholds import Thresholds
from routenlp.errors import ConfigError, TierError
from routenlp.latency import MIN_OBSERVED, LatencyProfiles, LatencyStore
from routenlp.tiers.base import Generation, Request, Tier

__all__ = ["MIN_OBSERVED", "Cascade", "CascadeResult", "default_request_builder"]

RequestBuilder = Callable[[TaskConfig, str, str | None], Request]
LadderMode = Literal["frontier", "all"]


class _Router(Protocol):
    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Any: ...


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
    degraded: bool = False
    policy: str = "per-tier"

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
            "degraded": self.degraded,
            "policy": self.policy,
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



def _tried_summary(steps: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{s['tier']}: "
        + (f"error {s['error']}" if s["error"] else s["skipped_reason"] or f"rejected (u={s['u']})")
        for s in steps
    )


class Cascade:
    """Router -> tier -> uncertainty -> accept or escalate, SLA-aware. Thread-safe."""

    def __init__(
        self,
        config: EnsembleConfig,
        tiers: Mapping[str, Tier],
        *,
        router: _Router | None = None,
        thresholds: Thresholds | None = None,
        policy: PolicyArtifact | Literal["per-tier", "certified"] | None = None,
        latency: Mapping[str, float | tuple[float, float]] | None = None,
        sla_aware: bool = True,
        store: LatencyStore | None = None,
        online: OnlineThresholds | OnlineLambda | bool | None = None,
        estimator: QualityEstimator | None = None,
        request_builder: RequestBuilder | None = None,
        ladder: LadderMode | None = None,
    ) -> None:
        """`policy`: a certified PolicyArtifact (default when `cascade.policy` is set in the
        config), or "per-tier" with `thresholds`. `online`: an OnlineThresholds (per-tier)
        or OnlineLambda (certified); None builds an OnlineLambda from `cascade.online` for a
        certified policy; False disables online updates (offline replay)."""
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
        self.rule: AcceptRule = self._rule(config, thresholds, policy, online)
        needs_est = sorted(
            set(self.rule.estimator_pairs())
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
        self.policy = self.rule.kind
        self.online = getattr(self.rule, "online", None)
        self.estimator = estimator
        self.sla_aware = sla_aware
        self.ladder_mode: LadderMode = ladder or ("frontier" if has_frontier else "all")
        self.store = store
        self.latency = LatencyProfiles(config, latency, store)
        self._builder = request_builder
        self._lock = threading.Lock()

    @staticmethod
    def _rule(
        config: EnsembleConfig,
        thresholds: Thresholds | None,
        policy: PolicyArtifact | str | None,
        online: OnlineThresholds | OnlineLambda | bool | None,
    ) -> AcceptRule:
        if policy is None and thresholds is None:
            if config.cascade.policy:
                policy = PolicyArtifact.load(config.cascade.policy)
            elif config.cascade.thresholds:
                thresholds = Thresholds.load(config.cascade.thresholds)
            else:
                raise ConfigError(
                    "cascade: no accept policy: pass policy=PolicyArtifact (routenlp calibrate "
                    "--policy certified) or thresholds=Thresholds (--policy per-tier)",
                    hint="or set cascade.policy / cascade.thresholds in the config",
                )
        if isinstance(policy, PolicyArtifact):
            if online is None and config.cascade.online:
                online = OnlineLambda.from_artifact(
                    policy, gamma=config.cascade.gamma, path=config.cascade.online_state
                )
            if online is not None and not isinstance(online, OnlineLambda | bool):
                raise ConfigError("cascade: a certified policy adapts online with OnlineLambda")
            return CertifiedRule(policy, online if isinstance(online, OnlineLambda) else None)
        if policy not in (None, "per-tier"):
            raise ConfigError(
                f"cascade: policy must be a PolicyArtifact or 'per-tier', got {policy!r}"
            )
        if thresholds is None:
            raise ConfigError("cascade: policy='per-tier' needs thresholds=Thresholds")
        if online is not None and not isinstance(online, OnlineThresholds | bool):
            raise ConfigError("cascade: the per-tier policy adapts online with OnlineThresholds")
        return PerTierRule(thresholds, online if isinstance(online, OnlineThresholds) else None)

    def expected_ms(self, tier: str, task: str | None = None) -> float | None:
        """Expected (p50) latency of a tier in ms, or None if unknown."""
        return self.latency.expected_ms(tier, task)

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
        self.latency.observe(tier.name, lat_ms)
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
        b = self.rule.cost_bias(task)
        dec = self.router.decide(task, query) if b is None else self.router.decide(task, query, cost_bias=b)
        probs = {str(k): float(v) for k, v in (getattr(dec, "probs", None) or {}).items()}
        p_esc = getattr(dec, "p_escalate", None)
        # off-ladder choice (label rule, a router trained on another tier list): start at
        # the cheapest ladder tier at or above it
        return self._at_or_above(ladder, dec.tier), dec.tier, probs, p_esc

    def _start_higher(
        self, task: str, serving: list[str], i: int, probs: dict[str, float], sla: float,
        steps: list[dict[str, Any]],
    ) -> int:
        """Move the start up while p50(k) + p_esc(k) * p50(k+1) > SLA and k+1 fits; p_esc is
        the rung's calibrated reject rate, else the router's mass above k."""
        while i < len(serving) - 1:
            k, nxt = serving[i], serving[i + 1]
            pk, pn = self.expected_ms(k, task), self.expected_ms(nxt, task)
            if pk is None or pn is None:
                break
            rej = self.rule.reject_rate(task, k)
            pe = rej if rej is not None else sum(probs.get(t, 0.0) for t in serving[i + 1 :])
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
        return i

    def _query_only_u(self, task: str, tier: str, query: str) -> tuple[bool, float | None]:
        """(True, u) when the rung's signal is the estimator without answer features: its u
        is known before the call, so a rejection costs nothing."""
        est = self.estimator
        uses_est = self.rule.signal(task, tier) == "estimator" or self.config.tier(tier).uncertainty == "estimator"
        if est is None or not uses_est or not est.has_tier(tier) or not est.answer_free(tier):
            return False, None
        try:
            return True, est.uncertainty(tier, [query], [""])[0]
        except Exception:  # noqa: BLE001 - a scoring failure means: cannot decide early
            return False, None

    def _score(self, task: str, name: str, gen: Generation, query: str) -> float | None:
        tier_cfg = self.config.tier(name)
        sig = self.rule.signal(task, name)
        return uncertainty_of(
            gen, tier_cfg, query=query, estimator=self.estimator,
            signal="estimator" if sig == "estimator" else None,
            calibrated_on="recorded" if sig == "recorded" else None,
        )

    def run(
        self, task: str, query: str, *, id: str | None = None, start_tier: str | None = None
    ) -> CascadeResult:
        """Serve one query; raises TierError only when no tier produced an answer."""
        t_begin = time.perf_counter()
        task_cfg = self.config.task(task)
        serving, ladder_mode = self.ladder_for(task)  # the escalation ladder, cheapest first
        i, router_tier, probs, p_esc = self._start(task, query, serving, start_tier)
        sla = float(task_cfg.sla_ms)
        steps: list[dict[str, Any]] = []
        if self.sla_aware and probs is not None:
            i = self._start_higher(task, serving, i, probs, sla, steps)
        first = i

        elapsed = total_cost = 0.0
        accepted_gen: Generation | None = None
        accepted_tier: str | None = None
        produced: list[tuple[float, int, str, Generation]] = []  # (p_hat or 1, order, tier, gen)
        for j in range(first, len(serving)):
            name = serving[j]
            is_top = j == len(serving) - 1
            pre_known, pre_u = False, None
            if not is_top:
                why = self.rule.never_reason(task, name)
                if why is not None:
                    # calling the tier could only add cost and latency before the escalation
                    steps.append(_step(name, skipped_reason=why))
                    continue
                if self.sla_aware and self._sla_skip(task, name, serving[j + 1 :], sla - elapsed, steps):
                    continue
                pre_known, pre_u = self._query_only_u(task, name, query)
                if pre_known and not self.rule.accepts(task, name, pre_u):
                    steps.append(_step(name, u=pre_u, threshold=self.rule.level(task, name),
                                       skipped_reason="query-only signal rejects before the call"))
                    continue
            gen, lat_ms = self._call(self.tiers[name], self._request(task_cfg, query, id))
            elapsed += lat_ms
            cost = float(gen.cost or 0.0)
            total_cost += cost
            if not gen.ok:
                steps.append(_step(name, latency_ms=lat_ms, cost=cost, error=gen.error))
                continue
            u, err = pre_u, None
            if not pre_known:
                try:
                    u = self._score(task, name, gen, query)
                except Exception as exc:  # noqa: BLE001 - a scoring error escalates
                    u = None  # the top accepts regardless; u is only informative there
                    err = None if is_top else f"scoring failed: {type(exc).__name__}: {exc}"
            level = None if is_top else self.rule.level(task, name)
            accepted = is_top or (err is None and self.rule.accepts(task, name, u))
            steps.append(_step(name, u=u, threshold=level, accepted=accepted, latency_ms=lat_ms,
                               cost=cost, error=err))
            if accepted:
                accepted_gen, accepted_tier = gen, name
                break
            rank = self._risk_rank(task, name, u)
            produced.append((rank, -j, name, gen))
        degraded = False
        if accepted_gen is None:
            degraded = True
            if produced:
                _, _, accepted_tier, accepted_gen = min(produced, key=lambda x: (x[0], x[1]))
            else:
                got = self._off_ladder(task, task_cfg, query, id, serving, steps)
                if got is None:
                    err = TierError(
                        f"task {task!r}: no tier produced an answer; the top tier "
                        f"{serving[-1]!r} failed too. Tiers tried: {_tried_summary(steps)}",
                        hint="check the tiers' endpoints/models (routenlp bench tiers)",
                    )
                    err.steps = steps  # type: ignore[attr-defined]
                    raise err
                accepted_tier, accepted_gen, lat, c = got
                elapsed += lat
                total_cost += c
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
            degraded=degraded,
            policy=self.rule.kind,
        )

    def _sla_skip(
        self, task: str, name: str, later: list[str], remaining: float, steps: list[dict[str, Any]]
    ) -> bool:
        """Skip a non-top rung whose p50 exceeds the remaining budget when a later one fits."""
        exp = self.expected_ms(name, task)
        if exp is None or exp <= remaining:
            return False
        lat = [self.expected_ms(t, task) for t in later]
        if not any(x is None or x <= remaining for x in lat):
            return False  # nothing later fits either: skipping buys nothing
        steps.append(
            _step(name, skipped_reason=f"p50 {exp:.0f} ms > remaining budget {remaining:.0f} ms")
        )
        return True

    def _risk_rank(self, task: str, tier: str, u: float | None) -> float:
        """How risky a rejected answer is, for the degraded fallback (lower = better)."""
        if isinstance(self.rule, CertifiedRule):
            return self.rule.artifact.p_hat(task, tier, u)
        return 1.0  # per-tier: no common scale; the priciest produced answer wins the tie

    def _off_ladder(
        self, task: str, task_cfg: TaskConfig, query: str, id: str | None, ladder: list[str],
        steps: list[dict[str, Any]],
    ) -> tuple[str, Generation, float, float] | None:
        """The next serving tiers off the ladder (pricier than the top first, then the
        cheaper ones from the top down), until one answers."""
        order = [t.name for t in self.config.tiers_for(task)]
        top = order.index(ladder[-1]) if ladder[-1] in order else len(order) - 1
        off = [t for t in order[top + 1 :] + order[:top][::-1] if t not in ladder]
        for name in off:
            gen, lat_ms = self._call(self.tiers[name], self._request(task_cfg, query, id))
            cost = float(gen.cost or 0.0)
            ok = gen.ok
            steps.append(_step(name, accepted=ok, latency_ms=lat_ms, cost=cost,
                               error=None if ok else gen.error, off_ladder=True))
            if ok:
                return name, gen, lat_ms, cost
        return None

    # -- feedback ------------------------------------------------------------------------
    def feedback(
        self, record: CascadeResult | Mapping[str, Any], quality: float, *,
        top_quality: float | None = None,
    ) -> int:
        """Audited quality of a served answer -> online updates; returns how many were made.

        Certified policy: one ACI step on the task's lambda with the served answer's regret vs
        the ladder top (`top_quality` when the audit scored the top too). Per-tier: one step
        per attempted non-top rung (err = accepted and quality < tau)."""
        rec = record.to_record() if isinstance(record, CascadeResult) else record
        task = str(rec["task"])
        ladder = rec.get("ladder") or [t.name for t in self.config.tiers_for(task)]
        return self.rule.feedback(rec, quality, self.config.task(task).tau, ladder[-1], top_quality)
