"""`routenlp calibrate` / `train-estimator` end to end on the shared routing matrices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from routenlp.cli import app
from routenlp.conformal.thresholds import Thresholds
from routenlp.matrix import MatrixRow, Outcome, read_matrix, write_matrix

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output + (res.stderr if res.stderr_bytes is not None else "")


@pytest.mark.parametrize("bench", ["routerbench_slices", "llmrouter_14task"])
def test_public_matrices_have_no_signal_and_never_accept(
    bench: str, require_shared_data: Path, tmp_path: Path
) -> None:
    d = require_shared_data / "routing" / bench
    rows = read_matrix(d / "train.jsonl")
    # the public matrices record no uncertainty/confidence (nulls)
    assert all(o.risk() is None for r in rows for o in r.outcomes.values())
    out = tmp_path / "T.json"
    code, text = invoke(
        "calibrate", "--models", str(d / "models.json"), "--matrix", str(d / "train.jsonl"),
        "--alpha", "0.05", "--out", str(out),
    )
    assert code == 0, text
    raw = json.loads(out.read_text())
    assert raw["alpha"] == 0.05 and raw["method"] == "crc"
    th = Thresholds.load(out)
    models = json.loads((d / "models.json").read_text())
    non_top = [m["name"] for m in models][:-1]
    tasks = {r.task for r in rows}
    assert set(th.thresholds) == tasks
    for task in tasks:
        assert set(th.thresholds[task]) == set(non_top)
    for _task, _tier, e in th.pairs():
        assert e.delta is None and e.reason and "no uncertainty signal" in e.reason
    assert "never accept" in text and "--estimator" in text


def _synthetic_matrix(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        outs = {}
        for tier in ("T1", "T2", "T3"):
            u = float(rng.random())
            outs[tier] = Outcome(quality=float(rng.random() > 0.05 + 0.5 * u), uncertainty=u, cost=0.001)
        rows.append(MatrixRow(id=str(i), task="qa", prompt=f"q{i}", outcomes=outs))
    write_matrix(path, rows)


def test_calibrate_with_config_crc_and_ltt(tmp_path: Path) -> None:
    cfg = {
        "tiers": [
            {"name": n, "kind": "replay", "price_in": p, "price_out": p}
            for n, p in (("T1", 0.01), ("T2", 0.1), ("T3", 1.0))
        ],
        "tasks": [{"name": "qa", "tau": 0.5}],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _synthetic_matrix(tmp_path / "cal.jsonl", 600, seed=5)
    for method in ("crc", "ltt"):
        out = tmp_path / f"T_{method}.json"
        code, text = invoke(
            "calibrate", "--config", str(tmp_path / "c.yaml"), "--matrix", str(tmp_path / "cal.jsonl"),
            "--alpha", "0.05", "--method", method, "--out", str(out),
        )
        assert code == 0, text
        th = Thresholds.load(out)
        assert th.method == method
        for tier in ("T1", "T2"):
            e = th.entry("qa", tier)
            assert e is not None and e.delta is not None and e.n == 600
            assert e.bound is not None and (e.bound <= 0.05 if method == "crc" else e.bound > 0)
        assert "qa" in text and "T1" in text and "2 of 2" in text


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    code, text = invoke("calibrate", "--matrix", str(tmp_path / "nope.jsonl"), "--models", "x.json", "--out", str(tmp_path / "o.json"))
    assert code == 2 and "not found" in text and "Traceback" not in text
    _synthetic_matrix(tmp_path / "m.jsonl", 10, seed=1)
    code, text = invoke("calibrate", "--matrix", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.json"))
    assert code == 2 and "exactly one of --config" in text


@pytest.mark.slow
def test_estimator_path_on_routerbench(require_shared_data: Path, tmp_path: Path) -> None:
    """train-estimator on a train slice (real MiniLM), calibrate on a disjoint test slice."""
    d = require_shared_data / "routing" / "routerbench_slices"
    models = json.loads((d / "models.json").read_text())
    tiers = ",".join(m["name"] for m in models[:2])
    train = read_matrix(d / "train.jsonl")
    test = read_matrix(d / "test.jsonl")
    keep = [m["name"] for m in models[:2]] + [models[-1]["name"]]

    def slim(rows: list[MatrixRow]) -> list[MatrixRow]:
        return [
            r.model_copy(update={"outcomes": {k: v for k, v in r.outcomes.items() if k in keep}})
            for r in rows
            if r.task == "arc_challenge"
        ]

    write_matrix(tmp_path / "train.jsonl", slim(train)[:200])
    write_matrix(tmp_path / "cal.jsonl", slim(test)[:200])
    code, text = invoke(
        "train-estimator", "--models", str(d / "models.json"), "--matrix", str(tmp_path / "train.jsonl"),
        "--tiers", tiers, "--out", str(tmp_path / "est"),
    )
    assert code == 0, text
    out = tmp_path / "T.json"
    code, text = invoke(
        "calibrate", "--models", str(d / "models.json"), "--matrix", str(tmp_path / "cal.jsonl"),
        "--alpha", "0.1", "--estimator", str(tmp_path / "est"), "--out", str(out),
    )
    assert code == 0, text
    th = Thresholds.load(out)
    for tier in keep[:2]:
        e = th.entry("arc_challenge", tier)
        assert e is not None and e.signal == "estimator" and e.n == 200
        if e.delta is not None:
            assert e.bound is not None and e.bound <= 0.1
    # calibrating on the estimator's own training rows is refused
    code, text = invoke(
        "calibrate", "--models", str(d / "models.json"), "--matrix", str(tmp_path / "train.jsonl"),
        "--alpha", "0.1", "--estimator", str(tmp_path / "est"), "--out", str(out),
    )
    assert code == 2 and "disjoint" in text


def test_cascade_replays_routerbench_with_no_signal_thresholds(
    require_shared_data: Path, tmp_path: Path
) -> None:
    """No signal recorded -> every non-top pair never accepts -> the top tier serves all,
    and the never-accepting tiers are skipped without being paid for."""
    from routenlp.cascade import Cascade
    from routenlp.config import config_from_models_json
    from routenlp.conformal.thresholds import calibrate
    from routenlp.tiers.replay import build_replay_tiers

    d = require_shared_data / "routing" / "routerbench_slices"
    train, test = read_matrix(d / "train.jsonl"), read_matrix(d / "test.jsonl")[:60]
    cfg = config_from_models_json(d / "models.json", sorted({r.task for r in train}))
    th = calibrate(cfg, train, alpha=0.05)
    casc = Cascade(cfg, build_replay_tiers(cfg, test), thresholds=th)
    top = cfg.tier_names[-1]
    for r in test:
        res = casc.run(r.task, r.prompt, id=r.id)
        assert res.tier == top
        assert res.generation.quality == r.outcomes[top].quality
        assert res.total_cost == pytest.approx(r.outcomes[top].cost or 0.0)
        assert all(s["skipped_reason"] for s in res.steps[:-1])


def test_cascade_replay_violation_rate_on_synthetic_matrix(tmp_path: Path) -> None:
    """Calibrate on one split, replay another through the Cascade: accepted-but-bad <= ~alpha."""
    from routenlp.cascade import Cascade
    from routenlp.config import parse_config
    from routenlp.conformal.thresholds import calibrate
    from routenlp.tiers.replay import build_replay_tiers

    cfg = parse_config(
        {
            "tiers": [
                {"name": n, "kind": "replay", "price_in": p, "price_out": p}
                for n, p in (("T1", 0.01), ("T2", 0.1), ("T3", 1.0))
            ],
            "tasks": [{"name": "qa", "tau": 0.5}],
        }
    )
    _synthetic_matrix(tmp_path / "cal.jsonl", 2000, seed=21)
    _synthetic_matrix(tmp_path / "test.jsonl", 2000, seed=22)
    th = calibrate(cfg, read_matrix(tmp_path / "cal.jsonl"), alpha=0.05)
    test = read_matrix(tmp_path / "test.jsonl")
    casc = Cascade(cfg, build_replay_tiers(cfg, test), thresholds=th)
    bad_at = {"T1": 0, "T2": 0}
    visits = {"T1": 0, "T2": 0}
    for r in test:
        res = casc.run("qa", r.prompt, id=r.id)
        for s in res.steps:
            if s["tier"] in visits:
                visits[s["tier"]] += 1
                bad_at[s["tier"]] += bool(s["accepted"] and r.outcomes[s["tier"]].quality < 0.5)
    for tier in ("T1", "T2"):
        rate = bad_at[tier] / visits[tier]
        assert rate <= 0.05 + 0.02, (tier, rate)  # one split: expected <= alpha, sampling noise


def _correlated_matrix(path: Path, n: int, seed: int) -> None:
    """Three tiers with a shared latent difficulty (routenlp.conformal.simulate.World)."""
    from routenlp.conformal.simulate import World

    q, u = World().draw(n, np.random.default_rng(seed))
    rows = []
    for i in range(n):
        outs = {
            t: Outcome(quality=float(q[i, j]), uncertainty=float(u[i, j]), cost=c, latency_s=0.2,
                       tokens_in=5, tokens_out=2, response="a")
            for j, (t, c) in enumerate((("T1", 0.01), ("T2", 0.03), ("T3", 0.1)))
        }
        rows.append(MatrixRow(id=f"{seed}-{i}", task="qa", prompt=f"q{seed}-{i}", outcomes=outs))
    write_matrix(path, rows)


def test_calibrate_certified_policy_cli(tmp_path: Path) -> None:
    from routenlp.conformal.certify import PolicyArtifact

    cfg = {
        "tiers": [
            {"name": n, "kind": "replay", "price_in": p, "price_out": p}
            for n, p in (("T1", 0.01), ("T2", 0.1), ("T3", 1.0))
        ],
        "tasks": [{"name": "qa", "tau": 0.5}],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _correlated_matrix(tmp_path / "cal.jsonl", 1000, seed=7)
    _correlated_matrix(tmp_path / "train.jsonl", 500, seed=8)
    base = ["calibrate", "--config", str(tmp_path / "c.yaml"), "--matrix", str(tmp_path / "cal.jsonl")]
    out, js = tmp_path / "P.json", tmp_path / "cert.json"
    code, text = invoke(*base, "--policy", "certified", "--train-matrix", str(tmp_path / "train.jsonl"),
                        "--quality-target", "0.95", "--delta", "0.1", "--out", str(out), "--json", str(js))
    assert code == 0, text
    art = PolicyArtifact.load(out)
    payload = json.loads(js.read_text())
    assert payload["policy"] == "certified" and payload["plain"] == art.certificate.plain()
    # alpha_t = (1 - 0.95) * mean train quality of the top (~0.99)
    assert art.alphas["qa"] == pytest.approx(0.05 * np.mean([r.quality("T3") for r in read_matrix(tmp_path / "train.jsonl")]))
    assert art.certificate.certified and "with probability >= 90%, mean regret vs the top tier <=" in " ".join(text.split())
    code, text = invoke(*base, "--policy", "certified", "--guarantee", "expected", "--alpha", "0.05", "--out", str(out))
    assert code == 0, text
    assert PolicyArtifact.load(out).certificate.guarantee == "expected" and "in expectation" in " ".join(text.split())
    for bad, msg in ((["--policy", "best"], "--policy must be"), (["--policy", "certified", "--delta", "2"], "--delta must be"),
                     (["--policy", "certified", "--guarantee", "sure"], "--guarantee must be")):
        code, text = invoke(*base, *bad, "--out", str(out))
        assert code == 2 and msg in text and "Traceback" not in text, text
