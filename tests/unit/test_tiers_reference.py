"""The `reference` tier (simulated frontier): reference answers, a seeded error rate that
serves the next tier down, frontier prices, a lognormal latency profile, honest labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import median

import pytest

from routenlp.config import REFERENCE_LABEL, load_config, parse_config
from routenlp.tasks import get_task_spec
from routenlp.tiers.base import BaseTier, Generation, Request, build_tier
from routenlp.tiers.reference import ReferenceTier, estimate_tokens, lognormal_ms, uniforms
from routenlp.workloads import task_rows

ROOT = Path(__file__).resolve().parents[2]


def ensemble(**options: object) -> object:
    return parse_config(
        {
            "tiers": [
                {"name": "T3", "kind": "replay", "price_in": 0.8, "price_out": 0.8},
                {"name": "T4", "kind": "reference", "price_in": 8.0, "price_out": 8.0,
                 "latency_p50_ms": 1000, "latency_p99_ms": 5000, "options": options},
            ],
            "tasks": [
                {"name": "cs_intent", "kind": "intent_classification", "metric": "accuracy"},
                {"name": "fin_summ", "kind": "summarisation", "metric": "rougeL", "tau": 0.3},
            ],
        }
    )


class Fixed(BaseTier):
    """A fallback tier that always says the same thing (and counts its calls)."""

    def __init__(self, config: object, text: str) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        self.text = text
        self.calls = 0

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        self.calls += 1
        return [Generation(text=self.text) for _ in requests]


def requests(n: int, task: str = "cs_intent", reference: object = "billing") -> list[Request]:
    return [Request(task=task, prompt=f"prompt {i}", query=f"q{i}", id=f"id-{i}",
                    reference=reference) for i in range(n)]


def test_serves_the_reference_priced_like_the_papers_t4() -> None:
    cfg = ensemble(error_rate=0.0)
    tier = build_tier(cfg.tier("T4"), cfg)
    assert isinstance(tier, ReferenceTier)
    (gen,) = tier.generate_batch(requests(1, reference="billing"))
    assert gen.ok and gen.text == "billing"
    assert gen.meta["label"] == REFERENCE_LABEL and gen.meta["served"] == "reference"
    assert gen.usage.tokens_in == estimate_tokens("prompt 0") and gen.usage.tokens_out == 2
    assert gen.cost == pytest.approx((gen.usage.tokens_in + gen.usage.tokens_out) * 8.0 / 1000)
    assert cfg.tier("T4").display_name == f"T4 ({REFERENCE_LABEL})"


def test_error_rate_is_seeded_per_query_and_serves_the_fallback() -> None:
    cfg = ensemble(error_rate=0.05, fallback_tier="T3")
    tier = ReferenceTier(cfg.tier("T4"), cfg)
    fb = Fixed(cfg.tier("T3"), "refund")
    tier.attach_fallback(fb)
    gens = tier.generate_batch(requests(2000))
    wrong = [g for g in gens if g.meta["served"] == "fallback:T3"]
    assert 0.035 <= len(wrong) / len(gens) <= 0.065
    assert all(g.text == "refund" for g in wrong) and fb.calls == 1  # one batched call
    again = ReferenceTier(cfg.tier("T4"), cfg)
    again.attach_fallback(Fixed(cfg.tier("T3"), "refund"))
    assert [g.text for g in again.generate_batch(requests(2000))] == [g.text for g in gens]
    assert [g.latency_s for g in again.generate_batch(requests(50))] == [
        g.latency_s for g in gens[:50]
    ]
    reseeded = ReferenceTier(ensemble(error_rate=0.05, seed=7).tier("T4"), cfg)
    assert [g.latency_s for g in reseeded.generate_batch(requests(50))] != [
        g.latency_s for g in gens[:50]
    ]


def test_without_fallback_a_degraded_answer_scores_lower() -> None:
    cfg = ensemble(error_rate=1.0)
    tier = ReferenceTier(cfg.tier("T4"), cfg)
    spec = get_task_spec(cfg.task("cs_intent"))
    gens = tier.generate_batch(requests(20, reference="billing"))
    assert all(g.meta["served"] == "degraded" for g in gens)
    assert all(spec.score(spec.parse(g.text), "billing") == 0.0 for g in gens)
    ref = "The quarterly revenue rose by ten percent on strong demand in Europe and Asia."
    (summ,) = tier.generate_batch(requests(1, task="fin_summ", reference=ref))
    sspec = get_task_spec(cfg.task("fin_summ"))
    assert 0.0 < sspec.score(sspec.parse(summ.text), ref) < 1.0


def test_latency_follows_the_configured_profile() -> None:
    cfg = ensemble(error_rate=0.0)
    tier = ReferenceTier(cfg.tier("T4"), cfg)
    lat = sorted(g.latency_s * 1000 for g in tier.generate_batch(requests(4000)))
    assert median(lat) == pytest.approx(1000, rel=0.08)
    assert lat[int(0.99 * len(lat))] == pytest.approx(5000, rel=0.2)
    assert lognormal_ms(0.5, 900, 4000) == pytest.approx(900)
    assert all(0 < u < 1 for u in uniforms(0, "T4", "x"))


def test_reference_is_looked_up_by_query_when_the_request_has_none() -> None:
    cfg = ensemble(error_rate=0.0)
    tier = ReferenceTier(cfg.tier("T4"), cfg)
    spec = get_task_spec(cfg.task("cs_intent"))
    row = task_rows(cfg.task("cs_intent"), "test")[3]
    req = spec.build_request(row["input"], id="served-123")
    (gen,) = tier.generate_batch([req])
    assert gen.ok and spec.score(spec.parse(gen.text), row["reference"]) == 1.0
    (miss,) = tier.generate_batch([spec.build_request("a query from nowhere", id="x")])
    assert not miss.ok and REFERENCE_LABEL in (miss.error or "")
    assert tier.add_references("cs_intent", [{"input": "a query from nowhere", "reference": "refund"}]) == 1
    (hit,) = tier.generate_batch([spec.build_request("a query from nowhere", id="x")])
    assert hit.ok and hit.text == "refund"
    labelled = spec.build_request("another new query", id="y")
    labelled.reference = "change_pin"
    tier.generate_batch([labelled])  # remembered: served later without the reference
    (later,) = tier.generate_batch([spec.build_request("another new query", id="y")])
    assert later.text == "change_pin"


def test_local_cpu_example_uses_it_unless_a_real_t4_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTENLP_T4_BASE_URL", raising=False)
    cfg = load_config(ROOT / "examples" / "local-cpu.yaml")
    t4 = cfg.tier("T4")
    assert t4.kind == "reference" and t4.price_in == 8.0
    assert t4.reference_options.error_rate == 0.05 and t4.reference_options.fallback_tier == "T3"
    monkeypatch.setenv("ROUTENLP_T4_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ROUTENLP_T4_MODEL", "frontier")
    cfg = load_config(ROOT / "examples" / "local-cpu.yaml")
    assert cfg.tier("T4").kind == "openai_compat" and cfg.tier("T4").model == "frontier"
    assert [t.name for t in cfg.tiers].count("T4") == 1


class Echo(BaseTier):
    """A fallback that answers each request with its id and counts the requests it saw."""

    def __init__(self, config: object) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        self.seen: list[str] = []

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        self.seen += [str(r.id) for r in requests]
        return [Generation(text=f"answer to {r.id}") for r in requests]


def test_labelling_serves_the_frontiers_errors_from_the_fallbacks_own_column(tmp_path: Path) -> None:
    """Labelled side by side, the fallback model answers each prompt once: the simulated
    frontier's errors take its answers from the same batch, and the tier gets its real
    fallback back afterwards."""
    from routenlp.labeling import label_rows
    from routenlp.matrix import read_matrix

    cfg = ensemble(error_rate=1.0, fallback_tier="T3")
    t3 = Echo(cfg.tier("T3"))
    t4 = build_tier(cfg.tier("T4"), cfg)
    rows = [{"id": f"r{i}", "task": "cs_intent", "input": f"message {i}", "reference": "billing"}
            for i in range(5)]
    label_rows(cfg, rows, tmp_path / "m.jsonl", tiers={"T3": t3, "T4": t4}, use_cache=False)
    assert sorted(t3.seen) == [f"r{i}" for i in range(5)]  # once each, not twice
    got = read_matrix(tmp_path / "m.jsonl")
    assert all(r.outcomes["T4"].response == r.outcomes["T3"].response == f"answer to {r.id}" for r in got)
    assert t4._fallback is t3  # type: ignore[attr-defined]
    # the frontier alone (the demo's traffic pool) still asks its fallback itself
    label_rows(cfg, rows, tmp_path / "pool.jsonl", tiers={"T3": t3, "T4": t4}, tier_names=["T4"],
               use_cache=False)
    assert len(t3.seen) == 10
