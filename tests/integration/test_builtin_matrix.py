"""The labelled built-in workload (tests/data/builtin_matrix: 60 queries per task of the
seeded workload, labelled by `make demo` with the local CPU ensemble T1 MiniLM classifier,
T2 SmolLM2-135M, T3 Gemma-3-270M; split 35/35/30) through router training, conformal
calibration and the cascade: the same path `make demo` runs, without generating."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routenlp.bench.harness import evaluate
from routenlp.cascade import Cascade
from routenlp.config import load_config
from routenlp.conformal import calibrate
from routenlp.matrix import matrix_tiers, read_matrix
from routenlp.router.inference import Router
from routenlp.router.labels import build_labels
from routenlp.router.train import task_only_baseline, train_router
from routenlp.tiers.replay import build_replay_tiers

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "builtin_matrix"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    train, cal, test = (read_matrix(DATA / f"{s}.jsonl") for s in ("train", "cal", "test"))
    # labelled with T1-T3, before the simulated-frontier T4 joined the example config
    cfg = load_config(ROOT / "examples" / "local-cpu.yaml").restricted_to(matrix_tiers(train))
    out = tmp_path_factory.mktemp("router")
    report = train_router(cfg, train, out)
    return cfg, train, cal, test, Router.load(out, cfg), report


def test_router_on_builtin_workload_vs_task_only_baseline(setup) -> None:  # noqa: ANN001
    cfg, train, _, test, router, report = setup
    lab_tr = build_labels(cfg, train, tasks=router.tasks)
    lab = build_labels(cfg, test, tasks=router.tasks)
    base = task_only_baseline(lab_tr, np.arange(len(lab_tr)))[lab.task_index]
    choice = np.array([d.index for d in router.decide_batch([r.task for r in test], [r.prompt for r in test])])
    rows = np.arange(len(test))
    q_router, c_router = lab.quality[rows, choice].mean(), router.cost_norm[choice].mean()
    q_base, c_base = lab.quality[rows, base].mean(), router.cost_norm[base].mean()
    print(f"router q={q_router:.4f} c={c_router:.4f}; task-only q={q_base:.4f} c={c_base:.4f}")
    assert report.n_train > 0
    # classification tasks go to the classifier tier, which is right there
    for task in ("cs_intent", "legal_clause"):
        picks = {router.tiers[c] for c, r in zip(choice, test) if r.task == task}
        assert picks == {"T1"}, (task, picks)
    assert c_router <= c_base + 1e-9
    assert q_router >= q_base - 0.02


def test_calibration_and_cascade_on_builtin_workload(setup) -> None:  # noqa: ANN001
    cfg, train, cal, test, router, _ = setup
    th = calibrate(cfg, cal, alpha=0.05)
    # the classifier tier is calibrated on its max-prob signal and accepts on cs_intent
    assert th.delta("cs_intent", "T1") is not None
    assert th.entry("cs_intent", "T1").bound <= 0.05
    for _, _, e in th.pairs():
        assert e.delta is None or e.bound <= 0.05
    cascade = Cascade(cfg, build_replay_tiers(cfg, test), router=router, thresholds=th)
    served = [cascade.run(r.task, r.prompt, id=r.id) for r in test]
    assert all(res.generation.ok for res in served)
    total = sum(res.total_cost for res in served)
    always_top = sum(r.outcomes["T3"].cost for r in test)
    assert total < always_top
    # answers accepted below the top tier that are bad: alpha bounds each (task, tier) rate
    # in expectation; on 108 test queries allow sampling slack
    below_top = [(r, res) for r, res in zip(test, served) if res.tier != res.ladder[-1]]
    bad = [r.id for r, res in below_top
           if (r.outcomes[res.tier].quality or 0.0) < cfg.task(r.task).tau]
    assert len(bad) <= 0.1 * len(test), bad


def test_evaluate_on_builtin_workload(setup) -> None:  # noqa: ANN001
    cfg, train, cal, test, router, _ = setup
    th = calibrate(cfg, cal, alpha=0.05)
    res = evaluate(cfg, test, router=router, thresholds=th, baselines="all", train_rows=train,
                   seed=13, matrix_name="builtin").to_json()
    systems = res["systems"]
    for name in ("routenlp", "oracle", "frugalgpt", "automix", "always-T3"):
        assert name in systems
    assert systems["always-T3"]["cost_ratio"] == pytest.approx(1.0)
    assert systems["oracle"]["quality_ratio"] >= systems["routenlp"]["quality_ratio"] - 1e-9
    assert systems["routenlp"]["cost_ratio"] < 1.0


def test_certified_policy_is_routenlps_default_point(setup) -> None:  # noqa: ANN001
    """With a certified policy, RouteNLP's table row is the certified theta replayed through
    the Cascade, its curve the calibration front, and the per-tier thresholds run as the
    `routenlp-per-tier` ablation; the certificate travels into the results."""
    from routenlp.conformal.certify import calibrate_policy

    cfg, train, cal, test, router, _ = setup
    th = calibrate(cfg, cal, alpha=0.05)
    art = calibrate_policy(cfg, cal, router=router, quality_target=0.97, delta=0.1, seed=13)
    res = evaluate(cfg, test, router=router, thresholds=th, policy=art, baselines="none",
                   train_rows=train, seed=13, bootstrap=50, matrix_name="builtin").to_json()
    systems = res["systems"]
    assert {"routenlp", "routenlp-per-tier", "routenlp-router-only"} <= set(systems)
    op = systems["routenlp"]["operating_point"]
    assert op["lambda"] == pytest.approx(art.theta.lam)
    assert op["certified"] == art.certificate.certified
    assert 1 <= res["n_points"]["routenlp"] <= 40
    assert res["certificate"]["theta"]["lam"] == pytest.approx(art.theta.lam)
    assert res["certificate"]["plain"] == art.certificate.plain()
    assert "routenlp-per-tier" in res["descriptions"] and "per-(task, tier)" in res["descriptions"]["routenlp-per-tier"]


def test_paper_objective_router_runs_as_an_ablation_row(setup, tmp_path) -> None:  # noqa: ANN001
    cfg, train, cal, test, router, _ = setup
    paper_cfg = cfg.model_copy(deep=True)
    paper_cfg.router.objective = "paper"
    rep = train_router(paper_cfg, train, tmp_path / "paper")
    paper = Router.load(tmp_path / "paper", cfg)
    assert rep.objective == "paper" and paper.rule == "label" and not paper.has_success_head
    th = calibrate(cfg, cal, alpha=0.05)
    res = evaluate(cfg, test, router=router, thresholds=th, baselines="none", train_rows=train, seed=13,
                   bootstrap=0, ablation_routers={"routenlp-paper-objective": paper}).to_json()
    row = res["systems"]["routenlp-paper-objective"]
    assert row["operating_point"]["rule"] == "label"
    assert 1 <= res["n_points"]["routenlp-paper-objective"] <= 40
    assert abs(sum(row["tier_shares"].values()) - 1.0) < 1e-9
