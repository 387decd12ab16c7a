"""Each baseline on a tiny matrix where its correct choice is known.

Two tiers: T1 (cost 1) answers the "easy" queries, only T2 (cost 10) answers the "hard"
ones. Embeddings are injected (a 2-d easy/hard indicator), so no encoder is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import zlib

import numpy as np
import pytest

from routenlp.bench.baselines import AlwaysTier, Context, MatrixView, registered
from routenlp.config import parse_config
from routenlp.matrix import MatrixRow, Outcome

CFG = parse_config(
    {
        "tiers": [
            {"name": "T1", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
            {"name": "T2", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
        ],
        "tasks": [{"name": "qa", "tau": 1.0}],
    }
)


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), 3), dtype=np.float32)
    for i, t in enumerate(texts):
        if "hard" in t or "wrong" in t:
            out[i, 1] = 1.0
        elif t:
            out[i, 0] = 1.0
        out[i, 2] = (zlib.crc32(t.encode()) % 7) / 70.0  # a little per-text noise, seeded
    return out


def rows(n: int, prefix: str) -> list[MatrixRow]:
    out = []
    for i in range(n):
        hard = i % 2 == 1
        out.append(
            MatrixRow(
                id=f"{prefix}{i}",
                task="qa",
                prompt=f"{'hard' if hard else 'easy'} question {i}",
                outcomes={
                    "T1": Outcome(quality=0.0 if hard else 1.0, cost=1.0, response="wrong" if hard else "fine"),
                    "T2": Outcome(quality=1.0, cost=10.0, response="fine"),
                },
            )
        )
    return out


TRAIN = MatrixView.build(CFG, rows(60, "tr"))
TEST = MatrixView.build(CFG, rows(10, "te"))
EXPECT_ROUTE = [[0] if i % 2 == 0 else [1] for i in range(10)]
EXPECT_CASCADE = [[0] if i % 2 == 0 else [0, 1] for i in range(10)]


def ctx(**kw) -> Context:
    return Context(config=CFG, embed=fake_embed, reference_tier=1, seed=13, **kw)


def test_always_tier() -> None:
    c = ctx()
    bl = AlwaysTier("T1")
    bl.fit(TRAIN, c)
    assert bl.route(TEST, c) == [[0]] * 10
    assert bl.name == "always-T1"


def test_oracle_picks_cheapest_acceptable() -> None:
    c = ctx()
    bl = registered()["oracle"]()
    bl.fit(TRAIN, c)
    assert bl.route(TEST, c) == EXPECT_ROUTE


def test_oracle_best_quality_when_none_acceptable() -> None:
    r = MatrixRow(id="x", task="qa", prompt="p", outcomes={"T1": Outcome(quality=0.5, cost=1), "T2": Outcome(quality=0.2, cost=10)})
    v = MatrixView.build(CFG, [r])
    assert registered()["oracle"]().route(v, ctx()) == [[0]]


def test_random_follows_the_mix() -> None:
    c = ctx(routenlp_mix={"qa": {"T1": 1.0, "T2": 0.0}})
    bl = registered()["random"]()
    bl.fit(TRAIN, c)
    assert bl.route(TEST, c) == [[0]] * 10
    c2 = ctx(routenlp_mix={"qa": {"T1": 0.5, "T2": 0.5}})
    got = [p[0] for p in bl.route(MatrixView.build(CFG, rows(400, "r")), c2)]
    assert 0.4 < np.mean(got) < 0.6
    assert got == [p[0] for p in bl.route(MatrixView.build(CFG, rows(400, "r")), c2)]  # seeded


@pytest.mark.parametrize("name", ["hybrid-llm", "routellm-bert", "routellm-mf"])
def test_two_model_routers_send_hard_queries_up(name: str) -> None:
    c = ctx()
    bl = registered()[name]()
    bl.fit(TRAIN, c)
    assert bl.default_knob is not None
    assert bl.route(TEST, c) == EXPECT_ROUTE
    # the extremes of the knob: everything strong / everything weak
    assert bl.route(TEST, c, float("-inf")) == [[1]] * 10
    assert bl.route(TEST, c, float("inf")) == [[0]] * 10


def test_frugalgpt_cascade_stops_at_reliable_answer() -> None:
    c = ctx()
    bl = registered()["frugalgpt"]()
    bl.fit(TRAIN, c)
    assert bl.route(TEST, c) == EXPECT_CASCADE
    assert bl.knob_values()  # budgets swept for the curve


def test_automix_verifies_small_answer() -> None:
    c = ctx()
    bl = registered()["automix"]()
    bl.fit(TRAIN, c)
    assert bl.route(TEST, c) == EXPECT_CASCADE
    assert any("confidence" in n for n in c.notes)


def test_automix_uses_recorded_confidence_after_frugalgpt_cached_a_scorer() -> None:
    """Regression: with recorded small-tier uncertainty and an answer scorer already cached
    by another baseline in the same run, AutoMix must not look up cross-fitted scores."""

    def with_risk(rs: list[MatrixRow]) -> list[MatrixRow]:
        for r in rs:
            t1 = r.outcomes["T1"]
            t1.uncertainty = 0.9 if t1.quality == 0.0 else 0.1
        return rs

    train = MatrixView.build(CFG, with_risk(rows(60, "tr")))
    test = MatrixView.build(CFG, with_risk(rows(10, "te")))
    c = ctx()
    registered()["frugalgpt"]().fit(train, c)  # caches the answer scorer in the context
    bl = registered()["automix"]()
    bl.fit(train, c)
    assert bl.route(test, c) == EXPECT_CASCADE
    assert any("recorded confidence" in n for n in c.notes)


def test_knn_router_on_a_planted_matrix() -> None:
    """Easy queries: T1 right; hard ones: only T2. kNN sees the easy/hard embedding."""
    c = ctx()
    bl = registered()["knn-router"]()
    bl.fit(TRAIN, c)
    assert bl.default_knob is not None
    assert bl.route(TEST, c) == EXPECT_ROUTE  # default lambda: hard queries pay for T2
    # predicted qualities recover the planted matrix (neighbours are the same cluster)
    qhat = bl.predict(TEST, c)
    assert np.allclose(qhat[::2], [[1.0, 1.0]]) and np.allclose(qhat[1::2], [[0.0, 1.0]])
    # lambda sweeps from quality-first to cost-first
    assert bl.route(TEST, c, 0.0) == EXPECT_ROUTE  # ties go to the cheaper tier
    assert bl.route(TEST, c, 2.0) == [[0]] * 10  # cost weighs more than any quality gain
    assert len(bl.knob_values()) > 10


def three_tier_rows(n: int, prefix: str) -> list[MatrixRow]:
    """T1 (cost 1, quality 0.5), T2 (cost 5, quality 0.6: below the T1-T3 chord), T3 (cost 10, 1.0)."""
    out = []
    for i in range(n):
        out.append(MatrixRow(id=f"{prefix}{i}", task="qa", prompt=f"question {i}", outcomes={
            "T1": Outcome(quality=float(i % 2 == 0), cost=1.0),
            "T2": Outcome(quality=float(i % 5 < 3), cost=5.0),
            "T3": Outcome(quality=1.0, cost=10.0),
        }))
    return out


CFG3 = parse_config(
    {
        "tiers": [
            {"name": "T1", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
            {"name": "T2", "kind": "replay", "price_in": 0.5, "price_out": 0.5},
            {"name": "T3", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
        ],
        "tasks": [{"name": "qa", "tau": 1.0}],
    }
)


def test_task_mix_picks_the_hull_tiers_and_ignores_queries() -> None:
    from routenlp.bench.baselines.task_mix import tier_hull

    # hand-made hull: the middle point lies below the chord and is dropped
    assert tier_hull(np.array([1.0, 5.0, 10.0]), np.array([0.5, 0.6, 1.0]), np.array([0, 1, 2])) == [0, 2]
    assert tier_hull(np.array([1.0, 5.0, 10.0]), np.array([0.5, 0.9, 1.0]), np.array([0, 1, 2])) == [0, 1, 2]
    train = MatrixView.build(CFG3, three_tier_rows(100, "tr"))
    test = MatrixView.build(CFG3, three_tier_rows(400, "te"))
    c = Context(config=CFG3, embed=fake_embed, reference_tier=2, seed=13)
    bl = registered()["task-mix"]()
    bl.fit(train, c)
    lo, hi, w = bl.mixture("qa", 0.75)
    assert (lo, hi) == (0, 2) and w == pytest.approx(0.5)  # 0.5 + 0.5 * 0.5 = 0.75
    assert bl.default_knob == pytest.approx(0.97)  # the mixture meets its target exactly on train
    paths = bl.route(test, c, 0.75)
    served = [p[0] for p in paths]
    assert 1 not in served  # T2 is off the hull
    assert 0.43 < np.mean([s == 2 for s in served]) < 0.57
    assert paths == bl.route(test, c, 0.75)  # seeded
    # no query features: other prompts, same ids -> the same draws
    renamed = MatrixView.build(CFG3, [r.model_copy(update={"prompt": "x"}) for r in three_tier_rows(400, "te")])
    assert bl.route(renamed, c, 0.75) == paths
    # a higher target only moves queries up
    up = bl.route(test, c, 0.9)
    assert all(b[0] >= a[0] for a, b in zip(paths, up))
    assert bl.route(test, c, 0.4) == [[0]] * 400 and bl.route(test, c, 1.1) == [[2]] * 400


def test_task_mix_spends_where_quality_is_cheapest() -> None:
    """Two tasks: upgrading 'a' (T1 -> T3) gains 0.8 per 9 cost, 'b' only 0.2: 'a' goes first."""
    cfg = parse_config({
        "tiers": [
            {"name": "T1", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
            {"name": "T3", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
        ],
        "tasks": [{"name": "a", "tau": 1.0}, {"name": "b", "tau": 1.0}],
    })
    rs = []
    for i in range(100):
        a = MatrixRow(id=f"a{i}", task="a", prompt="p", outcomes={
            "T1": Outcome(quality=float(i % 10 < 2), cost=1.0), "T3": Outcome(quality=1.0, cost=10.0)})
        b = MatrixRow(id=f"b{i}", task="b", prompt="p", outcomes={
            "T1": Outcome(quality=float(i % 10 < 8), cost=1.0), "T3": Outcome(quality=1.0, cost=10.0)})
        rs += [a, b]
    view = MatrixView.build(cfg, rs)
    c = Context(config=cfg, embed=fake_embed, reference_tier=1, seed=13)
    bl = registered()["task-mix"]()
    bl.fit(view, c)
    # base quality (0.2 + 0.8) / 2 = 0.5; target 0.8 needs +0.3 = 0.6 of task a's upgrade
    assert bl.mixture("a", 0.8) == (0, 1, pytest.approx(0.75))
    assert bl.mixture("b", 0.8) == (0, 0, 0.0)
    # 0.95 needs +0.45: all of a (+0.4), then half of b's upgrade (+0.05 of its 0.1)
    assert bl.mixture("a", 0.95) == (1, 1, 0.0)
    assert bl.mixture("b", 0.95) == (0, 1, pytest.approx(0.5))
