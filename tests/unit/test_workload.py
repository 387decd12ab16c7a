"""The built-in workload: determinism, heavy-tailed difficulty, file format, round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routenlp.errors import DataError, UnknownTaskError
from routenlp.tasks import get_task_spec
from routenlp.workloads import (
    BUILTIN_TASKS,
    builtin_labels,
    builtin_task_configs,
    generate_task_rows,
    generate_workload,
    load_task_rows,
    task_rows,
)

SHARED_NAMES = {"fin_ner", "fin_summ", "cs_intent", "cs_reply", "legal_clause", "legal_risk"}


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_workload(tmp_path_factory.mktemp("wl"), seed=13, n_train=300, n_test=100)


def test_same_task_names_as_shared_data() -> None:
    assert set(BUILTIN_TASKS) == SHARED_NAMES


def test_writes_files_and_cards(workload: dict[str, Path]) -> None:
    assert set(workload) == SHARED_NAMES
    for name, task_dir in workload.items():
        card = json.loads((task_dir / "card.json").read_text())
        assert card["n_train"] == 300 and card["n_test"] == 100 and card["seed"] == 13
        assert card["metric"] == BUILTIN_TASKS[name].metric
        assert card["kind"] in ("classification", "extraction", "generation")
        assert card["labels"] == (builtin_labels(name) or [])
        assert card["notes"]


def test_exact_jsonl_format(workload: dict[str, Path]) -> None:
    for name, task_dir in workload.items():
        for split in ("train", "test"):
            raw = (task_dir / f"{split}.jsonl").read_text(encoding="utf-8")
            lines = raw.splitlines()
            assert raw.endswith("\n") and "\r" not in raw
            rows = [json.loads(line) for line in lines]
            # sorted keys, default separators, non-ASCII kept: exactly the shared format
            assert lines == [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows]
            assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
            assert all({"id", "task", "input", "reference", "difficulty"} <= set(r) for r in rows)
            assert all(r["task"] == name for r in rows)


def test_inputs_are_distinct_within_and_across_splits(workload: dict[str, Path]) -> None:
    for task_dir in workload.values():
        rows = load_task_rows(task_dir / "train.jsonl") + load_task_rows(task_dir / "test.jsonl")
        keys = [" ".join(r["input"].casefold().split()) for r in rows]
        assert len(set(keys)) == len(keys)


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path: Path) -> None:
    a = generate_workload(tmp_path / "a", seed=7, n_train=40, n_test=20)
    b = generate_workload(tmp_path / "b", seed=7, n_train=40, n_test=20)
    c = generate_workload(tmp_path / "c", seed=8, n_train=40, n_test=20)
    for name in SHARED_NAMES:
        for split in ("train.jsonl", "test.jsonl"):
            assert (a[name] / split).read_bytes() == (b[name] / split).read_bytes()
            assert (a[name] / split).read_bytes() != (c[name] / split).read_bytes()


def test_task_subset_does_not_change_a_task(tmp_path: Path) -> None:
    alone = generate_workload(tmp_path / "one", seed=13, n_train=30, n_test=10, tasks="legal_risk")
    both = generate_workload(tmp_path / "two", seed=13, n_train=30, n_test=10, tasks=["cs_intent", "legal_risk"])
    assert set(alone) == {"legal_risk"}
    assert (alone["legal_risk"] / "test.jsonl").read_bytes() == (both["legal_risk"] / "test.jsonl").read_bytes()


def test_test_split_is_stable_across_train_sizes() -> None:
    _, test_small = generate_task_rows("cs_intent", n_train=10, n_test=50)
    _, test_large = generate_task_rows("cs_intent", n_train=500, n_test=50)
    assert test_small == test_large


def test_difficulty_is_heavy_tailed(workload: dict[str, Path]) -> None:
    for name, task_dir in workload.items():
        for split in ("train", "test"):
            diffs = [r["difficulty"] for r in load_task_rows(task_dir / f"{split}.jsonl")]
            assert all(0.0 <= d <= 1.0 for d in diffs)
            routine = sum(d < 0.45 for d in diffs) / len(diffs)
            hard = sum(d >= 0.7 for d in diffs) / len(diffs)
            # the largest bucket is routine; a heavy hard tail (DIFFICULTY_MIX: 45/20/35)
            assert routine == pytest.approx(0.45, abs=0.03), (name, split, routine)
            assert hard == pytest.approx(0.35, abs=0.03), (name, split, hard)


def test_hard_rows_are_harder(workload: dict[str, Path]) -> None:
    ner = load_task_rows(workload["fin_ner"] / "train.jsonl")
    easy = [len(r["reference"]) for r in ner if r["difficulty"] < 0.45]
    hard = [len(r["reference"]) for r in ner if r["difficulty"] >= 0.7]
    assert sum(hard) / len(hard) > sum(easy) / len(easy) + 2
    risk = load_task_rows(workload["legal_risk"] / "train.jsonl")
    rare_easy = sum(r["reference"] == "clearly_unfair" for r in risk if r["difficulty"] < 0.45)
    rare_hard = sum(r["reference"] == "clearly_unfair" for r in risk if r["difficulty"] >= 0.7)
    n_easy = sum(r["difficulty"] < 0.45 for r in risk)
    n_hard = sum(r["difficulty"] >= 0.7 for r in risk)
    assert rare_hard / n_hard > rare_easy / n_easy


def test_texts_are_short_enough_for_small_models(workload: dict[str, Path]) -> None:
    for name, task_dir in workload.items():
        rows = load_task_rows(task_dir / "train.jsonl") + load_task_rows(task_dir / "test.jsonl")
        words = [len(r["input"].split()) for r in rows]
        if name == "fin_summ":
            assert max(words) < 150
            assert all(1 <= len(r["reference"].splitlines()) <= 3 for r in rows)
        else:
            assert sum(w < 60 for w in words) / len(words) >= 0.95, name


def test_classification_labels_cover_the_label_set(workload: dict[str, Path]) -> None:
    for name in ("cs_intent", "legal_clause", "legal_risk"):
        labels = builtin_labels(name)
        assert labels and 3 <= len(labels) <= 15
        rows = load_task_rows(workload[name] / "train.jsonl")
        assert {r["reference"] for r in rows} == set(labels)


def test_ner_entities_are_substrings_in_sentence_order(workload: dict[str, Path]) -> None:
    for row in load_task_rows(workload["fin_ner"] / "train.jsonl"):
        pos = 0
        for ent in row["reference"]:
            assert ent["type"] in ("PER", "LOC", "ORG")
            found = row["input"].find(ent["text"], pos)
            assert found >= 0, (row["id"], ent)
            pos = found + len(ent["text"])


def test_gold_round_trips_through_parser_and_metric(workload: dict[str, Path]) -> None:
    """reference_text(gold) parsed back scores 1.0 for every task kind."""
    for cfg in builtin_task_configs(next(iter(workload.values())).parent):
        spec = get_task_spec(cfg)
        rows = load_task_rows(Path(cfg.data or "") / "test.jsonl")
        for row in rows:
            text = spec.reference_text(row["reference"])
            assert spec.score(spec.parse(text), row["reference"]) == pytest.approx(1.0), row["id"]
        preds = [spec.parse(spec.reference_text(r["reference"])) for r in rows]
        assert spec.dataset_score(preds, [r["reference"] for r in rows]) == pytest.approx(1.0)


def test_task_rows_uses_data_or_builtin(workload: dict[str, Path]) -> None:
    cfg = BUILTIN_TASKS["legal_risk"].task_config()
    assert task_rows(cfg, "test") == generate_task_rows("legal_risk")[1]
    with_data = BUILTIN_TASKS["legal_risk"].task_config(str(workload["legal_risk"]))
    assert task_rows(with_data, "test") == load_task_rows(workload["legal_risk"] / "test.jsonl")


def test_unknown_task_names_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(UnknownTaskError, match="nope"):
        generate_workload(tmp_path, tasks="cs_intent,nope")
    with pytest.raises(UnknownTaskError, match="built-in"):
        generate_task_rows("nope")
    assert builtin_labels("nope") is None
    assert builtin_labels("cs_reply") is None


def test_load_task_rows_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "task": "t", "input": "x", "reference": "y"}\n\n{"id": "b", broken\n')
    with pytest.raises(DataError, match=re.escape(f"{p}:3: not valid JSON")):
        load_task_rows(p)
    p.write_text('{"id": "a", "task": "t", "input": "x"}\n')
    with pytest.raises(DataError, match=re.escape(f"{p}:1: missing key(s) ['reference']")):
        load_task_rows(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=":1: expected a JSON object"):
        load_task_rows(p)
    with pytest.raises(DataError, match="not found"):
        load_task_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        load_task_rows(tmp_path)


def test_cli_generate(tmp_path: Path) -> None:
    from routenlp.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app, ["workload", "generate", "--out", str(out), "--n-train", "12", "--n-test", "5", "--tasks", "cs_intent,fin_ner"]
    )
    assert result.exit_code == 0, result.output
    assert "cs_intent" in result.output and "fin_ner" in result.output
    assert len(load_task_rows(out / "cs_intent" / "train.jsonl")) == 12
    assert len(load_task_rows(out / "fin_ner" / "test.jsonl")) == 5
    assert not (out / "legal_risk").exists()
    bad = runner.invoke(app, ["workload", "generate", "--out", str(out), "--tasks", "nope"])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output
