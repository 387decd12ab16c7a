"""A learned answer scorer: P(answer acceptable | query, answer) per tier.

FrugalGPT's scoring function g(q, a) and the stand-in for AutoMix's self-verification
when the matrix records no verifier output. One logistic regression per tier on
[MiniLM(query), MiniLM(answer), one-hot(task)], label `quality >= tau`. When the matrix
holds no responses (e.g. llmrouter_14task) the answer part is absent and the scorer is a
per-tier query-difficulty model, and the report says so. Train-split scores are
cross-fitted (out-of-fold) so thresholds chosen on them are honest.
"""

from __future__ import annotations

import numpy as np

from routenlp.bench.baselines.base import Context, MatrixView, kfold_indices, response_text

N_FOLDS = 3


def _features(view: MatrixView, ctx: Context, j: int, with_answers: bool) -> np.ndarray:
    q = ctx.query_features(view)
    if not with_answers:
        return q
    tier = view.tiers[j]
    texts = [response_text(r.outcomes[tier].response) if tier in r.outcomes else "" for r in view.rows]
    return np.hstack([q, ctx.embed(texts).astype(np.float32)])


def has_answers(view: MatrixView) -> bool:
    return any(o.response not in (None, "") for r in view.rows[:50] for o in r.outcomes.values())


class _Fitted:
    """A per-tier classifier, or a constant when the train labels have one class."""

    def __init__(self, X: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.const: float | None = None
        if y.min() == y.max():
            self.const = float(y[0])
            self.clf = None
            return
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(C=1.0, max_iter=300, random_state=seed).fit(X, y)

    def proba(self, X: np.ndarray) -> np.ndarray:
        if self.clf is None:
            return np.full(X.shape[0], self.const)
        return self.clf.predict_proba(X)[:, 1]


class AnswerScorer:
    """Fitted per-tier scorers plus cross-fitted train scores (n_train, K)."""

    def __init__(self, train: MatrixView, ctx: Context) -> None:
        self.with_answers = has_answers(train)
        self.models: list[_Fitted] = []
        self.train_scores = np.zeros((train.n, train.k))
        folds = kfold_indices(train.n, N_FOLDS, ctx.seed + 1)
        for j in range(train.k):
            X = _features(train, ctx, j, self.with_answers)
            y = (train.Q[:, j] >= train.tau - 1e-12).astype(int)
            for fold in folds:
                rest = np.setdiff1d(np.arange(train.n), fold)
                self.train_scores[fold, j] = _Fitted(X[rest], y[rest], ctx.seed).proba(X[fold])
            self.models.append(_Fitted(X, y, ctx.seed))

    def scores(self, view: MatrixView, ctx: Context) -> np.ndarray:
        out = np.zeros((view.n, view.k))
        for j, m in enumerate(self.models):
            out[:, j] = m.proba(_features(view, ctx, j, self.with_answers))
        return out


def answer_scorer(train: MatrixView, ctx: Context) -> AnswerScorer:
    """Memoised per run: FrugalGPT and AutoMix share one scorer."""
    if "answer_scorer" not in ctx.cache:
        sc = AnswerScorer(train, ctx)
        ctx.cache["answer_scorer"] = sc
        if not sc.with_answers:
            ctx.notes.append(
                "answer scorer: the matrix holds no responses, so FrugalGPT's scorer and "
                "AutoMix's confidence use the query (and tier) only"
            )
    return ctx.cache["answer_scorer"]


def scores_for(view: MatrixView, ctx: Context) -> np.ndarray:
    key = ("answer_scores", id(view))
    if key not in ctx.cache:
        ctx.cache[key] = ctx.cache["answer_scorer"].scores(view, ctx)
    return ctx.cache[key]
