"""Hybrid LLM (Ding et al., ICLR 2024): route on the predicted quality gap of a small and a
large model.

Method: for a query x with small-model quality q_S(x) and large-model quality q_L(x), the
quality gap is H(x) = q_S(x) - q_L(x). A router is trained to predict
P(H(x) >= -t): that the small model is at most t worse than the large one. The
"transformed" router (r_trans) picks the relaxation t on the training data so that the
labels separate best (for one sample per query, the most balanced labels, maximising
p(1 - p)), which keeps the router from collapsing when the small model is rarely exactly
as good. At serving time the query goes to the small model when the predicted probability
reaches a threshold, the knob that trades cost for quality.

Here: the pair is chosen per task (`strong_weak_pair`), the router is a logistic
regression on [MiniLM(query), one-hot(task)] (the paper fine-tuned DeBERTa), t is chosen
on the train split from a grid over [0, 1], and the score routed on is 1 - P(gap >= -t).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from routenlp.bench.baselines.base import Context, MatrixView, pair_of, register_baseline
from routenlp.bench.baselines.twomodel import TwoModelRouter

T_GRID = [round(x, 2) for x in np.linspace(0.0, 1.0, 21)]


def gaps(view: MatrixView, pairs: dict[str, tuple[int, int]]) -> np.ndarray:
    """H(x) = q_small - q_large per query."""
    out = np.zeros(view.n)
    for i in range(view.n):
        weak, strong = pair_of(pairs, view, i)
        out[i] = view.Q[i, weak] - view.Q[i, strong]
    return out


def choose_relaxation(h: np.ndarray) -> float:
    """r_trans: the t whose labels 1[H >= -t] are most balanced (max p(1-p)); smallest t on ties."""
    best_t, best_v = 0.0, -1.0
    for t in T_GRID:
        p = float((h >= -t - 1e-12).mean())
        v = p * (1 - p)
        if v > best_v + 1e-12:
            best_t, best_v = t, v
    return best_t


@register_baseline("hybrid-llm")
class HybridLLM(TwoModelRouter):
    """Hybrid LLM: P(small within t of large) router (r_trans), threshold knob."""

    name = "hybrid-llm"

    def fit(self, train: MatrixView, ctx: Context) -> None:
        from routenlp.bench.baselines.base import pairs_for

        self.t = choose_relaxation(gaps(train, pairs_for(train, ctx)))
        super().fit(train, ctx)

    def fit_model(self, train: MatrixView, ctx: Context) -> Any:
        y = (gaps(train, self.pairs) >= -self.t - 1e-12).astype(int)
        if y.min() == y.max():
            return float(y[0])
        from sklearn.linear_model import LogisticRegression

        X = ctx.query_features(train)
        return LogisticRegression(C=1.0, max_iter=300, random_state=ctx.seed).fit(X, y)

    def score(self, model: Any, view: MatrixView, ctx: Context) -> np.ndarray:
        if isinstance(model, float):
            return np.full(view.n, 1.0 - model)
        return 1.0 - model.predict_proba(ctx.query_features(view))[:, 1]
