"""Parsers on messy small-model outputs: extra words, case, JSON vs lines, garbage."""

from __future__ import annotations

import pytest

from routenlp.tasks.parsers import clean_generation, format_entities, parse_entities, parse_label

RISK = ["clearly_unfair", "fair", "potentially_unfair"]
INTENTS = ["card_arrival", "activate_card", "lost_or_stolen_card", "change_pin", "Refund_not_showing_up"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fair", "fair"),
        ("Fair", "fair"),
        ("  POTENTIALLY UNFAIR.", "potentially_unfair"),
        ("Output: potentially-unfair", "potentially_unfair"),
        ("The clause is clearly unfair to consumers.", "clearly_unfair"),
        ("Answer: fair<|im_end|> clearly_unfair", "fair"),  # text after a stop token is noise
        ('{"label": "clearly_unfair"}', "clearly_unfair"),
        ("It is not clearly unfair but potentially unfair.", "potentially_unfair"),
        ("fari", "fair"),  # difflib closest
        ("unfair", "clearly_unfair"),  # never "fair": the word is not "fair"
        ("not fair", None),  # a negated label is not an answer
        ("banana", None),
        ("", None),
        (None, None),
        (12, None),
        ("\x00\x01\x02", None),
    ],
)
def test_parse_label_risk(text: object, expected: str | None) -> None:
    assert parse_label(text, RISK) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Card Arrival", "card_arrival"),
        ("cardarrival", "card_arrival"),
        ("The intent is: lost or stolen card", "lost_or_stolen_card"),
        ("refund not showing up", "Refund_not_showing_up"),  # label case kept
        ("activate", "activate_card"),  # word overlap
        ("Intent: change PIN code please", "change_pin"),
        ("Assistant:\ncard_arrival\n\nInput: next message", "card_arrival"),
    ],
)
def test_parse_label_intents(text: str, expected: str) -> None:
    assert parse_label(text, INTENTS) == expected


def test_parse_label_without_labels_is_none() -> None:
    assert parse_label("fair", []) is None


APPLE = [
    {"text": "Apple", "type": "ORG"},
    {"text": "Tim Cook", "type": "PER"},
    {"text": "Cupertino", "type": "LOC"},
]


@pytest.mark.parametrize(
    "text",
    [
        "ORG: Apple\nPER: Tim Cook\nLOC: Cupertino",
        "org: Apple\nperson: Tim Cook\nlocation: Cupertino.",
        "- ORGANIZATION: Apple\n- PERSON: Tim Cook\n- LOCATION: Cupertino",
        "1. ORGANISATION: \"Apple\"\n2. PER: Tim Cook\n3. LOC: Cupertino",
        '[{"text": "Apple", "type": "ORGANIZATION"}, {"text": "Tim Cook", "type": "PERSON"},'
        ' {"text": "Cupertino", "type": "LOC"}]',
        'Here you go:\n```json\n[["Apple", "ORG"], ["Tim Cook", "PER"], ["Cupertino", "LOC"]]\n```',
        '{"entities": [{"entity": "Apple", "label": "ORG"}, {"word": "Tim Cook", "entity_type": "PER"},'
        ' {"text": "Cupertino", "type": "GPE"}]}',
        "Apple (ORG), Tim Cook (PERSON) and Cupertino (LOCATION)",
        "Entities:\n- Apple: ORG\n- Tim Cook - PER\n- Cupertino -> LOC",
        "Output: ORG: Apple\nPER: Tim Cook\nLOC: Cupertino<end_of_turn>\nPER: Noise",
        "ORG: Apple\nPER: Tim Cook\nLOC: Cupertino\n\nInput: another sentence\nOutput: ORG: X",
    ],
)
def test_parse_entities_formats(text: str) -> None:
    assert parse_entities(text) == APPLE


def test_parse_entities_type_keyed_json() -> None:
    got = parse_entities('{"ORG": ["Apple", "Google"], "PER": "Tim Cook"}')
    assert got == [
        {"text": "Apple", "type": "ORG"},
        {"text": "Google", "type": "ORG"},
        {"text": "Tim Cook", "type": "PER"},
    ]


@pytest.mark.parametrize(
    "text", ["NONE", "None.", "none", "No entities found", "[]", "", None, "garbage {[}", "Note: nothing"]
)
def test_parse_entities_empty_or_garbage(text: object) -> None:
    assert parse_entities(text) == []


def test_parse_entities_restricts_types_and_keeps_duplicates() -> None:
    text = "PER: Obama\nPER: Obama\nMISC: Summit\nLOC: Africa"
    assert parse_entities(text, ["PER", "LOC", "ORG"]) == [
        {"text": "Obama", "type": "PER"},
        {"text": "Obama", "type": "PER"},
        {"text": "Africa", "type": "LOC"},
    ]


def test_format_entities_round_trips() -> None:
    assert format_entities(APPLE) == "ORG: Apple\nPER: Tim Cook\nLOC: Cupertino"
    assert format_entities([]) == "NONE"
    assert parse_entities(format_entities(APPLE)) == APPLE
    assert parse_entities(format_entities([])) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Assistant: Hello there<|im_end|>", "Hello there"),
        ("Output: sure thing\n\nInput: x\nOutput: y", "sure thing"),
        ("<start_of_turn>model\nHi!<end_of_turn>", "Hi!"),
        ("  plain text  ", "plain text"),
        ("Revenue rose 5%.\nEPS $1.20.</s>", "Revenue rose 5%.\nEPS $1.20."),
        (None, ""),
    ],
)
def test_clean_generation(text: object, expected: str) -> None:
    assert clean_generation(text) == expected
