"""The real Cascade serving a certified policy artifact, and `calibrate_policy` replaying the
real Cascade over replay tiers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routenlp.cascade import Cascade
from routenlp.config import EnsembleConfig, parse_config
from routenlp.conformal.certify import PolicyArtifact, Theta, calibrate_policy
from routenlp.conformal.online import OnlineLambda
from routenlp.conformal.simulate import World
from routenlp.matrix import MatrixRow, Outcome
from routenlp.tiers.base import Generation

from test_cascade import FakeRouter, gen, tiers
from test_conformal_certify import _artifact


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
            "cascade": {"online": False},
        }
    )


def test_accept_rule_is_p_hat_below_lambda(config: EnsembleConfig) -> None:
    # identity maps: p_hat(u) = u; lambda 0.3
    ts = tiers(config, T1=gen(0.5), T2=gen(0.2))
    res = Cascade(config, ts, policy=_artifact(0.3)).run("qa", "q")
    assert res.tier == "T2" and res.policy == "certified"
    assert [s["threshold"] for s in res.steps[:2]] == [0.3, 0.3]


def test_lambda_zero_is_always_the_top_unpaid(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.0), T2=gen(0.0))
    res = Cascade(config, ts, policy=_artifact(0.0)).run("qa", "q")
    assert res.tier == "T3" and res.total_cost == pytest.approx(0.01)
    assert ts["T1"].calls == [] and ts["T2"].calls == []  # type: ignore[attr-defined]
    assert "accept-nothing" in res.steps[0]["skipped_reason"]


def test_lambda_one_is_the_router_alone(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(None), T2=gen(0.99))  # even an answer without a signal
    res = Cascade(config, ts, router=FakeRouter("T1"), policy=_artifact(1.0)).run("qa", "q")
    assert res.tier == "T1" and not res.escalated


def test_start_higher_uses_the_calibrated_reject_rate(config: EnsembleConfig) -> None:
    # router is sure (no mass above T1), but T1's calibrated reject rate is 0.7:
    # 600 + 0.7 * 700 = 1090 > 1000 -> start at T2
    lat = {"T1": 600.0, "T2": 700.0, "T3": 900.0}
    sure = FakeRouter("T1", {"T1": 1.0})
    art = _artifact(0.3)
    art.reject_rate["qa"]["T2"] = 0.1  # 700 + 0.1 * 900 fits: stay at T2
    res = Cascade(config, tiers(config, T2=gen(0.1)), router=sure, policy=art, latency=lat).run("qa", "q")
    assert res.start_tier == "T2" and "p_escalate 0.70" in res.steps[0]["skipped_reason"]


@dataclass
class AnswerFreeEstimator:
    u: float
    calls: list[str] = field(default_factory=list)

    def has_tier(self, tier: str) -> bool:
        return True

    def answer_free(self, tier: str) -> bool:
        return True

    def uncertainty(self, tier: str, q: list[str], a: list[str]) -> list[float]:
        self.calls.append(tier)
        return [self.u for _ in q]


def test_query_only_signal_decides_before_the_call(config: EnsembleConfig) -> None:
    art = _artifact(0.3)
    art.signals["qa"] = {"T1": "estimator", "T2": "estimator"}
    ts = tiers(config)
    res = Cascade(config, ts, policy=art, estimator=AnswerFreeEstimator(0.6)).run("qa", "q")  # type: ignore[arg-type]
    assert res.tier == "T3" and ts["T1"].calls == [] and ts["T2"].calls == []  # type: ignore[attr-defined]
    assert res.steps[0]["skipped_reason"] == "query-only signal rejects before the call"
    ts2 = tiers(config)
    res2 = Cascade(config, ts2, policy=art, estimator=AnswerFreeEstimator(0.1)).run("qa", "q")  # type: ignore[arg-type]
    assert res2.tier == "T1" and len(ts2["T1"].calls) == 1  # type: ignore[attr-defined]


def test_failing_top_serves_the_lowest_p_hat_answer_degraded(config: EnsembleConfig) -> None:
    ts = tiers(config, T1=gen(0.8, text="t1"), T2=gen(0.5, text="t2"), T3=Generation(text="", error="HTTP 500"))
    res = Cascade(config, ts, policy=_artifact(0.3)).run("qa", "q")
    assert res.tier == "T2" and res.generation.text == "t2" and res.degraded


def test_feedback_moves_lambda_and_config_wires_online(config: EnsembleConfig, tmp_path: Path) -> None:
    art = _artifact(0.3)
    ol = OnlineLambda.from_artifact(art, gamma=0.1)
    casc = Cascade(config, tiers(config, T1=gen(0.1)), policy=art, online=ol)
    res = casc.run("qa", "q")
    assert res.tier == "T1"
    assert casc.feedback(res, quality=0.0, top_quality=1.0) == 1  # regret 1
    assert ol.lam("qa") == pytest.approx(0.3 + 0.1 * (0.026 - 1.0))
    res2 = casc.run("qa", "q")  # lambda is now 0.2026 < 0.25? u=0.1 still accepted
    assert res2.tier == "T1"
    # cascade.online in the config builds a persisted OnlineLambda for a certified policy
    cfg = config.model_copy(deep=True)
    cfg.cascade.online = True
    cfg.cascade.online_state = str(tmp_path / "lam.json")
    c2 = Cascade(cfg, tiers(cfg, T1=gen(0.1)), policy=art)
    assert isinstance(c2.online, OnlineLambda)
    c2.feedback(c2.run("qa", "q"), quality=1.0, top_quality=1.0)
    assert (tmp_path / "lam.json").exists()
    # served at the top: regret 0 without auditing the top
    assert c2.feedback({"task": "qa", "tier": "T3", "ladder": ["T1", "T2", "T3"]}, quality=0.0) == 1
    assert c2.online.status()["tasks"]["qa"]["steps"] == 2


# -- calibrate_policy replays the real Cascade -----------------------------------------


def synthetic_rows(n: int, seed: int) -> list[MatrixRow]:
    world = World()
    q, u = world.draw(n, np.random.default_rng(seed))
    costs = (0.01, 0.03, 0.1)
    rows = []
    for i in range(n):
        outs = {
            t: Outcome(quality=float(q[i, j]), uncertainty=float(u[i, j]), cost=costs[j], latency_s=0.1,
                       response=f"a{j}", tokens_in=5, tokens_out=2)
            for j, t in enumerate(("T1", "T2", "T3"))
        }
        rows.append(MatrixRow(id=f"r{seed}-{i}", task="qa", prompt=f"query {seed}-{i}", outcomes=outs))
    return rows


class BatchRouter:
    """decide_batch + ladder, like routenlp.router.inference.Router: b > 0.2 starts at T1."""

    rule = "success"

    def ladder(self, task: str) -> list[str]:
        return ["T1", "T2", "T3"]

    def decide_batch(self, tasks: list[str], texts: list[str], *, cost_bias: float | None = None) -> list[Any]:
        t = "T1" if (cost_bias or 0.0) > 0.2 else "T2"
        return [FakeRouter(t).decide(task, x) for task, x in zip(tasks, texts)]

    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Any:
        return self.decide_batch([task], [text], cost_bias=cost_bias)[0]


def test_calibrate_policy_replays_the_cascade_and_holds_on_test(config: EnsembleConfig, tmp_path: Path) -> None:
    cal, test = synthetic_rows(1200, 1), synthetic_rows(4000, 2)
    art = calibrate_policy(config, cal, router=BatchRouter(), alpha=0.05, delta=0.1,
                           biases=[0.0, 0.5], lambdas=(0.0, 0.1, 0.2, 0.3, 0.5, 1.0))
    cert = art.certificate
    assert cert.certified and cert.n_A + cert.n_B == 1200 and cert.p_value is not None and cert.p_value <= 0.1
    assert cert.population == "marginal over the calibration task mix: {qa: 100.0%}"
    assert 0 < art.theta.lam < 1 and set(art.maps["qa"]) == {"T1", "T2"}
    p = art.save(tmp_path / "policy.json")
    loaded = PolicyArtifact.load(p)
    # serve the test split through the real Cascade with the artifact
    from routenlp.bench.routenlp_eval import _FixedBiasRouter, _request_builder
    from routenlp.tiers.replay import build_replay_tiers

    rt = _FixedBiasRouter(BatchRouter(), [r.task for r in test], [r.prompt for r in test], loaded.theta.b)
    casc = Cascade(config, build_replay_tiers(config, test), router=rt, policy=loaded,
                   request_builder=_request_builder)
    regret, cost = [], []
    for r in test:
        res = casc.run(r.task, r.prompt, id=r.id)
        regret.append(max(0.0, (r.quality("T3") or 0.0) - (res.generation.quality or 0.0)))
        cost.append(res.total_cost)
    assert np.mean(regret) <= 0.05 + 0.01
    assert np.mean(cost) < 0.1  # cheaper than the top alone (0.1 per query)


def test_per_task_refuses_small_tasks_with_the_n_needed(config: EnsembleConfig) -> None:
    cfg = parse_config({**config.model_dump(mode="json", exclude_none=True),
                        "tasks": [{"name": "qa", "tau": 0.5, "sla_ms": 1000}, {"name": "tiny", "tau": 0.5, "sla_ms": 1000}]})
    rows = synthetic_rows(600, 3) + [r.model_copy(update={"task": "tiny", "id": "t" + r.id})
                                     for r in synthetic_rows(40, 4)]
    art = calibrate_policy(cfg, rows, alpha=0.05, per_task=True, lambdas=(0.0, 0.2, 0.5))
    assert art.per_task["tiny"].refused and "needs n_B >= 45" in art.per_task["tiny"].refused
    assert art.per_task["qa"].certificate is not None
    assert art.theta_for("tiny") == art.theta
    assert "tiny: 6.2%" in art.certificate.population
    assert art.theta_for("qa") == art.per_task["qa"].theta
    assert isinstance(art.theta_for("qa"), Theta)


def test_bar_loss_counts_misses_of_tau_where_the_top_meets_it(config: EnsembleConfig) -> None:
    from routenlp.conformal.certify import replay_evaluator, task_alphas

    rows = synthetic_rows(300, 3)
    art = calibrate_policy(config, rows, router=BatchRouter(), quality_target=0.9, loss="bar",
                           biases=[0.0], lambdas=(0.0, 1.0))
    assert art.certificate.measure == "bar"
    assert "miss their task's tau" in art.certificate.plain()
    # alpha_t = (1 - Q) * share of rows where the top meets tau (not its mean quality)
    meets = np.mean([(r.quality("T3") or 0.0) >= 0.5 for r in rows])
    assert task_alphas(rows, {"qa": ["T1", "T2", "T3"]}, 0.9, loss="bar", taus={"qa": 0.5})["qa"] == pytest.approx(0.1 * meets)
    # lambda = 1 accepts the router's tier (T2 at b = 0): loss = 1[top >= tau > T2]
    loss, _ = replay_evaluator(config, rows, art, router=BatchRouter(), loss="bar")(Theta(b=0.0, lam=1.0))
    expected = [float((r.quality("T3") or 0) >= 0.5 and (r.quality("T2") or 0) < 0.5) for r in rows]
    assert set(np.unique(loss)) <= {0.0, 1.0}
    assert loss.tolist() == expected
    # lambda = 0 (always the top): no miss by construction
    loss0, _ = replay_evaluator(config, rows, art, router=BatchRouter(), loss="bar")(Theta(b=0.0, lam=0.0))
    assert loss0.sum() == 0
