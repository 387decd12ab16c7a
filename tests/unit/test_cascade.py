"""The runtime Cascade with scripted tiers and a fake router."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from routenlp.cascade import Cascade, CascadeResult
from routenlp.config import EnsembleConfig, TierConfig, parse_config
from routenlp.conformal.online import OnlineThresholds
from routenlp.conformal.thresholds import ThresholdEntry, Thresholds
from routenlp.errors import ConfigError, TierError
from routenlp.tiers.base import Generation, Request, Tier, Usage


def gen(u: float | None, *, cost: float = 0.01, latency_s: float = 0.1, text: str = "ans", **kw: Any) -> Generation:
    return Generation(text=text, uncertainty=u, cost=cost, latency_s=latency_s, usage=Usage(10, 2), **kw)


class ScriptedTier:
    """Implements the Tier protocol; returns a scripted Generation per call."""

    def __init__(self, config: TierConfig, script: Callable[[Request], Generation] | Generation) -> None:
        self.config = config
        self._script = script
        self.calls: list[Request] = []

    @property
    def name(self) -> str:
        return self.config.name

    def generate(self, request: Request) -> Generation:
        self.calls.append(request)
        s = self._script
        g = s(request) if callable(s) else s
        return Generation(**{**g.__dict__, "meta": dict(g.meta)})

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        return None


@dataclass
class Decision:
    tier: str
    index: int
    probs: dict[str, float] = field(default_factory=dict)
    p_escalate: float = 0.0


class FakeRouter:
    def __init__(self, tier: str, probs: dict[str, float] | None = None) -> None:
        self.tier, self.probs = tier, probs or {tier: 1.0}
        self.calls = 0

    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Decision:
        self.calls += 1
        order = ["T1", "T2", "T3"]
        i = order.index(self.tier)
        return Decision(self.tier, i, self.probs, sum(self.probs.get(t, 0) for t in order[i + 1 :]))


@pytest.fixture
def config() -> EnsembleConfig:
    return parse_config(
        {
            "tiers": [
                {"name": "T1", "kind": "replay", "price_in": 0.01, "price_out": 0.01},
                {"name": "T2", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
                {"name": "T3", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
            ],
            "tasks": [{"name": "qa", "tau": 0.5, "sla_ms": 1000}],
        }
    )


def thresholds(d1: float | None = 0.3, d2: float | None = 0.3) -> Thresholds:
    return Thresholds(
        alpha=0.05,
        created_at=1.0,
        thresholds={
            "qa": {
                "T1": ThresholdEntry(delta=d1, n=500, u_lo=0.0, u_hi=1.0),
                "T2": ThresholdEntry(delta=d2, n=500, u_lo=0.0, u_hi=1.0),
            }
        },
    )


def tiers(config: EnsembleConfig, **scripts: Any) -> dict[str, Tier]:
    return {t.name: ScriptedTier(t, scripts.get(t.name, gen(0.0))) for t in config.tiers}


def test_escalation_path_cost_and_latency(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.5, cost=0.001, latency_s=0.05), T2=gen(0.2, cost=0.01, latency_s=0.2))
    res = Cascade(config, ts, thresholds=thresholds()).run("qa", "what?", id="q1")
    assert res.tier == "T2" and res.escalated
    assert [s["tier"] for s in res.steps] == ["T1", "T2"]
    assert [s["accepted"] for s in res.steps] == [False, True]
    assert res.steps[0]["u"] == 0.5 and res.steps[0]["threshold"] == 0.3
    assert res.total_cost == pytest.approx(0.011)
    assert res.latency_ms == pytest.approx(250.0)
    assert res.sla_met and res.sla_ms == 1000
    assert ts["T3"].calls == []  # type: ignore[attr-defined]
    # the request was built by the task registry and carries the id
    req = ts["T1"].calls[0]  # type: ignore[attr-defined]
    assert req.id == "q1" and "what?" in req.prompt
    rec = res.to_record()
    json.dumps(rec)
    assert rec["tiers_tried"] == ["T1", "T2"] and rec["output"] == "ans"


def test_accept_at_router_tier(config: EnsembleConfig) -> None:
    ts = tiers(config, T2=gen(0.1))
    router = FakeRouter("T2")
    res = Cascade(config, ts, router=router, thresholds=thresholds()).run("qa", "q")
    assert res.tier == "T2" and not res.escalated
    assert res.router_tier == "T2" and res.start_tier == "T2"
    assert ts["T1"].calls == []  # type: ignore[attr-defined]
    assert router.calls == 1


def test_top_tier_accepts_regardless_of_u(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.9), T2=gen(0.9), T3=gen(0.99))
    res = Cascade(config, ts, thresholds=thresholds()).run("qa", "q")
    assert res.tier == "T3" and res.steps[-1]["accepted"] and res.steps[-1]["threshold"] is None
    assert res.total_cost == pytest.approx(0.03)


def test_never_accept_tier_is_skipped_unpaid_and_missing_signal(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.0, cost=0.5), T2=gen(None))
    res = Cascade(config, ts, thresholds=thresholds(d1=None)).run("qa", "q")
    assert res.tier == "T3"
    # T1 has no calibrated threshold: it is never called, so it costs nothing
    assert res.steps[0]["skipped_reason"].startswith("never accepts")
    assert ts["T1"].calls == []  # type: ignore[attr-defined]
    assert res.total_cost == pytest.approx(sum(s["cost"] or 0.0 for s in res.steps[1:]))
    assert res.total_cost < 0.5
    assert res.steps[1]["u"] is None and not res.steps[1]["accepted"]


def test_sla_skip(config: EnsembleConfig) -> None:
    ts = tiers(config, T2=gen(0.1))
    casc = Cascade(config, ts, thresholds=thresholds(), latency={"T1": 2000.0, "T2": (300.0, 900.0), "T3": 500.0})
    res = casc.run("qa", "q")
    assert res.tier == "T2"
    assert res.steps[0]["tier"] == "T1" and "remaining budget" in res.steps[0]["skipped_reason"]
    assert ts["T1"].calls == []  # type: ignore[attr-defined]
    assert res.to_record()["tiers_tried"] == ["T2"] and not res.escalated
    # nothing later fits either: skipping buys nothing, so the cheap tier still runs
    slow = Cascade(config, tiers(config), thresholds=thresholds(), latency={"T1": 2000.0, "T2": 3000.0, "T3": 4000.0})
    assert slow.run("qa", "q").tier == "T1"
    # sla_aware off: never skip
    off = Cascade(config, tiers(config), thresholds=thresholds(), latency={"T1": 2000.0}, sla_aware=False)
    assert off.run("qa", "q").tier == "T1"


def test_sla_skip_uses_elapsed_budget(config: EnsembleConfig) -> None:
    # T1 took 900 ms of the 1000 ms budget and was rejected; T2 (p50 300) no longer fits
    ts = tiers(config, T1=gen(0.9, latency_s=0.9), T2=gen(0.1), T3=gen(0.1, latency_s=0.05))
    casc = Cascade(config, ts, thresholds=thresholds(), latency={"T2": 300.0, "T3": 50.0})
    res = casc.run("qa", "q")
    assert [s["tier"] for s in res.steps] == ["T1", "T2", "T3"]
    assert res.steps[1]["skipped_reason"] and res.tier == "T3"
    assert res.latency_ms == pytest.approx(950.0) and res.sla_met


def test_start_higher_rule(config: EnsembleConfig) -> None:
    router = FakeRouter("T1", {"T1": 0.4, "T2": 0.5, "T3": 0.1})
    lat = {"T1": 600.0, "T2": 700.0, "T3": 900.0}
    ts = tiers(config, T2=gen(0.1))
    res = Cascade(config, ts, router=router, thresholds=thresholds(), latency=lat).run("qa", "q")
    # 600 + 0.6 * 700 = 1020 > 1000 and T2 alone fits -> start at T2; 700 + 0.1 * 900 fits
    assert res.start_tier == "T2" and res.router_tier == "T1"
    assert "start higher" in res.steps[0]["skipped_reason"]
    assert ts["T1"].calls == []  # type: ignore[attr-defined]
    # a confident router (low p_escalate) keeps the cheap start
    sure = FakeRouter("T1", {"T1": 0.95, "T2": 0.05})
    res2 = Cascade(config, tiers(config), router=sure, thresholds=thresholds(), latency=lat).run("qa", "q")
    assert res2.start_tier == "T1" and res2.tier == "T1"


def test_error_escalates(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=Generation(text="", error="HTTP 503", latency_s=0.02), T2=gen(0.1))
    res = Cascade(config, ts, thresholds=thresholds()).run("qa", "q")
    assert res.tier == "T2" and res.steps[0]["error"] == "HTTP 503"
    assert res.escalated


def test_raising_tier_and_empty_answer_escalate(config: EnsembleConfig) -> None:
    def boom(_: Request) -> Generation:
        raise RuntimeError("segfault-ish")

    ts = tiers(config, T1=boom, T2=gen(0.1, text="  "))
    res = Cascade(config, ts, thresholds=thresholds()).run("qa", "q")
    assert res.tier == "T3"
    assert "RuntimeError" in res.steps[0]["error"] and res.steps[1]["error"] == "empty answer"


def test_top_tier_failure_serves_the_best_produced_answer_degraded(config: EnsembleConfig) -> None:
    # issue 9: T1 produced an answer (rejected); the top fails -> serve T1's answer, degraded
    ts = tiers(config, T1=gen(0.9, text="t1"), T2=Generation(text="", error="timeout after 30s"), T3=Generation(text="", error="HTTP 500"))
    res = Cascade(config, ts, thresholds=thresholds()).run("qa", "q")
    assert res.tier == "T1" and res.generation.text == "t1" and res.degraded
    assert res.to_record()["degraded"] is True
    assert [s["error"] for s in res.steps] == [None, "timeout after 30s", "HTTP 500"]


def test_top_tier_error_is_a_clear_tier_error_when_nothing_was_produced(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=Generation(text="", error="HTTP 429"), T2=Generation(text="", error="timeout after 30s"), T3=Generation(text="", error="HTTP 500"))
    with pytest.raises(TierError) as info:
        Cascade(config, ts, thresholds=thresholds()).run("qa", "q")
    msg = str(info.value)
    assert "top tier 'T3' failed" in msg
    assert "T1: error HTTP 429" in msg and "T2: error timeout after 30s" in msg and "T3: error HTTP 500" in msg


def test_failing_top_falls_back_to_the_next_tier_off_the_ladder(config: EnsembleConfig) -> None:
    # ladder T1 -> T2 (T3 off the frontier); T1 fails, T2 (top) fails -> T3 answers, degraded
    ts = tiers(config, T1=Generation(text="", error="HTTP 503"), T2=Generation(text="", error="HTTP 500"), T3=gen(0.5, text="t3"))
    res = Cascade(config, ts, router=FrontierRouter("T1", ["T1", "T2"]), thresholds=thresholds()).run("qa", "q")
    assert res.tier == "T3" and res.degraded and res.steps[-1].get("off_ladder") is True
    assert res.total_cost == pytest.approx(0.01)  # the failed calls recorded no cost


def test_scoring_error_escalates(config: EnsembleConfig) -> None:
    class BadEstimator:
        def has_tier(self, tier: str) -> bool:
            return True

        def answer_free(self, tier: str) -> bool:
            return False

        def uncertainty(self, tier: str, q: list[str], a: list[str]) -> list[float]:
            raise RuntimeError("encoder OOM")

    th = thresholds()
    th.thresholds["qa"]["T1"].signal = "estimator"
    ts = tiers(config, T1=Generation(text="a", cost=0.01, usage=Usage(1, 1)), T2=gen(0.1))
    res = Cascade(config, ts, thresholds=th, estimator=BadEstimator()).run("qa", "q")  # type: ignore[arg-type]
    assert res.tier == "T2" and "scoring failed: RuntimeError: encoder OOM" in res.steps[0]["error"]


def test_start_tier_and_validation(config: EnsembleConfig) -> None:
    ts = tiers(config)
    casc = Cascade(config, ts, thresholds=thresholds())
    assert casc.run("qa", "q", start_tier="T3").tier == "T3"
    with pytest.raises(ConfigError, match="does not serve"):
        casc.run("qa", "q", start_tier="T9")
    with pytest.raises(ConfigError, match="no tier object"):
        Cascade(config, {"T1": ts["T1"]}, thresholds=thresholds())
    est_th = thresholds()
    est_th.thresholds["qa"]["T1"].signal = "estimator"
    with pytest.raises(ConfigError, match="estimator"):
        Cascade(config, ts, thresholds=est_th)


def test_latency_profiles_observed_and_store(config: EnsembleConfig) -> None:
    class Store:
        def __init__(self) -> None:
            self.calls = 0

        def latency_profile(self, tier: str, task: str | None = None) -> tuple[float, float] | None:
            self.calls += 1
            return (250.0, 400.0) if tier == "T2" else None

    store = Store()
    ts = tiers(config, T1=gen(0.0, latency_s=0.12))
    casc = Cascade(config, ts, thresholds=thresholds(), store=store)
    assert casc.expected_ms("T2", "qa") == 250.0
    assert casc.expected_ms("T2", "qa") == 250.0 and store.calls == 1  # cached
    assert casc.expected_ms("T1", "qa") is None
    for _ in range(5):
        casc.run("qa", "q")
    assert casc.expected_ms("T1", "qa") == pytest.approx(120.0)
    cfg_override = config.model_copy(deep=True)
    cfg_override.tiers[2].latency_p50_ms = 77.0
    assert Cascade(cfg_override, tiers(cfg_override), thresholds=thresholds()).expected_ms("T3") == 77.0


def test_online_feedback_moves_thresholds(config: EnsembleConfig) -> None:
    th = thresholds()
    online = OnlineThresholds(th, gamma=0.1)
    ts = tiers(config, T1=gen(0.2))
    casc = Cascade(config, ts, thresholds=th, online=online)
    res = casc.run("qa", "q")
    assert res.tier == "T1"
    assert casc.feedback(res, quality=0.0) == 1  # accepted but bad: err = 1
    assert online.delta("qa", "T1") == pytest.approx(0.3 + 0.1 * (0.05 - 1))
    # delta is now 0.3 - 0.095 = 0.205: an answer with u = 0.25 is no longer accepted at T1
    ts2 = tiers(config, T1=gen(0.25), T2=gen(0.1))
    casc2 = Cascade(config, ts2, thresholds=th, online=online)
    res2 = casc2.run("qa", "q")
    assert res2.tier == "T2"
    assert casc2.feedback(res2.to_record(), quality=1.0) == 2  # T1 rejected (0), T2 good (0)
    assert online.status()["pairs"]["qa"]["T1"]["steps"] == 2
    assert Cascade(config, ts2, thresholds=th).feedback(res2, quality=1.0) == 0


def test_thread_safe_concurrent_runs(config: EnsembleConfig) -> None:
    def by_query(req: Request) -> Generation:
        n = int(req.query)
        return gen(0.1 if n % 2 else 0.9, latency_s=0.001 * (n % 7 + 1))

    ts = tiers(config, T1=by_query, T2=gen(0.1))
    casc = Cascade(config, ts, thresholds=thresholds())
    with ThreadPoolExecutor(max_workers=8) as pool:
        results: list[CascadeResult] = list(pool.map(lambda i: casc.run("qa", str(i), id=str(i)), range(200)))
    for i, r in enumerate(results):
        assert r.id == str(i)
        assert r.tier == ("T1" if i % 2 else "T2")
        assert math.isclose(r.total_cost, 0.01 if i % 2 else 0.02)


class FrontierRouter(FakeRouter):
    """A FakeRouter that also exposes the per-task frontier ladder, like Router.ladder."""

    def __init__(self, tier: str, ladder: list[str]) -> None:
        super().__init__(tier)
        self._ladder = ladder

    def ladder(self, task: str) -> list[str]:
        return list(self._ladder)


def test_ladder_skips_a_dominated_tier(config: EnsembleConfig) -> None:
    # T2 is off the frontier (pricier than T1 and not better): T1 rejects -> straight to T3
    ts = tiers(config, T1=gen(0.9, cost=0.001), T2=gen(0.0, cost=0.01), T3=gen(0.5, cost=0.1))
    cas = Cascade(config, ts, router=FrontierRouter("T1", ["T1", "T3"]), thresholds=thresholds())
    res = cas.run("qa", "q")
    assert [s["tier"] for s in res.steps] == ["T1", "T3"]
    assert res.tier == "T3" and res.total_cost == pytest.approx(0.101)
    assert ts["T2"].calls == []  # type: ignore[attr-defined]
    rec = res.to_record()
    assert rec["ladder"] == ["T1", "T3"] and rec["ladder_mode"] == "frontier"
    # a router choice off the ladder starts at the cheapest ladder tier at or above it
    ts2 = tiers(config, T3=gen(0.5))
    cas2 = Cascade(config, ts2, router=FrontierRouter("T2", ["T1", "T3"]), thresholds=thresholds())
    res2 = cas2.run("qa", "q")
    assert res2.router_tier == "T2" and res2.start_tier == "T3"
    assert [s["tier"] for s in res2.steps] == ["T3"]


def test_ladder_top_accepts_unconditionally(config: EnsembleConfig) -> None:
    # the frontier ends at T2 (T3 pricier and not better): T2 is the top and accepts any u,
    # even with no threshold; the most expensive tier is never called
    ts = tiers(config, T1=gen(0.9, cost=0.001), T2=gen(0.99, cost=0.01))
    router = FrontierRouter("T1", ["T1", "T2"])
    cas = Cascade(config, ts, router=router, thresholds=thresholds(d2=None))
    res = cas.run("qa", "q")
    assert res.tier == "T2" and res.steps[-1]["accepted"] and res.steps[-1]["threshold"] is None
    assert ts["T3"].calls == []  # type: ignore[attr-defined]
    assert cas.ladder_for("qa") == (["T1", "T2"], "frontier")
    # one-rung ladder: the router's tier is the top, served without an uncertainty check
    one = Cascade(
        config, tiers(config, T2=gen(0.99)), router=FrontierRouter("T2", ["T2"]), thresholds=thresholds()
    )
    r1 = one.run("qa", "q")
    assert r1.tier == "T2" and not r1.escalated and r1.steps[0]["accepted"]


def test_ladder_fallback_without_frontier_is_all_tiers(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.9), T2=gen(0.9), T3=gen(0.99))
    # no router / a router without ladder(): every serving tier in cost order, as before
    for router in (None, FakeRouter("T1")):
        cas = Cascade(config, ts, router=router, thresholds=thresholds())
        res = cas.run("qa", "q")
        assert [s["tier"] for s in res.steps] == ["T1", "T2", "T3"] and res.tier == "T3"
        assert res.to_record()["ladder_mode"] == "all"
    # explicit ladder="all" ignores the router's frontier; an empty frontier (unknown task)
    # falls back to all serving tiers
    frontier = FrontierRouter("T1", ["T1", "T3"])
    res = Cascade(config, ts, router=frontier, thresholds=thresholds(), ladder="all").run("qa", "q")
    assert [s["tier"] for s in res.steps] == ["T1", "T2", "T3"]
    res = Cascade(config, ts, router=FrontierRouter("T1", []), thresholds=thresholds()).run("qa", "q")
    assert res.ladder == ["T1", "T2", "T3"] and res.ladder_mode == "all"
    with pytest.raises(ConfigError):
        Cascade(config, ts, router=FakeRouter("T1"), thresholds=thresholds(), ladder="frontier")
    with pytest.raises(ConfigError):
        Cascade(config, ts, thresholds=thresholds(), ladder="cheapest")  # type: ignore[arg-type]


def test_feedback_skips_the_ladder_top(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.9), T2=gen(0.99))
    th = thresholds()
    online = OnlineThresholds(th, gamma=0.1)
    router = FrontierRouter("T1", ["T1", "T2"])
    cas = Cascade(config, ts, router=router, thresholds=th, online=online)
    res = cas.run("qa", "q")
    assert res.tier == "T2"
    assert cas.feedback(res, quality=0.0) == 1  # T1 only: T2 is this request's top
    assert online.status()["pairs"]["qa"]["T2"]["steps"] == 0
