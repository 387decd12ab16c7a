"""RouteLLM BERT-style classifier router (Ong et al., 2024).

Method: RouteLLM learns a win-prediction model P(strong model wins | query) from
preference data and routes to the strong model when that probability exceeds a
threshold alpha; the threshold is calibrated so that the router reaches a target quality
(or a target share of strong-model calls). Its BERT router puts a classification head on
a BERT encoder's [CLS] embedding.

Here: the "win" label of a train query is 1[q_strong > q_weak] for the per-task pair of
`strong_weak_pair` (ties mean the weak model suffices), the classifier is a small MLP
head on frozen MiniLM sentence embeddings plus a task one-hot (the same encoder RouteNLP
uses, so the comparison isolates the routing method), and the threshold is set on
cross-fitted train scores for the same quality target as every baseline.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from routenlp.bench.baselines.base import Context, MatrixView, pair_of, register_baseline
from routenlp.bench.baselines.twomodel import TwoModelRouter


def strong_wins(view: MatrixView, pairs: dict[str, tuple[int, int]]) -> np.ndarray:
    out = np.zeros(view.n, dtype=int)
    for i in range(view.n):
        weak, strong = pair_of(pairs, view, i)
        out[i] = int(view.Q[i, strong] > view.Q[i, weak] + 1e-12)
    return out


@register_baseline("routellm-bert")
class RouteLLMBert(TwoModelRouter):
    """RouteLLM BERT-style: classifier P(strong wins) on MiniLM embeddings, threshold knob."""

    name = "routellm-bert"

    def fit_model(self, train: MatrixView, ctx: Context) -> Any:
        y = strong_wins(train, self.pairs)
        if y.min() == y.max():
            return float(y[0])
        from sklearn.neural_network import MLPClassifier

        X = ctx.query_features(train)
        return MLPClassifier(
            hidden_layer_sizes=(128,),
            alpha=1e-3,
            max_iter=200,
            early_stopping=True,
            n_iter_no_change=10,
            random_state=ctx.seed,
        ).fit(X, y)

    def score(self, model: Any, view: MatrixView, ctx: Context) -> np.ndarray:
        if isinstance(model, float):
            return np.full(view.n, model)
        return model.predict_proba(ctx.query_features(view))[:, 1]
