"""The harness on a tiny matrix with a scripted router: numbers checked by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from routenlp.bench.harness import (
    LABEL_COST_BIASES,
    SUCCESS_COST_BIASES,
    default_cost_biases,
    evaluate,
    modelled_latency_ms,
    prepare_rows,
    resolve_baselines,
)
from routenlp.config import parse_config
from routenlp.conformal import ThresholdEntry, Thresholds
from routenlp.errors import ConfigError
from routenlp.matrix import MatrixRow, Outcome


def make_config(**tier_extra):
    return parse_config(
        {
            "tiers": [
                {"name": "T1", "kind": "replay", "price_in": 0.1, "price_out": 0.1, **tier_extra},
                {"name": "T2", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
            ],
            "tasks": [{"name": "qa", "tau": 1.0, "sla_ms": 1050}],
        }
    )


CFG = make_config()


def rows(n: int = 10) -> list[MatrixRow]:
    out = []
    for i in range(n):
        hard = i % 2 == 1
        out.append(
            MatrixRow(
                id=f"q{i}",
                task="qa",
                prompt=f"{'hard' if hard else 'easy'} {i}",
                outcomes={
                    "T1": Outcome(quality=0.0 if hard else 1.0, cost=1.0, latency_s=0.1,
                                  uncertainty=0.8 if hard else 0.2, response="a"),
                    "T2": Outcome(quality=1.0, cost=10.0, latency_s=1.0, response="b"),
                },
            )
        )
    return out


@dataclass
class Decision:
    tier: str
    index: int
    probs: dict[str, float]
    p_escalate: float


class ScriptedRouter:
    """Always T1 with 90% confidence, whatever the bias."""

    cost_bias = 0.0
    tiers = ["T1", "T2"]

    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Decision:
        return Decision("T1", 0, {"T1": 0.9, "T2": 0.1}, 0.1)

    def decide_batch(self, tasks, texts, *, cost_bias=None):
        return [self.decide(t, x, cost_bias=cost_bias) for t, x in zip(tasks, texts)]


THR = Thresholds(alpha=0.05, thresholds={"qa": {"T1": ThresholdEntry(delta=0.5, n=100)}})


def test_cascade_numbers_by_hand() -> None:
    res = evaluate(CFG, rows(), router=ScriptedRouter(), thresholds=THR, baselines="oracle,random", count_tokens=len)
    s = res.systems["routenlp"]
    assert res.reference == "always-T2"
    assert s.quality_ratio == pytest.approx(1.0)
    assert s.cost_ratio == pytest.approx((5 * 1 + 5 * 11) / 100)
    assert s.escalation_rate == pytest.approx(0.5)
    assert s.tier_shares == {"T1": 0.5, "T2": 0.5}
    assert s.quality_violation_rate == 0.0
    assert s.sla_violation_rate == pytest.approx(0.5)  # 100 + 1000 ms > 1050
    assert s.p50_latency_ms == pytest.approx(600.0)
    ro = res.systems["routenlp-router-only"]
    assert (ro.quality_ratio, ro.cost_ratio) == (pytest.approx(0.5), pytest.approx(0.1))
    assert res.systems["routenlp-cascade-from-t1"].cost_ratio == pytest.approx(0.6)
    orc = res.systems["oracle"]
    assert orc.cost_ratio == pytest.approx(0.55) and orc.quality_ratio == pytest.approx(1.0)
    # Random draws with RouteNLP's mix (half/half here)
    assert set(res.systems["random"].tier_shares) == {"T1", "T2"}
    assert res.matched["routenlp"]["cost_ratio_at_quality_0.97"] == pytest.approx(0.6)
    payload = res.to_json()
    for key in ("matrix", "n_test", "systems", "matched", "auc", "notes"):
        assert key in payload
    for key in ("quality_ratio", "cost_ratio", "mean_quality", "p50_latency_ms", "p99_latency_ms",
                "sla_violation_rate", "quality_violation_rate", "tier_shares", "escalation_rate", "curve"):
        assert key in payload["systems"]["routenlp"]


def _t1_best(rs: list[MatrixRow]) -> list[MatrixRow]:
    """Copies where T1 is the best single tier: perfect everywhere, T2 at 0.5."""
    out = []
    for r in rs:
        o = {"T1": r.outcomes["T1"].model_copy(update={"quality": 1.0}),
             "T2": r.outcomes["T2"].model_copy(update={"quality": 0.5})}
        out.append(r.model_copy(update={"outcomes": o}))
    return out


def test_reference_best_is_picked_on_train_and_ignores_test_labels() -> None:
    train = _t1_best([r.model_copy(update={"id": "tr" + r.id}) for r in rows()])
    test = rows()  # on test T2 is the best tier (T1 misses the hard half)
    res = evaluate(CFG, test, router=None, thresholds=THR, baselines="none", reference="best",
                   train_rows=train, count_tokens=len)
    assert res.reference == "always-T1"  # train's best, although T2 is best on test
    assert res.systems["always-T1"].quality_ratio == pytest.approx(1.0)
    assert any("best single tier by mean train quality" in n for n in res.notes)
    # flipping every test label leaves the choice alone
    flipped = [r.model_copy(update={"outcomes": {k: o.model_copy(update={"quality": 1.0 - (o.quality or 0.0)})
                                                  for k, o in r.outcomes.items()}}) for r in test]
    res2 = evaluate(CFG, flipped, router=None, thresholds=THR, baselines="none", reference="best",
                    train_rows=train, count_tokens=len)
    assert res2.reference == "always-T1"
    with pytest.raises(ConfigError, match="--reference best"):
        evaluate(CFG, test, router=None, thresholds=THR, baselines="none", reference="best", count_tokens=len)


def test_learned_baselines_need_train() -> None:
    res = evaluate(CFG, rows(), router=None, thresholds=THR, baselines="all", count_tokens=len)
    assert "frugalgpt" not in res.systems and "task-mix" not in res.systems
    assert any("needs --train" in n for n in res.notes)


def test_prepare_rows_estimates_cost_and_models_latency() -> None:
    cfg = make_config(latency_p50_ms=100.0, latency_p99_ms=400.0)
    r = MatrixRow(id="x", task="qa", prompt="one two three", outcomes={
        "T1": Outcome(quality=1.0, response="four five"),
        "T2": Outcome(quality=1.0),
    })
    out, notes = prepare_rows(cfg, [r], count_tokens=lambda ts: [len(t.split()) for t in ts], assumed_output_tokens=7)
    o1, o2 = out[0].outcomes["T1"], out[0].outcomes["T2"]
    assert o1.cost == pytest.approx(3 / 1000 * 0.1 + 2 / 1000 * 0.1)
    assert o2.cost == pytest.approx(3 / 1000 * 1.0 + 7 / 1000 * 1.0)  # assumed output length
    assert notes.estimated_cost and notes.assumed_output and notes.modelled_latency
    assert o1.latency_s is not None and o2.latency_s is None  # T2 has no profile
    assert notes.latency_missing


def test_modelled_latency_lognormal_quantiles() -> None:
    assert modelled_latency_ms(100.0, 400.0, 0.5) == pytest.approx(100.0)
    assert modelled_latency_ms(100.0, 400.0, 0.99) == pytest.approx(400.0)
    assert modelled_latency_ms(100.0, None, 0.99) == 100.0


def test_resolve_baselines() -> None:
    assert "frugalgpt" in resolve_baselines("all")
    assert resolve_baselines("none") == []
    assert resolve_baselines("oracle,always-T1") == ["oracle"]
    with pytest.raises(ConfigError, match="unknown baseline"):
        resolve_baselines("nope")


def test_html_report_is_self_contained(tmp_path) -> None:
    from routenlp.bench.commands import results_table
    from routenlp.report import referenced_images, render_html, write_html

    res = evaluate(CFG, rows(), router=ScriptedRouter(), thresholds=THR, baselines="oracle", count_tokens=len)
    payload = res.to_json()
    page = render_html(payload)
    assert page.count("data:image/png;base64,") == 3  # curves, tier shares, latency CDF
    assert "routenlp-cascade-from-t1" in page and "<script" not in page
    assert "src=\"http" not in page
    # written to disk, the same plots are files under plots/ that the page references
    out = write_html(payload, tmp_path / "r.html")
    assert "data:image/png" not in out.read_text()
    refs = referenced_images(out)
    assert sorted(refs) == sorted((tmp_path / "plots").glob("*.png")) and len(refs) == 3
    table = results_table(payload)
    assert table.row_count == len(payload["systems"])


CFG3 = parse_config(
    {
        "tiers": [
            {"name": "T1", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
            {"name": "T2", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
            {"name": "T3", "kind": "replay", "price_in": 5.0, "price_out": 5.0},
        ],
        "tasks": [{"name": "qa", "tau": 1.0, "sla_ms": 5000}],
    }
)


def rows3(n: int = 10) -> list[MatrixRow]:
    """T3 is the most expensive and the worst (a llmrouter_14task-like matrix)."""
    out = []
    for r in rows(n):
        o = dict(r.outcomes)
        o["T3"] = Outcome(quality=0.0, cost=50.0, latency_s=1.0, response="c")
        out.append(r.model_copy(update={"outcomes": o}))
    return out


class FrontierRouter(ScriptedRouter):
    """Success-rule router whose train frontier for qa is T1, T2 (T3 dominated)."""

    rule = "success"
    tiers = ["T1", "T2", "T3"]

    def ladder(self, task: str) -> list[str]:
        return ["T1", "T2"]


def test_sweep_grid_follows_the_router_rule() -> None:
    assert default_cost_biases(FrontierRouter()) == SUCCESS_COST_BIASES
    assert default_cost_biases(ScriptedRouter()) == LABEL_COST_BIASES  # no rule: label units
    assert min(SUCCESS_COST_BIASES) >= -0.2 and max(SUCCESS_COST_BIASES) <= 1.5
    assert sum(1 for b in SUCCESS_COST_BIASES if 0 <= b <= 0.1) >= 6  # dense near 0
    res = evaluate(
        CFG3, rows3(), router=FrontierRouter(), thresholds=THR, baselines="none", count_tokens=len
    )
    assert len(res.systems["routenlp"].curve) == len(set(SUCCESS_COST_BIASES) | {0.0})
    assert any("'success'" in n and "frontier" in n for n in res.notes)


def test_frontier_ladder_skips_the_dominated_top_tier() -> None:
    train = [r.model_copy(update={"id": "tr" + r.id}) for r in rows3()]
    res = evaluate(CFG3, rows3(), router=FrontierRouter(), thresholds=THR, baselines="none",
                   reference="best", train_rows=train, count_tokens=len)
    assert res.reference == "always-T2"
    s = res.systems["routenlp"]
    # easy rows accepted at T1 (cost 1), hard rows escalate to T2, the ladder's top (1 + 10)
    assert s.tier_shares == {"T1": 0.5, "T2": 0.5, "T3": 0.0}
    assert s.quality_ratio == pytest.approx(1.0)
    assert s.cost_ratio == pytest.approx((5 * 1 + 5 * 11) / 100)
    assert s.operating_point["ladder"] == "frontier"
    # the old ladder climbs T1 -> T2 -> T3 and serves T3's bad answer at the highest price
    # (T2 has no threshold when it is not the top: skipped, unpaid)
    old = res.systems["routenlp-all-tiers"]
    assert old.tier_shares["T3"] == pytest.approx(0.5)
    assert old.cost_ratio == pytest.approx((5 * 1 + 5 * 51) / 100)
    assert old.quality_ratio == pytest.approx(0.5)
    # cascade-from-T1 uses the same frontier ladder
    assert res.systems["routenlp-cascade-from-t1"].tier_shares["T3"] == 0.0


def _embed(texts):
    import numpy as np

    return np.array([[1.0, 0.0] if t.startswith("hard") else [0.0, 1.0] for t in texts], dtype=np.float32)


def test_per_query_rows_reproduce_every_summary_number(tmp_path) -> None:
    import json

    import numpy as np

    train = [r.model_copy(update={"id": "tr" + r.id}) for r in rows(40)]
    res = evaluate(CFG, rows(), router=ScriptedRouter(), thresholds=THR, baselines="oracle,random,task-mix,knn-router",
                   train_rows=train, embed=_embed, count_tokens=len, bootstrap=200)
    path = res.write_per_query(tmp_path / "pq.jsonl")
    got = [json.loads(line) for line in path.read_text().splitlines()]
    for row in got:
        assert set(row) >= {"system", "id", "task", "tiers_tried", "served_tier", "quality", "cost", "latency_ms"}
    payload = res.to_json()
    by_sys: dict[str, list[dict]] = {}
    for row in got:
        by_sys.setdefault(row["system"], []).append(row)
    assert set(by_sys) == set(payload["systems"])
    ref = by_sys[payload["reference"]]
    ref_q = np.mean([r["quality"] for r in ref])
    ref_c = sum(r["cost"] for r in ref)
    for name, rs in by_sys.items():
        s = payload["systems"][name]
        n = len(rs)
        assert n == payload["n_test"]
        q = np.array([r["quality"] for r in rs])
        c = np.array([r["cost"] for r in rs])
        lat = np.array([r["latency_ms"] for r in rs])
        assert s["mean_quality"] == pytest.approx(q.mean())
        assert s["mean_cost"] == pytest.approx(c.mean())
        assert s["quality_ratio"] == pytest.approx(q.mean() / ref_q)
        assert s["cost_ratio"] == pytest.approx(c.sum() / ref_c)
        assert s["p50_latency_ms"] == pytest.approx(np.percentile(lat, 50))
        assert s["p99_latency_ms"] == pytest.approx(np.percentile(lat, 99))
        assert s["escalation_rate"] == pytest.approx(np.mean([len(r["tiers_tried"]) > 1 for r in rs]))
        assert s["sla_violation_rate"] == pytest.approx(np.mean([r["latency_ms"] > r["sla_ms"] for r in rs]))
        assert s["quality_violation_rate"] == pytest.approx(np.mean([r["quality"] < r["tau"] for r in rs]))
        for t, share in s["tier_shares"].items():
            assert share == pytest.approx(np.mean([r["served_tier"] == t for r in rs]))
        for task, pt in s["per_task"].items():
            qs = [r["quality"] for r in rs if r["task"] == task]
            assert pt["mean_quality"] == pytest.approx(np.mean(qs)) and pt["n"] == len(qs)
        assert all(r["served_tier"] == r["tiers_tried"][-1] for r in rs)
    # every system has its capped points, intervals and (except routenlp) a difference
    assert payload["n_points"]["routenlp"] == len(payload["systems"]["routenlp"]["curve"]) <= 40
    assert payload["bootstrap"]["resamples"] == 200
    assert set(payload["intervals"]) == set(payload["systems"])
    assert set(payload["differences"]) == set(payload["systems"]) - {"routenlp"}
    assert {"task-mix", "knn-router"} <= set(payload["systems"])


def test_points_cap_is_the_same_for_every_system() -> None:
    res = evaluate(CFG3, rows3(), router=FrontierRouter(), thresholds=THR, baselines="task-mix,knn-router",
                   train_rows=[r.model_copy(update={"id": "tr" + r.id}) for r in rows3(40)],
                   embed=_embed, count_tokens=len, points=5, bootstrap=0)
    assert res.n_points["routenlp"] == 5 and res.n_points["task-mix"] == 5 and res.n_points["knn-router"] == 5
    assert res.n_points["always-T1"] == 1
    s = res.systems["routenlp"]
    assert s.operating_point["cost_bias"] == 0.0  # the router's own cost_bias is kept in the grid
    assert [s.cost_ratio, s.quality_ratio] in s.curve
    assert res.intervals == {} and res.bootstrap == {}
    with pytest.raises(ConfigError, match="--points"):
        evaluate(CFG3, rows3(), router=None, thresholds=THR, baselines="none", count_tokens=len, points=0)
