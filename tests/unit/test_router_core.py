"""Router unit tests: labels, loss terms, decision knob, artifact round trip, unknown tasks."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from routenlp.config import parse_config
from routenlp.errors import ConfigError, UnknownTaskError
from routenlp.matrix import MatrixRow, Outcome
from routenlp.router.artifact import load_artifact, save_artifact
from routenlp.router.inference import Router, choose_tiers
from routenlp.router.labels import acceptable_tier, build_labels, normalised_costs, tier_costs
from routenlp.router.loss import router_loss
from routenlp.router.model import RouterHead, head_logits, masked_softmax


def _cfg(**router):
    return parse_config(
        {
            "tiers": [
                {"name": "A", "kind": "replay", "price_in": 1, "price_out": 1, "tasks": ["x"]},
                {"name": "B", "kind": "replay", "price_in": 1, "price_out": 1},
                {"name": "C", "kind": "replay", "price_in": 4, "price_out": 4},
            ],
            "tasks": [{"name": "x", "tau": 0.5}, {"name": "y", "tau": 0.8}],
            "router": router,
        }
    )


def _row(i, task, **q):
    return MatrixRow(
        id=str(i), task=task, prompt=f"p{i}",
        outcomes={k: (Outcome(quality=v) if not isinstance(v, str) else Outcome(error=v)) for k, v in q.items()},
    )


def test_labels_cheapest_masked_ties_missing_and_fallback():
    cfg = _cfg()
    rows = [
        _row(0, "x", A=0.6, B=0.9, C=1.0),  # A cheapest acceptable
        _row(1, "x", A=0.1, B=0.5, C=0.5),  # A/B same price, B first acceptable; B ties C -> B
        _row(2, "y", A=1.0, B=0.2, C=0.9),  # A does not serve y (masked) -> C
        _row(3, "y", A=1.0, B=0.1, C=0.1),  # nothing acceptable on serving tiers -> top (C)
        _row(4, "x", A="timeout", B=None, C=0.7),  # error / missing quality not acceptable
        _row(5, "x", C=0.2),  # missing outcomes, none acceptable -> top
    ]
    lab = build_labels(cfg, rows)
    assert lab.tasks == ["x", "y"]
    assert lab.labels.tolist() == [0, 1, 2, 2, 2, 2]
    assert lab.any_acceptable.tolist() == [True, True, True, False, True, False]
    assert lab.task_mask.tolist() == [[True, True, True], [False, True, True]]
    assert not lab.acceptable[2, 0] and lab.quality[2, 0] == pytest.approx(1.0)
    assert not lab.observed[4, 0] and not lab.observed[4, 1] and lab.quality[4, 0] == 0
    # "best" fallback: cheapest serving tier with the highest quality
    assert acceptable_tier([0.3, 0.3, 0.1], [True, True, True], 0.9, "best") == (0, False)
    assert acceptable_tier([None, 0.2, 0.4], [True, True, False], 0.9, "best") == (1, False)


def test_unknown_task_in_matrix_is_named():
    with pytest.raises(UnknownTaskError, match="zzz"):
        build_labels(_cfg(), [_row(0, "zzz", A=1.0)])


def test_costs_unit_price_vs_measured():
    cfg = _cfg()
    c, src = tier_costs(cfg, [_row(0, "x", A=1.0)])
    assert src == "unit_price" and c.tolist() == [1.0, 1.0, 4.0]
    rows = [MatrixRow(id="0", task="x", prompt="p", outcomes={t: Outcome(quality=1, cost=v) for t, v in zip("ABC", (1, 2, 8))})]
    c, src = tier_costs(cfg, rows)
    assert src == "measured" and normalised_costs(c).tolist() == pytest.approx([0.125, 0.25, 1.0])


def test_loss_terms_hand_computed():
    # 2 samples, 3 tiers; sample 2 has tier 0 masked
    logits = torch.tensor([[0.0, 0.0, 0.0], [float("-inf"), 0.0, float(np.log(3.0))]])
    labels = torch.tensor([0, 2])
    cost = torch.tensor([0.1, 0.5, 1.0])
    quality = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.4, 1.0]])
    tau = torch.tensor([0.5, 0.8])
    total, parts = router_loss(logits, labels, cost, quality, tau, lambda_c=0.3, lambda_q=0.5)
    # p1 = (1/3,1/3,1/3); p2 = (0, 1/4, 3/4)
    ce = (-np.log(1 / 3) - np.log(3 / 4)) / 2
    exp_cost = ((0.1 + 0.5 + 1.0) / 3 + (0.25 * 0.5 + 0.75 * 1.0)) / 2
    short = ((0.5 / 3) + (0.25 * 0.4)) / 2  # s1: max(0,.5-0)=.5 on tier 1; s2: .4 on tier 1
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["cost"] == pytest.approx(exp_cost, rel=1e-5)
    assert parts["shortfall"] == pytest.approx(short, rel=1e-5)
    assert float(total) == pytest.approx(ce + 0.3 * exp_cost + 0.5 * short, rel=1e-5)
    total.backward() if total.requires_grad else None


def test_head_numpy_matches_torch_and_masks():
    torch.manual_seed(0)
    head = RouterHead(8, 2, 3, task_dim=4, hidden=16).eval()
    emb = torch.randn(5, 8)
    t = torch.tensor([0, 1, 1, 0, 1])
    mask = torch.tensor([[True, True, True], [False, True, True]])[t]
    with torch.no_grad():
        ref = torch.softmax(head(emb, t, mask), -1).numpy()
    w = head.numpy_weights()
    got = masked_softmax(head_logits(w, emb.numpy(), t.numpy()), mask.numpy())
    assert np.allclose(ref, got, atol=1e-5)
    assert np.all(got[~mask.numpy()] == 0)


def test_cost_bias_monotone_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        n = 20
        probs = rng.dirichlet(np.ones(k) * 0.7, size=n)
        mask = rng.random((n, k)) < 0.8
        mask[np.arange(n), rng.integers(0, k, n)] = True
        probs = np.where(mask, probs, 0)
        probs /= probs.sum(1, keepdims=True)
        cost = np.sort(rng.random(k)) + 0.01
        if rng.random() < 0.3:
            cost[1] = cost[0]  # price ties
        cost = cost / cost.max()
        prev = None
        for b in np.linspace(-3, 10, 27):
            c = choose_tiers(probs, mask, cost, cost_bias=b)
            assert mask[np.arange(n), c].all()
            if prev is not None:
                assert np.all(cost[c] <= cost[prev] + 1e-12)
            prev = c
        prevp = None
        for p in np.linspace(0.05, 1.0, 20):  # more required confidence -> never cheaper
            c = choose_tiers(probs, mask, cost, min_accept_prob=p)
            assert mask[np.arange(n), c].all()
            if prevp is not None:
                assert np.all(c >= prevp)
            prevp = c


def _fake_router(tmp_path, cfg, **kw):
    """A router artifact with random weights and a fake embedder (no encoder needed)."""
    from routenlp.router.artifact import RouterMeta

    torch.manual_seed(1)
    head = RouterHead(6, 2, 3, task_dim=4, hidden=8).eval()
    meta = RouterMeta(
        tiers=["A", "B", "C"], tasks=["x", "y"], task_index={"x": 0, "y": 1}, taus={"x": 0.5, "y": 0.8},
        serving={"x": [True, True, True], "y": [False, True, True]}, tier_costs=[1, 1, 4],
        cost_source="unit_price", cost_norm=[0.25, 0.25, 1.0], config_hash=cfg.hash(),
        label_definition="test", encoder="fake", embedding_backend="torch", embedding_dim=6,
        max_length=128, hyper={},
    )
    save_artifact(tmp_path, head.numpy_weights(), meta)

    class FakeEmb:
        name, dim, backend = "fake", 6, "fake"

        def encode(self, texts, batch_size=64):
            return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(6) for t in texts]).astype(np.float32)

    w, m = load_artifact(tmp_path, cfg)
    return Router(w, m, embedder=FakeEmb(), config=cfg, **kw)


def test_save_load_round_trip_and_tier_check(tmp_path):
    cfg = _cfg()
    r1 = _fake_router(tmp_path, cfg)
    r2 = Router.load(tmp_path, cfg)
    r2._embedder = r1.embedder
    texts, tasks = ["hello", "world", "again"], ["x", "y", "y"]
    p1, p2 = r1.predict_proba(tasks, texts), r2.predict_proba(tasks, texts)
    assert np.array_equal(p1, p2)
    assert np.allclose(p1.sum(1), 1) and p1[1, 0] == 0 and p1[2, 0] == 0
    d = r2.decide("y", "world")
    assert d.tier in ("B", "C") and d.p_escalate == pytest.approx(sum(p1[1, d.index + 1 :]))
    other = parse_config({"tiers": [{"name": "A", "kind": "replay", "price_in": 1, "price_out": 1},
                                    {"name": "Z", "kind": "replay", "price_in": 2, "price_out": 2}],
                          "tasks": [{"name": "x"}]})
    with pytest.raises(ConfigError, match="trained for tiers"):
        Router.load(tmp_path, other)


def test_unknown_task_error_and_fallbacks(tmp_path):
    cfg = _cfg()
    r = _fake_router(tmp_path, cfg)
    with pytest.raises(UnknownTaskError, match="not trained on task 'nope'"):
        r.decide("nope", "hi")
    top = _fake_router(tmp_path, cfg, unknown_task="top").decide("nope", "hi")
    assert top.tier == "C" and top.fallback and top.probs["C"] == 1.0
    cheap = _fake_router(tmp_path, cfg, unknown_task="cheapest").decide("nope", "hi")
    assert cheap.tier == "B" and cheap.p_escalate == 0.0  # A serves only task x (config)


def test_fine_tune_encoder_is_refused(tmp_path):
    from routenlp.router.train import train_router

    with pytest.raises(ConfigError, match="fine_tune_encoder"):
        train_router(_cfg(fine_tune_encoder=True), [_row(0, "x", A=1.0)], tmp_path)


def test_success_loss_hand_computed_and_masked():
    from routenlp.router.loss import success_loss

    z = torch.tensor([[0.0, float(np.log(3.0)), 5.0]])
    y = torch.tensor([[1.0, 0.0, 0.5]])
    w = torch.tensor([[True, True, False]])  # tier 2 masked: its value must not matter
    # BCE(sigmoid(0), 1) = log 2; BCE(sigmoid(log 3) = 3/4, 0) = log 4
    assert float(success_loss(z, y, w)) == pytest.approx((np.log(2) + np.log(4)) / 2, rel=1e-6)
    logits = torch.zeros(1, 3)
    total, parts = router_loss(
        logits, torch.tensor([0]), torch.tensor([0.2, 0.5, 1.0]), torch.ones(1, 3), torch.tensor([0.5]),
        lambda_c=0.0, lambda_q=0.0, success_logits=z, success_targets=y, success_weight=w, lambda_s=2.0,
    )
    assert parts["success"] == pytest.approx((np.log(2) + np.log(4)) / 2, rel=1e-6)
    assert float(total) == pytest.approx(np.log(3) + 2.0 * parts["success"], rel=1e-6)


def test_success_targets_graded_and_binary():
    from routenlp.router.labels import success_targets

    lab = build_labels(_cfg(), [_row(0, "x", A=0.25, B=0.5, C=1.0), _row(1, "y", A=1.0, B=0.4, C="boom")])
    assert success_targets(lab, "binary").tolist() == [[0, 1, 1], [0, 0, 0]]
    # graded: min(1, q / tau); A does not serve y and C errored -> 0
    assert np.allclose(success_targets(lab, "graded"), [[0.5, 1, 1], [0, 0.5, 0]])
    assert lab.attempted.tolist() == [[True, True, True], [False, True, True]]


def test_success_rule_monotone_and_respects_mask():
    from routenlp.router.inference import choose_by_success

    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        n = 20
        succ = rng.random((n, k))
        mask = rng.random((n, k)) < 0.8
        mask[np.arange(n), rng.integers(0, k, n)] = True
        cost = np.sort(rng.random(k)) + 0.01
        if rng.random() < 0.3:
            cost[1] = cost[0]
        cost = cost / cost.max()
        prev = None
        for b in np.linspace(-2, 3, 41):
            c = choose_by_success(succ, mask, cost, cost_bias=b)
            assert mask[np.arange(n), c].all()
            if prev is not None:
                assert np.all(cost[c] <= cost[prev] + 1e-12)
            prev = c
    # b = 0 is the most likely tier; a large b the cheapest serving one
    s = np.array([[0.5, 0.9, 0.95]])
    m = np.array([[False, True, True]])
    assert choose_by_success(s, m, np.array([0.1, 0.2, 1.0]), cost_bias=0.0).tolist() == [2]
    assert choose_by_success(s, m, np.array([0.1, 0.2, 1.0]), cost_bias=0.1).tolist() == [1]


def test_baseline_frontier_and_knob_selection():
    from routenlp.router.train import pareto_candidates, select_cost_bias, task_only_baseline

    cfg = _cfg()
    rows = [_row(0, "x", A=1.0, B=0.0, C=1.0), _row(1, "x", A=0.0, B=1.0, C=1.0), _row(2, "x", A=1.0, B=1.0, C=1.0),
            _row(3, "y", A=1.0, B=1.0, C=0.0), _row(4, "y", A=0.0, B=0.0, C=1.0)]
    lab = build_labels(cfg, rows)
    cost = np.array([0.25, 0.25, 1.0])
    idx = np.arange(len(lab))
    # x: means A .67, B .67, C 1 -> best is C; y: B .5, C .5 -> cheapest best is B
    assert task_only_baseline(lab, idx).tolist() == [2, 1]
    # x: B ties A at the same price and is listed later -> dominated; y: C costs more, no better
    assert pareto_candidates(lab, idx, cost).tolist() == [[True, False, True], [False, True, False]]
    # success estimates that are right on rows 0-2 and useless on y
    succ = np.array([[0.9, 0.1, 0.95], [0.2, 0.9, 0.95], [0.9, 0.9, 0.95], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    pol = select_cost_bias(succ, lab, cost, target_quality=1.0, grid=[0.0, 0.1, 0.5, 1.0])
    # b=0: all C (x) / B (y): quality (1+1+1+1+0)/5 = 0.8 < 1 -> b stays 0, target missed
    assert pol.cost_bias == 0.0 and pol.meets_target is False
    pol = select_cost_bias(succ, lab, cost, target_quality=0.8, grid=[0.0, 0.1, 0.5, 1.0])
    # b=0.1: row 0 -> A (0.9 - .025 > 0.95 - .1), row 1 -> C, row 2 -> A; still 0.8 -> cheaper
    assert pol.meets_target and pol.cost_bias == 1.0 and pol.cost < pol.curve[0][2]
    assert [pt[0] for pt in pol.curve] == [0.0, 0.1, 0.5, 1.0]


def test_router_rule_and_knob_precedence(tmp_path):
    from routenlp.router.artifact import RouterMeta

    cfg = _cfg()
    r = _fake_router(tmp_path, cfg)
    assert r.rule == "label" and r.has_success_head  # no decision in meta -> label rule
    meta = RouterMeta.model_validate_json((tmp_path / "meta.json").read_text())
    meta.decision = {"rule": "success", "cost_bias": 0.2}
    w, _ = load_artifact(tmp_path)
    save_artifact(tmp_path, w, meta)
    emb = r.embedder
    r2 = Router.load(tmp_path, cfg)
    r2._embedder = emb
    assert r2.rule == "success" and r2.cost_bias == 0.2
    assert Router.load(tmp_path, cfg, cost_bias=0.5).cost_bias == 0.5
    assert Router.load(tmp_path, _cfg(cost_bias=0.7)).cost_bias == 0.7  # set in the config
    assert Router.load(tmp_path, cfg, rule="label").cost_bias == 0.0
    texts, tasks = ["a", "b", "c"], ["x", "y", "x"]
    sp = r2.success_proba(tasks, texts)
    assert sp.shape == (3, 3) and sp[1, 0] == 0 and np.all((sp >= 0) & (sp <= 1))
    assert np.array_equal(r2.predict_proba(tasks, texts), r.predict_proba(tasks, texts))
    ds = r2.decide_batch(tasks, texts)
    for i, d in enumerate(ds):
        s = sp[i] - 0.2 * r2.cost_norm
        s[~r2._mask[r2._task_idx[tasks[i]]]] = -np.inf
        assert d.index == int(np.argmax(s)) and d.success is not None
    # more cost pressure through decide never picks a more expensive tier
    costs = [r2.cost_norm[r2.decide("x", "a", cost_bias=b).index] for b in (-1, 0, 0.2, 1, 5)]
    assert costs == sorted(costs, reverse=True)
    # min_accept_prob switches to the acceptable-tier distribution
    assert r2.decide("x", "a", min_accept_prob=1.0).tier == "C"


def test_success_rule_needs_success_head(tmp_path):
    from routenlp.errors import DataError
    from routenlp.router.artifact import RouterMeta

    cfg = _cfg()
    _fake_router(tmp_path, cfg)
    w, meta = load_artifact(tmp_path)
    meta.decision = {"rule": "success", "cost_bias": 0.0}
    save_artifact(tmp_path, {k: v for k, v in w.items() if k not in ("ws", "bs", "s_prior")}, meta)
    with pytest.raises(DataError, match="no success head"):
        load_artifact(tmp_path)
    assert isinstance(meta, RouterMeta)


def test_train_tiny_matrix_uses_validation_knob_and_config_bias(tmp_path):
    """Too few rows for cross-fitting: the knob comes from the validation split; a cost_bias
    written in the config overrides it. Precomputed embeddings keep this fast."""
    from routenlp.router.train import train_router

    rng = np.random.default_rng(0)
    rows = [_row(i, "x" if i % 2 else "y", A=float(i % 3 == 0), B=float(i % 2), C=1.0) for i in range(12)]
    emb = rng.standard_normal((12, 6)).astype(np.float32)
    rep = train_router(_cfg(epochs=3), rows, tmp_path / "a", embeddings=emb, backend="torch")
    assert rep.decision.rule == "success" and "validation" in rep.decision.source
    assert rep.decision.candidates is not None and rep.decision.curve
    meta = load_artifact(tmp_path / "a")[1]
    assert meta.decision["cost_bias"] == rep.decision.cost_bias
    rep = train_router(_cfg(epochs=3, cost_bias=0.4), rows, tmp_path / "b", embeddings=emb, backend="torch")
    assert rep.decision.cost_bias == 0.4 and rep.decision.source == "config router.cost_bias"
    rep = train_router(_cfg(epochs=3, lambda_s=0), rows, tmp_path / "c", embeddings=emb, backend="torch")
    assert rep.decision.rule == "label" and "ws" not in load_artifact(tmp_path / "c")[0]
