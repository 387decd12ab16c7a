"""Per-sample quality metrics (and the dataset-level macro-F1).

Every per-sample metric returns a float in [0, 1] so it can be compared with a task's
quality bar `tau`. The functions are deliberately small and hand-checkable: the tests
compare them with values computed by hand.

BERTScore note: `bertscore_f1` uses the local all-MiniLM-L6-v2 encoder's contextual token
embeddings (offline, the same encoder the router uses) with greedy cosine matching and no
idf weighting or baseline rescaling. Absolute values are therefore NOT comparable with
the usual roberta-large BERTScore numbers; compare them only with each other.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from routenlp.errors import DataError

_WS = re.compile(r"\s+")
_EDGE_PUNCT = " \t\n\"'`.,;:!?()[]{}<>«»“”‘’"


def normalise_label(value: Any) -> str:
    """Case/space/underscore-insensitive form of a label, for tolerant comparison."""
    if value is None:
        return ""
    text = str(value).casefold()
    text = re.sub(r"[\s_\-/]+", " ", text)
    text = re.sub(r"[^\w ]+", "", text)
    return _WS.sub(" ", text).strip()


def normalise_entity_text(text: Any) -> str:
    """Entity surface form for matching: case-folded, whitespace collapsed, edge punctuation
    stripped (a model that writes `"Apple Inc."` should match gold `Apple Inc`)."""
    s = _WS.sub(" ", str(text or "")).strip().strip(_EDGE_PUNCT).strip()
    return s.casefold()


_TYPE_ALIASES = {
    "PER": "PER",
    "PERSON": "PER",
    "PERSONS": "PER",
    "PEOPLE": "PER",
    "NAME": "PER",
    "LOC": "LOC",
    "LOCATION": "LOC",
    "LOCATIONS": "LOC",
    "GPE": "LOC",
    "PLACE": "LOC",
    "COUNTRY": "LOC",
    "CITY": "LOC",
    "ORG": "ORG",
    "ORGS": "ORG",
    "ORGANIZATION": "ORG",
    "ORGANISATION": "ORG",
    "ORGANIZATIONS": "ORG",
    "ORGANISATIONS": "ORG",
    "COMPANY": "ORG",
    "CORPORATION": "ORG",
    "MISC": "MISC",
}


def normalise_entity_type(value: Any) -> str:
    """Canonical entity type: PERSON->PER, LOCATION->LOC, ORGANI[SZ]ATION->ORG; others
    upper-cased with spaces/hyphens turned into underscores."""
    t = re.sub(r"[\s\-]+", "_", str(value or "").strip().strip(_EDGE_PUNCT)).upper()
    t = re.sub(r"^[BI]_", "", t) if re.match(r"^[BI]_(PER|LOC|ORG|MISC)", t) else t
    return _TYPE_ALIASES.get(t, t)


def known_entity_type(value: str) -> bool:
    """Whether `value` is one of the standard entity-type spellings the parser accepts."""
    return str(value).strip().upper() in _TYPE_ALIASES


def _entity_key(e: Any) -> tuple[str, str] | None:
    if isinstance(e, Mapping):
        text = e.get("text", e.get("entity", e.get("word", "")))
        typ = e.get("type", e.get("label", e.get("entity_type", "")))
    elif isinstance(e, (tuple, list)) and len(e) == 2:
        text, typ = e
    else:
        return None
    key = (normalise_entity_text(text), normalise_entity_type(typ))
    return key if key[0] else None


def accuracy(prediction: Any, reference: Any) -> float:
    """1.0 when the prediction equals the reference label (case/space/underscore-insensitive)."""
    if prediction is None:
        return 0.0
    return 1.0 if normalise_label(prediction) == normalise_label(reference) else 0.0


def entity_f1(prediction: Iterable[Any] | None, reference: Iterable[Any] | None) -> float:
    """F1 over the multiset of (normalised text, type) pairs.

    Duplicates count: gold [A, A] vs predicted [A] gives precision 1, recall 0.5, F1 2/3.
    Both empty -> 1.0 (correctly found nothing); exactly one empty -> 0.0.
    """
    pred = Counter(k for k in (_entity_key(e) for e in (prediction or [])) if k is not None)
    gold = Counter(k for k in (_entity_key(e) for e in (reference or [])) if k is not None)
    n_pred, n_gold = sum(pred.values()), sum(gold.values())
    if n_pred == 0 and n_gold == 0:
        return 1.0
    if n_pred == 0 or n_gold == 0:
        return 0.0
    tp = sum((pred & gold).values())
    if tp == 0:
        return 0.0
    p, r = tp / n_pred, tp / n_gold
    return 2 * p * r / (p + r)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str | None, reference: str | None) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemmer): LCS-based, over lower-cased
    alphanumeric tokens. Both empty -> 1.0; one empty -> 0.0."""
    pred = (prediction or "").strip()
    ref = (reference or "").strip()
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


