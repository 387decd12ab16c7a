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
