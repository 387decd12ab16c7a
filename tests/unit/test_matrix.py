"""Quality matrix I/O and the log-prob -> u signal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from routenlp.errors import DataError
from routenlp.matrix import (
    MatrixRow,
    Outcome,
    append_rows,
    done_ids,
    read_matrix,
    repair_tail,
    write_matrix,
)
from routenlp.tiers.base import Generation, token_uncertainty


def rows() -> list[MatrixRow]:
    return [
        MatrixRow(
            id="q1",
            task="qa",
            prompt="2+2?",
            reference="4",
            outcomes={
                "small": Outcome(quality=0.0, cost=0.001, latency_s=0.1, uncertainty=0.4, response="5"),
                "big": Outcome(quality=1.0, cost=0.01, latency_s=0.5, confidence=-0.1, response="4"),
            },
        ),
        MatrixRow(id="q2", task="qa", prompt="hi", outcomes={"small": Outcome(error="timeout")}),
    ]


def test_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    assert write_matrix(p, rows()) == 2
    back = read_matrix(p)
    assert back == rows()
    assert back[0].outcomes["small"].risk() == pytest.approx(0.4)
    assert back[0].outcomes["big"].risk() == pytest.approx(0.1)  # -confidence
    assert not back[1].outcomes["small"].ok


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"id": 1, "task": "qa", "outcomes": {}}\n{"id": 2, "task": "qa"}\n')
    with pytest.raises(DataError, match=r"m.jsonl:2: missing key 'outcomes'"):
        read_matrix(p)
    p.write_text("not json\n")
    with pytest.raises(DataError, match=r":1: not valid JSON"):
        read_matrix(p)
    with pytest.raises(DataError, match="not found"):
        read_matrix(tmp_path / "none.jsonl")


def test_resume_after_torn_write(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    append_rows(p, rows()[:1])
    with p.open("a") as fh:
        fh.write('{"id": "q2", "task": "qa", "outc')  # crash mid-line
    assert done_ids(p) == {"q1"}
    repair_tail(p)
    append_rows(p, rows()[1:])
    assert [r.id for r in read_matrix(p)] == ["q1", "q2"]


def test_token_uncertainty_hand_computed() -> None:
    lps = [math.log(0.9), math.log(0.5), 0.0]
    assert token_uncertainty(lps) == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert token_uncertainty([]) == 1.0
    assert token_uncertainty(None) is None
    assert Generation(text="x", logprobs=[math.log(0.8)]).token_uncertainty() == pytest.approx(0.2)


def test_reads_shared_routing_matrix(require_shared_data: Path) -> None:
    m = read_matrix(require_shared_data / "routing" / "routerbench_slices" / "test.jsonl")
    assert len(m) == 947
    assert "gpt-4-1106-preview" in m[0].outcomes
    assert all(o.quality in (0.0, 1.0) for r in m[:50] for o in r.outcomes.values() if o.quality is not None)


def _matrix_line(**outcome: object) -> str:
    import json

    return json.dumps({"id": "q1", "task": "t", "prompt": "p", "outcomes": {"T2": outcome}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"quality": 5.0}', r"m\.jsonl:2: row 'q1', outcomes\.T2\.quality: 5\.0 is outside \[0, 1\]"),
        ('{"quality": 1.0, "uncertainty": NaN}', r"m\.jsonl:2: .*outcomes\.T2\.uncertainty: nan is not a number"),
        ('{"quality": NaN}', r"outcomes\.T2\.quality: nan is not a number"),
        ('{"quality": 0.5, "cost": -1}', r"outcomes\.T2\.cost: -1\.0 is outside >= 0"),
        ('{"quality": 0.5, "latency_s": Infinity}', r"outcomes\.T2\.latency_s: inf is not a number"),
        ('{"quality": 0.5, "tokens_out": -3}', r"outcomes\.T2\.tokens_out: -3 is negative"),
    ],
)
def test_out_of_range_outcomes_are_rejected(tmp_path: Path, text: str, expected: str) -> None:
    good = _matrix_line(quality=1.0, uncertainty=0.1)
    bad = '{"id": "q1", "task": "t", "prompt": "p", "outcomes": {"T2": ' + text + "}}"
    path = tmp_path / "m.jsonl"
    path.write_text(good.replace('"q1"', '"q0"') + "\n" + bad + "\n")
    with pytest.raises(DataError, match=expected):
        read_matrix(path)


def test_null_fields_and_range_edges_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(_matrix_line(quality=0.0, uncertainty=None, cost=0.0, latency_s=None) + "\n")
    (row,) = read_matrix(path)
    assert row.outcomes["T2"].quality == 0.0 and row.outcomes["T2"].uncertainty is None
