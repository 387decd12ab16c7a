"""Importers on small fixtures written by the tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from routenlp.bench.importers import (
    detect_format,
    import_per_model_csvs,
    import_routerbench,
    import_routing_data,
)
from routenlp.errors import DataError

RB_COLUMNS = [
    "sample_id", "prompt", "eval_name",
    "gpt-4", "gpt-4|model_response", "gpt-4|total_cost",
    "mistral-7b", "mistral-7b|model_response", "mistral-7b|total_cost",
]
RB_ROWS = [
    ["arc.0", "['Which is a mammal?']", "arc-challenge", "1.0", "B", "0.004", "0.0", "C", "0.0001"],
    ["arc.1", "What is 2+2?", "arc-challenge", "1", "4", "0.003", "1", "4", "0.0001"],
    ["mbpp.0", "Write f()", "mbpp", "0", "def f(): pass", "0.01", "", "", ""],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_routerbench_csv(tmp_path: Path) -> None:
    rows = import_routerbench(write_csv(tmp_path / "rb.csv", RB_COLUMNS, RB_ROWS))
    assert [r.id for r in rows] == ["arc.0", "arc.1", "mbpp.0"]
    assert rows[0].prompt == "Which is a mammal?"  # list-string prompt unwrapped
    assert rows[0].task == "arc-challenge"
    o = rows[0].outcomes["gpt-4"]
    assert (o.quality, o.cost, o.response) == (1.0, 0.004, "B")
    assert rows[2].outcomes["mistral-7b"].error == "no recorded outcome"
    assert not rows[2].outcomes["mistral-7b"].ok


def test_routerbench_jsonl_and_auto_detect(tmp_path: Path) -> None:
    p = tmp_path / "rb.jsonl"
    with p.open("w") as fh:
        for r in RB_ROWS:
            fh.write(json.dumps(dict(zip(RB_COLUMNS, r))) + "\n")
    assert detect_format(p) == "routerbench"
    rows = import_routing_data(p, task_map={"arc-challenge": "arc_challenge"})
    assert rows[1].task == "arc_challenge"
    assert rows[1].outcomes["mistral-7b"].quality == 1.0


def test_routerbench_missing_columns(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "bad.csv", ["prompt", "gpt-4", "gpt-4|total_cost"], [["x", "1", "0.1"]])
    with pytest.raises(DataError, match="'eval_name'"):
        import_routerbench(p)
    p2 = write_csv(tmp_path / "bad2.csv", RB_COLUMNS[:7], [r[:7] for r in RB_ROWS])
    with pytest.raises(DataError, match=r"'mistral-7b\|total_cost'"):
        import_routerbench(p2, models=["gpt-4", "mistral-7b"])
    with pytest.raises(DataError, match="not found"):
        import_routerbench(tmp_path / "nope.csv")


def test_per_model_csvs(tmp_path: Path) -> None:
    d = tmp_path / "gsm8k"
    d.mkdir()
    write_csv(d / "gpt-4.csv", ["id", "prompt", "correct", "response"], [["1", "2+2?", "True", "4"], ["2", "3+3?", "1", "6"]])
    write_csv(d / "llama.csv", ["id", "prompt", "score"], [["1", "2+2?", "0"]])
    assert detect_format(d) == "per_model_csv"
    rows = import_per_model_csvs(d)
    assert [r.id for r in rows] == ["1", "2"]
    assert rows[0].task == "gsm8k" and rows[0].prompt == "2+2?"
    assert rows[0].outcomes["gpt-4"].quality == 1.0 and rows[0].outcomes["gpt-4"].response == "4"
    assert rows[0].outcomes["llama"].quality == 0.0
    assert rows[1].outcomes["llama"].error  # missing from llama.csv


def test_per_model_csv_errors(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    write_csv(d / "m.csv", ["id", "prompt", "text"], [["1", "p", "t"]])
    with pytest.raises(DataError, match="no correctness/score column"):
        import_per_model_csvs(d)
    with pytest.raises(DataError, match=r"no CSV file for model\(s\) \['other'\]"):
        import_per_model_csvs(d, models=["other"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no <model>.csv"):
        import_per_model_csvs(empty)


def test_matrix_jsonl_passthrough(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "a", "task": "t", "prompt": "p", "outcomes": {"T1": {"quality": 1.0}}}) + "\n")
    assert detect_format(p) == "matrix"
    rows = import_routing_data(p)
    assert rows[0].outcomes["T1"].quality == 1.0
