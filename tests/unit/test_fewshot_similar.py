"""Retrieved few-shot examples (`fewshot_select: similar`): nearest train rows, nearest last,
never the query itself, only rows under `fewshot_max_difficulty`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp.config import TaskConfig
from routenlp.tasks import get_task_spec


def _data(tmp_path: Path, rows: list[dict[str, object]]) -> str:
    d = tmp_path / "mail"
    d.mkdir()
    with (d / "train.jsonl").open("w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({"id": f"tr-{i}", "task": "mail", **r}) + "\n")
    (d / "card.json").write_text(json.dumps({"labels": ["refund", "card", "pin"]}))
    return str(d)


ROWS = [
    {"input": "I want a refund for my order from the shop", "reference": "refund", "difficulty": 0.1},
    {"input": "my new card has not arrived in the post", "reference": "card", "difficulty": 0.2},
    {"input": "how do I change the PIN of my card", "reference": "pin", "difficulty": 0.1},
    {"input": "refund refund refund please, the shop ignores me", "reference": "refund", "difficulty": 0.9},
]


def _spec(tmp_path: Path, **kw: object):  # noqa: ANN202
    task = TaskConfig(name="mail", kind="intent_classification", metric="accuracy",
                      data=_data(tmp_path, ROWS), fewshot_select="similar", **kw)
    return get_task_spec(task)


def test_nearest_example_comes_last(tmp_path: Path) -> None:
    spec = _spec(tmp_path, fewshot=2)
    shots = spec.similar_fewshot("where is my card? it has not arrived")
    assert len(shots) == 2
    assert shots[-1] == ("my new card has not arrived in the post", "card")
    req = spec.build_request("where is my card? it has not arrived")
    assert req.messages[-2]["content"] == "card"  # the nearest example's answer right before the query


def test_query_identical_to_a_train_row_is_not_shown(tmp_path: Path) -> None:
    spec = _spec(tmp_path, fewshot=3)
    shots = spec.similar_fewshot("how do I change the PIN of my card")
    assert all(x != "how do I change the PIN of my card" for x, _ in shots)


def test_max_difficulty_filters_the_pool(tmp_path: Path) -> None:
    spec = _spec(tmp_path, fewshot=4, fewshot_max_difficulty=0.45)
    shots = spec.similar_fewshot("refund please")
    assert len(shots) == 3
    assert all("refund refund" not in x for x, _ in shots)


def test_easy_selection_is_unchanged_by_default(tmp_path: Path) -> None:
    task = TaskConfig(name="mail", kind="intent_classification", metric="accuracy",
                      data=_data(tmp_path, ROWS), fewshot=2)
    spec = get_task_spec(task)
    a = spec.build_request("where is my card").messages
    b = spec.build_request("refund please").messages
    assert a[:-1] == b[:-1]  # the same examples for every query


def test_unknown_selection_is_rejected() -> None:
    with pytest.raises(ValueError, match="fewshot_select"):
        TaskConfig(name="x", fewshot_select="nearest")
