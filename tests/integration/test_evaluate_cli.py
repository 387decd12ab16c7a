"""The harness gives identical numbers whether called directly or through the CLI, with a
real trained router artifact and real calibrated thresholds (tiny matrix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from routenlp.matrix import MatrixRow, Outcome, write_matrix


def _rows(n: int, prefix: str, seed: int) -> list[MatrixRow]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hard = bool(rng.random() < 0.4)
        conf = float(rng.normal(-0.7 if hard else -0.2, 0.15))
        out.append(
            MatrixRow(
                id=f"{prefix}{i}",
                task="qa" if i % 3 else "math",
                prompt=(f"prove the theorem about primes number {i}" if hard else f"what colour is the sky {i}"),
                outcomes={
                    "small": Outcome(quality=0.0 if hard else 1.0, cost=0.001, latency_s=0.05, confidence=conf, response="x"),
                    "big": Outcome(quality=1.0, cost=0.01, latency_s=0.4, response="y"),
                },
            )
        )
    return out


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from routenlp.config import config_from_models_json
    from routenlp.conformal import calibrate
    from routenlp.router.train import train_router

    d = tmp_path_factory.mktemp("bench")
    (d / "models.json").write_text(json.dumps([
        {"name": "small", "price_in_per_1m": 1.0, "price_out_per_1m": 1.0},
        {"name": "big", "price_in_per_1m": 10.0, "price_out_per_1m": 10.0},
    ]))
    train, cal, test = _rows(90, "tr", 1), _rows(60, "ca", 2), _rows(30, "te", 3)
    for name, rows in (("train", train), ("cal", cal), ("test", test)):
        write_matrix(d / f"{name}.jsonl", rows)
    cfg = config_from_models_json(d / "models.json", ["qa", "math"])
    emb = np.random.default_rng(0).standard_normal((len(train), 384)).astype(np.float32)
    train_router(cfg, train, d / "router", backend="torch", embeddings=emb)
    calibrate(cfg, cal, alpha=0.2).save(d / "thresholds.json")
    return d


def test_direct_and_cli_give_identical_numbers(bench_dir: Path, tmp_path: Path) -> None:
    from routenlp.bench.harness import evaluate
    from routenlp.cli import app
    from routenlp.config import config_from_models_json
    from routenlp.conformal import Thresholds
    from routenlp.matrix import read_matrix
    from routenlp.report import referenced_images
    from routenlp.router.inference import Router

    d = bench_dir
    test = read_matrix(d / "test.jsonl")
    cfg = config_from_models_json(d / "models.json", ["qa", "math"])
    direct = evaluate(
        cfg, test, router=Router.load(d / "router", cfg), thresholds=Thresholds.load(d / "thresholds.json"),
        baselines="oracle,random", matrix_name=str(d / "test.jsonl"),
    ).to_json()

    out = tmp_path / "results.json"
    html = tmp_path / "report.html"
    res = CliRunner().invoke(app, [
        "evaluate", "--models", str(d / "models.json"), "--matrix", str(d / "test.jsonl"),
        "--router", str(d / "router"), "--thresholds", str(d / "thresholds.json"),
        "--baselines", "oracle,random", "--json", str(out), "--html", str(html),
        "--per-query", str(tmp_path / "pq.jsonl"),
    ])
    assert res.exit_code == 0, res.output
    via_cli = json.loads(out.read_text())
    assert via_cli["systems"] == json.loads(json.dumps(direct["systems"]))
    assert via_cli["matched"] == json.loads(json.dumps(direct["matched"]))
    assert set(via_cli["systems"]) >= {"routenlp", "routenlp-router-only", "routenlp-cascade-from-t1",
                                        "routenlp-no-sla", "always-small", "always-big", "oracle", "random"}
    assert "routenlp-router-only" in res.output and "always-big" in res.output
    page = html.read_text()
    assert page.startswith("<!doctype html>") and 'src="plots/cost_quality.png"' in page
    assert referenced_images(html) and all(p.is_file() for p in referenced_images(html))
    pq = [json.loads(line) for line in (tmp_path / "pq.jsonl").read_text().splitlines()]
    assert len(pq) == len(via_cli["systems"]) * via_cli["n_test"]
    assert {r["system"] for r in pq} == set(via_cli["systems"])
    assert via_cli["n_points"]["routenlp"] <= 40 and via_cli["bootstrap"]["resamples"] == 1000


def test_cli_rejects_a_bad_points_cap(bench_dir: Path) -> None:
    from routenlp.cli import app

    res = CliRunner().invoke(app, [
        "evaluate", "--models", str(bench_dir / "models.json"), "--matrix", str(bench_dir / "test.jsonl"),
        "--router", str(bench_dir / "router"), "--thresholds", str(bench_dir / "thresholds.json"),
        "--points", "0",
    ])
    assert res.exit_code == 2
    assert "--points" in res.output


def test_cli_clear_error_for_missing_file(bench_dir: Path) -> None:
    from routenlp.cli import app

    res = CliRunner().invoke(app, [
        "evaluate", "--models", str(bench_dir / "models.json"), "--matrix", str(bench_dir / "nope.jsonl"),
        "--router", str(bench_dir / "router"), "--thresholds", str(bench_dir / "thresholds.json"),
    ])
    assert res.exit_code == 2
    assert "quality matrix not found" in res.output


def test_json_dash_writes_one_document_to_stdout(bench_dir: Path) -> None:
    """`--json -` on evaluate and calibrate: stdout is exactly one JSON document, the tables
    go to stderr, and the next command prints to stdout again."""
    from routenlp.cli import app

    d = bench_dir
    runner = CliRunner()
    res = runner.invoke(app, [
        "evaluate", "--models", str(d / "models.json"), "--matrix", str(d / "test.jsonl"),
        "--router", str(d / "router"), "--thresholds", str(d / "thresholds.json"),
        "--baselines", "oracle", "--bootstrap", "0", "--json", "-",
    ])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"routenlp", "oracle", "always-big"} <= set(doc["systems"])
    assert "always-big" in res.stderr and "results ->" not in res.output

    res = runner.invoke(app, [
        "calibrate", "--models", str(d / "models.json"), "--matrix", str(d / "cal.jsonl"),
        "--alpha", "0.2", "--out", str(d / "T_dash.json"), "--json", "-",
    ])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["policy"] == "per-tier" and doc["alpha"] == 0.2
    assert "wrote" in res.stderr

    # the console is back on stdout for the next command
    res = runner.invoke(app, [
        "evaluate", "--models", str(d / "models.json"), "--matrix", str(d / "test.jsonl"),
        "--router", str(d / "router"), "--thresholds", str(d / "thresholds.json"),
        "--baselines", "oracle", "--bootstrap", "0",
    ])
    assert res.exit_code == 0, res.output
    assert "always-big" in res.stdout
