"""`train-router` end to end through the CLI (typer CliRunner): a matrix-only run with
`--models`, registered in a real SQLite store, then `route` on the registered artifact."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from routenlp.cli import app
from routenlp.matrix import write_matrix
from routenlp.router.artifact import artifact_sha256
from routenlp.router.bench import synthetic_setup
from routenlp.store import Store


def test_train_router_cli_models_register_and_route(tmp_path):
    cfg, rows = synthetic_setup(n_rows=160, seed=5)
    matrix = tmp_path / "train.jsonl"
    write_matrix(matrix, rows)
    models = tmp_path / "models.json"
    models.write_text(
        json.dumps(
            [
                {"name": "small", "price_in_per_1m": 0.1, "price_out_per_1m": 0.1},
                {"name": "medium", "price_in_per_1m": 1.0, "price_out_per_1m": 1.0},
                {"name": "large", "price_in_per_1m": 10.0, "price_out_per_1m": 10.0},
            ]
        )
    )
    url = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "router"
    runner = CliRunner()
    args = ["train-router", "--matrix", str(matrix), "--models", str(models), "--out", str(out)]
    res = runner.invoke(app, [*args, "--register", "--store", url])
    assert res.exit_code == 0, res.output
    assert "decision rule success" in res.output and "(registered)" in res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tiers"] == ["small", "medium", "large"]
    assert meta["decision"]["rule"] == "success" and "cost_bias" in meta["decision"]

    store = Store(url)
    rec = store.active_artifact("router")
    assert rec is not None and rec.version == 1 and rec.active
    assert rec.path == str(out.resolve())
    assert rec.sha256 == artifact_sha256(out)
    assert rec.config_hash == meta["config_hash"]
    assert rec.metadata is not None and rec.metadata["tiers"] == meta["tiers"]
    assert rec.metadata["decision"]["rule"] == "success"

    # retraining registers version 2 and makes it the active one
    res = runner.invoke(app, [*args, "--register", "--store", url])
    assert res.exit_code == 0, res.output
    assert store.active_artifact("router").version == 2
    assert [a.active for a in sorted(store.list_artifacts("router"), key=lambda a: a.version)] == [False, True]

    # `--json -`: the training report is the only thing on stdout
    res = runner.invoke(app, [*args, "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["decision"]["rule"] == "success" and "decision rule success" in res.stderr

    res = runner.invoke(app, ["route", "--router", rec.path, "--task", "alpha", "--json", "refund my card please"])
    assert res.exit_code == 0, res.output
    decision = json.loads(res.output)
    assert decision["tier"] in meta["tiers"] and set(decision["success"]) == set(meta["tiers"])

    # user errors are one clear message with exit code 2
    res = runner.invoke(app, ["route", "--router", str(out), "--task", "nope", "hello"])
    assert res.exit_code == 2 and "not trained on task 'nope'" in res.output
    res = runner.invoke(app, ["train-router", "--matrix", str(matrix), "--out", str(out)])
    assert res.exit_code == 2 and "--config" in res.output
