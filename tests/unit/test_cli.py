"""The CLI lists every verb and turns user mistakes into one clear line, exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from routenlp.cli import app

VERBS = ["serve-tier", "label", "train-router", "route", "calibrate", "evaluate", "benchmark",
         "demo", "bench", "models", "tier", "workload"]


def test_help_lists_verbs() -> None:
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for verb in VERBS:
        assert verb in res.output, verb


def test_bad_config_key_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "tiers:\n  - {name: a, kind: replay, price_in: 1, price_out: 1, colour: red}\n"
        "tasks:\n  - {name: t}\n"
    )
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "task": "t", "input": "x", "reference": "y"}\n')
    res = CliRunner().invoke(app, ["label", "--config", str(cfg), "--data", str(data),
                                   "--out", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 2
    assert "tiers.0.colour" in res.output and "unknown key" in res.output
    assert "Traceback" not in res.output


def test_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    res = CliRunner().invoke(app, ["label", "--config", str(root / "examples" / "local-cpu.yaml"),
                                   "--data", str(tmp_path / "nope.jsonl"),
                                   "--out", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 2
    assert "not found" in res.output and "Traceback" not in res.output


def test_label_json_summary_with_the_simulated_frontier(tmp_path: Path) -> None:
    import json

    import yaml

    from routenlp.workloads import builtin_task_configs, task_rows

    task = next(t for t in builtin_task_configs() if t.name == "cs_intent")
    rows = task_rows(task, "test")[:6]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "tiers": [{"name": "T4", "kind": "reference", "price_in": 8.0, "price_out": 8.0,
                   "options": {"error_rate": 0.0}}],
        "tasks": [{"name": "cs_intent", "kind": "intent_classification", "metric": "accuracy"}],
    }))
    out = tmp_path / "m.jsonl"
    res = CliRunner().invoke(app, ["label", "--config", str(cfg), "--data", str(data),
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["written"] == 6 and summary["skipped"] == 0 and summary["errors"] == 0
    assert summary["tiers"] == {"T4": "T4 (simulated frontier (reference answers))"}
    (row,) = summary["summary"]
    assert row["tier"] == "T4" and row["quality"] == 1.0 and row["n"] == 6
    again = json.loads(CliRunner().invoke(app, ["-q", "label", "--config", str(cfg), "--data",
                                                str(data), "--out", str(out), "--json"]).stdout)
    assert again["written"] == 0 and again["skipped"] == 6


def test_workload_generate_json(tmp_path: Path) -> None:
    import json

    res = CliRunner().invoke(app, ["workload", "generate", "--out", str(tmp_path), "--n-train",
                                   "4", "--n-test", "3", "--tasks", "cs_intent", "--json"])
    assert res.exit_code == 0, res.output
    (task,) = json.loads(res.stdout)["tasks"]
    assert task["task"] == "cs_intent" and task["train"] == 4 and task["test"] == 3
