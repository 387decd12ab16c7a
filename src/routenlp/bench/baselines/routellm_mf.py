"""RouteLLM matrix-factorisation router (Ong et al., 2024).

Method: a bilinear scoring function s(M, q) = w2^T (v_M * (W1 e_q + b)) between a learned
model embedding v_M and a projection of the query's text embedding e_q; the probability
that the strong model beats the weak one is sigmoid(s(strong, q) - s(weak, q)). It is
trained on pairwise preferences (which of two models answered a query better) with a
binary cross-entropy loss, and at serving time the query goes to the strong model when
that probability reaches a threshold alpha.

Here: preferences come from the train matrix: every pair of tiers whose qualities differ
on a train query is one comparison (ties are dropped), so the factorisation sees all
tiers, not only the routed pair; e_q is MiniLM's sentence embedding (RouteLLM used
OpenAI embeddings) concatenated with a task one-hot; the routed pair is the per-task
(weak, strong) of `strong_weak_pair`. Full-batch Adam with L2, seeded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from routenlp.bench.baselines.base import Context, MatrixView, pair_of, register_baseline
from routenlp.bench.baselines.twomodel import TwoModelRouter

DIM = 64
STEPS = 250
LR = 1e-2
L2 = 1e-4
MAX_PAIRS = 200_000


class _MF:
    """s(M, q) = (W1 e_q + b) . u_M with u_M = w2 * v_M (the paper's w2 and v_M merged:
    the same function class, one parameter less to learn). Numpy, full-batch Adam, seeded:
    a few hundred steps on small arrays, where torch's per-op overhead would dominate."""

    def __init__(self, k: int, d_in: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.W1 = (rng.standard_normal((d_in, DIM)) / np.sqrt(d_in)).astype(np.float64)
        self.b = np.zeros(DIM)
        self.U = rng.standard_normal((k, DIM)) * 0.1

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(n, K) s(M, q) for all tiers."""
        return (X @ self.W1 + self.b) @ self.U.T

    def fit(self, X: np.ndarray, qi: np.ndarray, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
        params = [self.W1, self.b, self.U]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        n_pairs = len(y)
        for step in range(1, STEPS + 1):
            P = X @ self.W1 + self.b  # (n, D)
            diff = self.U[a] - self.U[b]  # (N, D)
            logit = np.einsum("nd,nd->n", P[qi], diff)
            g = (1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50))) - y) / n_pairs  # dL/dlogit
            dP = np.zeros_like(P)
            np.add.at(dP, qi, g[:, None] * diff)
            gp = g[:, None] * P[qi]
            dU = np.zeros_like(self.U)
            np.add.at(dU, a, gp)
            np.add.at(dU, b, -gp)
            grads = [X.T @ dP + L2 * self.W1, dP.sum(axis=0), dU + L2 * self.U]
            for p, gr, mm, vv in zip(params, grads, m, v):
                mm *= beta1
                mm += (1 - beta1) * gr
                vv *= beta2
                vv += (1 - beta2) * gr * gr
                p -= LR * (mm / (1 - beta1**step)) / (np.sqrt(vv / (1 - beta2**step)) + eps)


@register_baseline("routellm-mf")
class RouteLLMMF(TwoModelRouter):
    """RouteLLM matrix factorisation: model embeddings x projected query, threshold knob."""

    name = "routellm-mf"

    def fit_model(self, train: MatrixView, ctx: Context) -> Any:
        X = ctx.query_features(train).astype(np.float64)
        ii, aa, bb, yy = [], [], [], []
        for a in range(train.k):
            for b in range(a + 1, train.k):
                valid = train.serves[:, a] & train.serves[:, b] & train.has[:, a] & train.has[:, b]
                diff = train.Q[:, a] - train.Q[:, b]
                idx = np.flatnonzero(valid & (np.abs(diff) > 1e-12))
                ii.append(idx)
                aa.append(np.full(idx.size, a))
                bb.append(np.full(idx.size, b))
                yy.append((diff[idx] > 0).astype(np.float64))
        i_all = np.concatenate(ii)
        if i_all.size == 0:
            return None
        a_all, b_all, y_all = np.concatenate(aa), np.concatenate(bb), np.concatenate(yy)
        if i_all.size > MAX_PAIRS:
            keep = np.random.default_rng(ctx.seed).choice(i_all.size, MAX_PAIRS, replace=False)
            i_all, a_all, b_all, y_all = i_all[keep], a_all[keep], b_all[keep], y_all[keep]
        mf = _MF(train.k, X.shape[1], ctx.seed)
        mf.fit(X, i_all, a_all, b_all, y_all)
        return mf

    def score(self, model: Any, view: MatrixView, ctx: Context) -> np.ndarray:
        if model is None:
            return np.full(view.n, 0.5)
        s = model.scores(ctx.query_features(view).astype(np.float64))
        out = np.zeros(view.n)
        for i in range(view.n):
            weak, strong = pair_of(self.pairs, view, i)
            out[i] = 1.0 / (1.0 + np.exp(-(s[i, strong] - s[i, weak])))
        return out
