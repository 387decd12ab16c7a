"""TaskSpec: label resolution, prompts, parse/score/dataset_score, shared data loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp.config import TASK_KINDS, TaskConfig
from routenlp.errors import UnknownTaskError
from routenlp.tasks import get_task_spec
from routenlp.tiers.base import Request
from routenlp.workloads import builtin_labels, load_task_rows


def _task(**kw: object) -> TaskConfig:
    return TaskConfig(**{"name": "t", "kind": "generic", "metric": "accuracy", **kw})


# -- labels ----------------------------------------------------------------------------
def test_labels_from_config_win() -> None:
    spec = get_task_spec(_task(name="cs_intent", kind="intent_classification", labels=["x", "y"]))
    assert spec.labels == ["x", "y"]


def test_labels_from_card_json(tmp_path: Path) -> None:
    (tmp_path / "card.json").write_text(json.dumps({"labels": ["spam", "ham"]}))
    spec = get_task_spec(_task(name="mail", kind="intent_classification", data=str(tmp_path)))
    assert spec.labels == ["spam", "ham"]


def test_labels_from_builtin_workload() -> None:
    spec = get_task_spec(_task(name="legal_risk", kind="risk_classification", metric="macro_f1"))
    assert spec.labels == ["clearly_unfair", "fair", "potentially_unfair"]
    assert spec.labels == builtin_labels("legal_risk")


def test_missing_labels_error_names_the_task(tmp_path: Path) -> None:
    with pytest.raises(UnknownTaskError, match="'tickets'"):
        get_task_spec(_task(name="tickets", kind="intent_classification", data=str(tmp_path)))


def test_every_config_kind_has_a_spec() -> None:
    for kind in TASK_KINDS:
        labels = ["a", "b"] if "classification" in kind else None
        spec = get_task_spec(_task(name=f"k_{kind}", kind=kind, labels=labels))
        assert spec.kind == kind


def test_generic_task_with_labels_classifies() -> None:
    spec = get_task_spec(_task(name="yn", kind="generic", labels=["yes", "no"]))
    assert spec.family == "classification"
    assert spec.parse("Yes, definitely.") == "yes"
    plain = get_task_spec(_task(name="qa", kind="generic", metric="rougeL"))
    assert plain.labels is None and plain.parse("Output: Paris") == "Paris"


# -- requests --------------------------------------------------------------------------
def test_build_request_classification_fills_prompt_and_messages() -> None:
    spec = get_task_spec(_task(name="cs_intent", kind="intent_classification"))
    req = spec.build_request(
        "my card never came", fewshot=[("where is my card", "card_arrival")], id="r1"
    )
    assert isinstance(req, Request)
    assert req.task == "cs_intent" and req.query == "my card never came" and req.id == "r1"
    for label in spec.labels or []:
        assert label in req.prompt and label in req.messages[0]["content"]
    assert req.prompt.endswith(
        "Input: where is my card\nOutput: card_arrival\n\nInput: my card never came\nOutput:"
    )
    assert [m["role"] for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[1]["content"] == "card_arrival"
    assert req.messages[-1]["content"] == "my card never came"
    assert 12 <= req.max_tokens <= 20


def test_build_request_zero_shot_chat_is_instruction_plus_query() -> None:
    spec = get_task_spec(_task(name="fin_summ", kind="summarisation", metric="rougeL"))
    req = spec.build_request("Revenue rose 5%.", fewshot=())
    assert len(req.messages) == 1
    content = req.messages[0]["content"]
    assert content.startswith(spec.instruction) and content.endswith("Revenue rose 5%.")
    assert req.prompt == f"{spec.instruction}\n\nInput: Revenue rose 5%.\nOutput:"
    assert req.max_tokens == 128


def test_build_request_extraction_renders_examples_in_parser_format() -> None:
    spec = get_task_spec(_task(name="fin_ner", kind="entity_extraction", metric="entity_f1"))
    req = spec.build_request(
        "Apple hired Tim Cook.",
        fewshot=[("Bank of Oslo fell.", [{"text": "Bank of Oslo", "type": "ORG"}]), ("Flat day.", [])],
    )
    assert "TYPE: text" in req.prompt and "NONE" in spec.instruction
    assert "Input: Bank of Oslo fell.\nOutput: ORG: Bank of Oslo\n\n" in req.prompt
    assert "Input: Flat day.\nOutput: NONE\n\n" in req.prompt
    assert req.max_tokens == 64


def test_prompt_override_and_max_tokens() -> None:
    spec = get_task_spec(
        _task(
            name="cs_reply",
            kind="reply_generation",
            metric="rougeL",
            prompt="Reply kindly to this customer: {input}",
            max_tokens=40,
        )
    )
    req = spec.build_request("Where is my card?", fewshot=())
    assert req.messages == [{"role": "user", "content": "Reply kindly to this customer: Where is my card?"}]
    assert req.prompt == "Reply kindly to this customer:\n\nInput: Where is my card?\nOutput:"
    assert req.max_tokens == 40
    assert spec.build_request("x", max_tokens=7).max_tokens == 7


def test_default_max_tokens_per_kind() -> None:
    def mt(kind: str, metric: str = "rougeL") -> int:
        return get_task_spec(_task(name=f"mt_{kind}", kind=kind, metric=metric, labels=["a"] if "class" in kind else None)).default_max_tokens

    assert mt("risk_classification", "accuracy") == 12
    assert mt("entity_extraction", "entity_f1") == 64
    assert mt("reply_generation") == 96
    assert mt("summarisation") == 128


# -- scoring ---------------------------------------------------------------------------
def test_score_accepts_raw_text_and_parsed_answers() -> None:
    spec = get_task_spec(_task(name="legal_risk", kind="risk_classification", metric="macro_f1"))
    assert spec.score("Potentially unfair.", "potentially_unfair") == 1.0
    assert spec.score("fair", "potentially_unfair") == 0.0
    assert spec.score(None, "fair") == 0.0
    ner = get_task_spec(_task(name="fin_ner", kind="entity_extraction", metric="entity_f1"))
    gold = [{"text": "Oslo", "type": "LOC"}]
    assert ner.score("LOC: Oslo", gold) == 1.0
    assert ner.score([{"text": "Oslo", "type": "LOCATION"}], gold) == 1.0
    assert ner.score("NONE", []) == 1.0
    summ = get_task_spec(_task(name="fin_summ", kind="summarisation", metric="rougeL"))
    assert summ.score("Output: revenue in march fell", "revenue rose sharply in march") == pytest.approx(2 / 3)
    q = get_task_spec(_task(name="matrix_task", kind="generic", metric="score"))
    assert q.score("whatever", 0.4) == 0.4


def test_dataset_score_macro_f1_and_mean() -> None:
    spec = get_task_spec(_task(name="mf", kind="risk_classification", metric="macro_f1", labels=["a", "b", "c"]))
    # see test_metrics: 4/9
    assert spec.dataset_score(["a", "b", "b", "nonsense"], ["a", "a", "b", "c"]) == pytest.approx(4 / 9)
    acc = get_task_spec(_task(name="acc", kind="intent_classification", labels=["a", "b"]))
    assert acc.dataset_score(["a", "B", "a"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    assert acc.dataset_score([], []) == 0.0


def test_reference_text_per_family() -> None:
    ner = get_task_spec(_task(name="fin_ner", kind="entity_extraction", metric="entity_f1"))
    assert ner.reference_text([{"text": "Oslo", "type": "LOC"}, {"text": "Ana Berg", "type": "PER"}]) == "LOC: Oslo\nPER: Ana Berg"
    assert ner.reference_text([]) == "NONE"
    summ = get_task_spec(_task(name="fin_summ", kind="summarisation", metric="rougeL"))
    assert summ.reference_text(" a\nb ") == "a\nb"


# -- shared data -----------------------------------------------------------------------
SHARED_KINDS = {
    "fin_ner": ("entity_extraction", "entity_f1"),
    "fin_summ": ("summarisation", "rougeL"),
    "cs_intent": ("intent_classification", "accuracy"),
    "cs_reply": ("reply_generation", "rougeL"),
    "legal_clause": ("clause_classification", "accuracy"),
    "legal_risk": ("risk_classification", "macro_f1"),
}


def test_shared_cs_intent_labels_come_from_card(require_shared_data: Path) -> None:
    data = require_shared_data / "tasks" / "cs_intent"
    spec = get_task_spec(TaskConfig(name="cs_intent", kind="intent_classification", data=str(data)))
    card = json.loads((data / "card.json").read_text())
    assert spec.labels == card["labels"] and len(spec.labels) == 77
    assert spec.labels != builtin_labels("cs_intent")


@pytest.mark.parametrize("name", sorted(SHARED_KINDS))
def test_shared_tasks_load_and_gold_round_trips(require_shared_data: Path, name: str) -> None:
    kind, metric = SHARED_KINDS[name]
    data = require_shared_data / "tasks" / name
    spec = get_task_spec(TaskConfig(name=name, kind=kind, metric=metric, data=str(data)))
    rows = load_task_rows(data / "test.jsonl")
    assert rows and all(r["task"] == name for r in rows)
    n = 40 if metric == "rougeL" else 150  # ROUGE on long replies is the slow part
    sample = rows[:: max(1, len(rows) // n)]
    for row in sample:
        parsed = spec.parse(spec.reference_text(row["reference"]))
        assert spec.score(parsed, row["reference"]) == pytest.approx(1.0), row["id"]


def test_default_fewshot_uses_train_examples_with_distinct_labels() -> None:
    spec = get_task_spec(
        TaskConfig(name="cs_intent", kind="intent_classification", metric="accuracy", fewshot=3)
    )
    shots = spec.default_fewshot
    assert len(shots) == 3
    assert len({ref for _, ref in shots}) == 3  # distinct labels
    req = spec.build_request("Where is my card?")
    assert all(f"Output: {ref}" in req.prompt for _, ref in shots)
    assert req.prompt.rstrip().endswith("Input: Where is my card?\nOutput:")
    zero = get_task_spec(
        TaskConfig(name="cs_intent", kind="intent_classification", metric="accuracy", fewshot=0)
    )
    assert zero.build_request("Where is my card?").prompt.count("Input:") == 1