class _TokenEmbeddingCache:
    """Bounded cache of token embeddings: references repeat across tiers and rounds."""

    def __init__(self, size: int = 4096) -> None:
        self._d: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, encoder: Any, text: str) -> np.ndarray:
        key = (str(getattr(encoder, "name", id(encoder))), text)
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
                return hit
        emb = np.asarray(encoder.token_embeddings(text), dtype=np.float32)
        with self._lock:
            self._d[key] = emb
            while len(self._d) > self._size:
                self._d.popitem(last=False)
        return emb


_TOKEN_CACHE = _TokenEmbeddingCache()


def bertscore_f1(prediction: str | None, reference: str | None, *, encoder: Any = None) -> float:
    """Greedy-matching BERTScore F1 with MiniLM token embeddings (see module note).

    P = mean over prediction tokens of the best cosine to a reference token, R likewise the
    other way, F1 = 2PR/(P+R), clipped to [0, 1]. `encoder` needs `token_embeddings(text)`
    returning unit-norm rows; default is the shared local MiniLM encoder.
    """
    pred = (prediction or "").strip()
    ref = (reference or "").strip()
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    if encoder is None:
        from routenlp.router.encoder import get_encoder

        encoder = get_encoder()
    a = _TOKEN_CACHE.get(encoder, pred)
    b = _TOKEN_CACHE.get(encoder, ref)
    if a.size == 0 or b.size == 0:
        return 0.0
    sim = a @ b.T
    precision = float(sim.max(axis=1).mean())
    recall = float(sim.max(axis=0).mean())
    if precision + recall <= 0:
        return 0.0
    f1 = 2 * precision * recall / (precision + recall)
    return float(min(1.0, max(0.0, f1)))


def score_passthrough(prediction: Any, reference: Any) -> float:
    """Metric `score`: the reference already is a quality in [0, 1] (matrix-only tasks);
    when it is not numeric, a numeric prediction passes through; else exact match."""
    for value in (reference, prediction):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(float(value)):
                return 0.0
            return float(min(1.0, max(0.0, float(value))))
        if isinstance(value, bool):
            return 1.0 if value else 0.0
    return accuracy(prediction, reference)


def macro_f1(
    predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[str] | None = None
) -> float:
    """Macro-F1 over the labels that occur in the references (or over `labels` if given).

    A label never present in the gold has no defined recall, so it is left out of the
    average; a prediction of such a label still counts as a miss for the true class.
    Comparison is case/space/underscore-insensitive; None predictions are misses.
    """
    if len(predictions) != len(references):
        raise DataError(
            f"macro_f1: {len(predictions)} predictions but {len(references)} references"
        )
    if not references:
        return 0.0
    preds = [normalise_label(p) if p is not None else None for p in predictions]
    refs = [normalise_label(r) for r in references]
    classes = [normalise_label(x) for x in labels] if labels is not None else sorted(set(refs))
    f1s = []
    for c in dict.fromkeys(classes):
        tp = sum(1 for p, r in zip(preds, refs) if p == c and r == c)
        fp = sum(1 for p, r in zip(preds, refs) if p == c and r != c)
        fn = sum(1 for p, r in zip(preds, refs) if p != c and r == c)
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(sum(f1s) / len(f1s)) if f1s else 0.0


METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "macro_f1": accuracy,  # per sample; the dataset level uses macro_f1()
    "entity_f1": entity_f1,
    "rougeL": rouge_l,
    "bertscore": bertscore_f1,
    "score": score_passthrough,
}
