"""AutoMix (Madaan et al., NeurIPS 2024): self-verification of the small model plus a
meta-verifier policy deciding whether to route to the large model.

Method: the small model answers; the same small model is prompted (few-shot) to verify
its answer against the context, sampled k times, and the fraction of "correct" verdicts
is a confidence. Because that self-verification is noisy, a meta-verifier decides: a
threshold on the confidence, or a POMDP whose hidden state is the answer's true
correctness, whose observation is the (discretised) verifier confidence and whose
actions are to accept the small model's answer or to route to the large model; the
policy maximises the incremental benefit per cost (IBC).

Here: the verifier confidence is the small tier's recorded confidence when the matrix has
one (`Outcome.risk()` negated); the public matrices record none, so the stand-in is the
learned answer scorer's P(answer acceptable | query, answer) for the small tier
(cross-fitted on train; see `scorer.py`), and the report says so. Verification calls
are not in the matrix, so their cost is not counted (favouring AutoMix). The POMDP policy
with one accept/route decision reduces to a per-observation rule: the confidence is
discretised into train quantile bins, each bin's expected quality gain of the large
model over the small one is estimated on train, and a bin is routed to the large model
when its expected gain reaches the knob lambda (the price of quality); sweeping lambda
traces the curve. The small model always runs first, so routed queries pay both tiers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from routenlp.bench.baselines.base import Context, MatrixView, pair_of, register_baseline
from routenlp.bench.baselines.scorer import answer_scorer, scores_for
from routenlp.bench.baselines.twomodel import TwoModelRouter

N_BINS = 10


def _confidence(view: MatrixView, ctx: Context, scorer_scores: np.ndarray, pairs: dict[str, tuple[int, int]]) -> np.ndarray:
    conf = np.zeros(view.n)
    for i in range(view.n):
        weak, _ = pair_of(pairs, view, i)
        r = view.R[i, weak]
        conf[i] = -r if np.isfinite(r) else scorer_scores[i, weak]
    return conf


@register_baseline("automix")
class AutoMix(TwoModelRouter):
    """AutoMix: small model + (stand-in) self-verification confidence + POMDP bin policy."""

    name = "automix"
    knob = "lambda"
    cascade = True

    def __init__(self) -> None:
        super().__init__()
        self._in_fit = False
        self._oof: dict[str, np.ndarray] = {}

    def fit(self, train: MatrixView, ctx: Context) -> None:
        from routenlp.bench.baselines.base import pairs_for

        pairs = pairs_for(train, ctx)
        weak_has_risk = all(
            np.isfinite(train.R[i, pair_of(pairs, train, i)[0]]) for i in range(train.n)
        )
        if weak_has_risk:
            ctx.notes.append("automix: verifier confidence = the small tier's recorded confidence")
            self._oof = {}
        else:
            sc = answer_scorer(train, ctx)
            self._oof = {r.id: sc.train_scores[i] for i, r in enumerate(train.rows)}
            ctx.notes.append(
                "automix: no verifier output in the matrix; the confidence is the learned "
                "answer scorer's P(acceptable | query, answer) for the small tier"
            )
        self._in_fit = True
        try:
            super().fit(train, ctx)
        finally:
            self._in_fit = False

    def _scorer_scores(self, view: MatrixView, ctx: Context) -> np.ndarray:
        """Cross-fitted scores for train rows (while fitting), fitted scorer otherwise."""
        if self._in_fit:
            if not self._oof:  # recorded confidence stands in: scorer scores are unused
                return np.zeros((view.n, view.k))
            return np.stack([self._oof[r.id] for r in view.rows])
        if "answer_scorer" not in ctx.cache:
            return np.zeros((view.n, view.k))
        return scores_for(view, ctx)

    def fit_model(self, train: MatrixView, ctx: Context) -> Any:
        """Bin edges on train confidence and each bin's expected gain of the large model."""
        conf = _confidence(train, ctx, self._scorer_scores(train, ctx), self.pairs)
        edges = np.unique(np.quantile(conf, np.linspace(0, 1, N_BINS + 1)[1:-1]))
        bins = np.searchsorted(edges, conf, side="right")
        gain = np.zeros(edges.size + 1)
        for b in range(edges.size + 1):
            members = np.flatnonzero(bins == b)
            if members.size:
                g = []
                for i in members:
                    weak, strong = pair_of(self.pairs, train, i)
                    g.append(train.Q[i, strong] - train.Q[i, weak])
                gain[b] = float(np.mean(g))
        return edges, gain

    def score(self, model: Any, view: MatrixView, ctx: Context) -> np.ndarray:
        edges, gain = model
        conf = _confidence(view, ctx, self._scorer_scores(view, ctx), self.pairs)
        return gain[np.searchsorted(edges, conf, side="right")]
