"""The replay tier: recorded outcomes come back as Generations; gaps are filled and flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from routenlp.config import TierConfig, parse_config
from routenlp.errors import ConfigError, DataError
from routenlp.matrix import MatrixRow, Outcome, write_matrix
from routenlp.tiers.base import Request, build_tier
from routenlp.tiers.replay import ReplayTier, build_replay_tiers, load_rows, response_text

TIER = TierConfig(name="small", kind="replay", price_in=1.0, price_out=2.0)


def rows() -> dict[str, MatrixRow]:
    full = MatrixRow(
        id="q1", task="t", prompt="p" * 40,
        outcomes={
            "small": Outcome(quality=1.0, cost=0.5, latency_s=0.2, uncertainty=0.3,
                             response="yes", tokens_in=10, tokens_out=2),
            "big": Outcome(quality=0.0, cost=None, latency_s=None, confidence=-0.7,
                           response=[{"text": "ACME", "type": "ORG"}]),
        },
    )
    sparse = MatrixRow(
        id="q2", task="t", prompt="p" * 40,
        outcomes={
            "small": Outcome(quality=0.0, cost=None, latency_s=float("nan"), response="x" * 20,
                             tokens_in=100, tokens_out=50),
            "big": Outcome(error="timeout", quality=None),
        },
    )
    return {"q1": full, "q2": sparse}


def test_recorded_outcome_is_returned_verbatim() -> None:
    gen = ReplayTier(TIER, rows()).generate(Request(task="t", prompt="", id="q1"))
    assert gen.ok and gen.text == "yes" and gen.quality == 1.0
    assert gen.cost == 0.5 and gen.latency_s == 0.2 and gen.uncertainty == 0.3
    assert gen.usage.tokens_in == 10 and gen.usage.tokens_out == 2
    assert gen.meta == {}


def test_missing_cost_is_priced_from_tokens_and_latency_modelled() -> None:
    tier = ReplayTier(TIER.model_copy(update={"latency_p50_ms": 250.0}), rows())
    gen = tier.generate(Request(task="t", prompt="", id="q2"))
    assert gen.cost == pytest.approx(100 / 1000 * 1.0 + 50 / 1000 * 2.0)
    assert "estimated_cost" not in gen.meta  # recorded tokens, priced by config
    assert gen.latency_s == pytest.approx(0.25) and gen.meta["modelled_latency"] is True


def test_estimated_tokens_cost_and_structured_response() -> None:
    big = TierConfig(name="big", kind="replay", price_in=10.0, price_out=10.0)
    gen = ReplayTier(big, rows()).generate(Request(task="t", prompt="", id="q1"))
    assert json.loads(gen.text) == [{"text": "ACME", "type": "ORG"}]
    assert gen.meta["response"] == [{"text": "ACME", "type": "ORG"}]
    assert gen.usage.tokens_in == 10 and gen.usage.tokens_out == len(gen.text) // 4
    assert gen.cost == pytest.approx(big.cost(10, len(gen.text) // 4))
    assert gen.meta["estimated_cost"] is True and gen.meta["modelled_latency"] is True
    assert gen.latency_s == 0.0
    assert gen.uncertainty == pytest.approx(0.7)  # -confidence when no uncertainty is recorded


def test_recorded_error_and_missing_outcome() -> None:
    big = TierConfig(name="big", kind="replay", price_in=1.0, price_out=1.0)
    gen = ReplayTier(big, rows()).generate(Request(task="t", prompt="", id="q2"))
    assert gen.error == "timeout"
    gen = ReplayTier(TIER, rows()).generate(Request(task="t", prompt="", id="nope"))
    assert gen.error == "no recorded outcome for nope at small" and gen.text == ""
    other = TierConfig(name="absent", kind="replay", price_in=1.0, price_out=1.0)
    gen = ReplayTier(other, rows()).generate(Request(task="t", prompt="", id="q1"))
    assert gen.error == "no recorded outcome for q1 at absent"
    assert "no id" in (ReplayTier(TIER, rows()).generate(Request(task="t", prompt="")).error or "")


def test_batch_and_build_replay_tiers() -> None:
    cfg = parse_config({
        "tier_order": "given",
        "tiers": [TIER.model_dump(), {"name": "big", "kind": "replay", "price_in": 3,
                                      "price_out": 3}],
        "tasks": [{"name": "t"}],
    })
    tiers = build_replay_tiers(cfg, list(rows().values()))
    gens = tiers["small"].generate_batch(
        [Request(task="t", prompt="", id=i) for i in ("q1", "q2", "zz")]
    )
    assert [g.ok for g in gens] == [True, True, False]
    assert math.isclose(gens[0].quality or 0, 1.0)


def test_registry_factory_reads_options_matrix(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_matrix(path, rows().values())
    cfg = parse_config({
        "tiers": [{**TIER.model_dump(), "options": {"matrix": str(path)}}],
        "tasks": [{"name": "t"}],
    })
    tier = build_tier(cfg.tiers[0], cfg)
    assert isinstance(tier, ReplayTier)
    assert tier.generate(Request(task="t", prompt="", id="q1")).text == "yes"
    assert load_rows(path) is load_rows(path)  # read once per file version

    no_matrix = parse_config({"tiers": [TIER.model_dump()], "tasks": [{"name": "t"}]})
    with pytest.raises(ConfigError, match="options.matrix"):
        build_tier(no_matrix.tiers[0], no_matrix)
    with pytest.raises(DataError, match="not found"):
        load_rows(tmp_path / "missing.jsonl")


def test_response_text() -> None:
    assert response_text(None) == "" and response_text("a") == "a"
    assert response_text({"b": 1}) == '{"b": 1}'
