"""kNN router (RouterBench, Hu et al. 2024): predict every tier's quality from the nearest
train queries, then trade quality against cost.

Method: per task, the k nearest train queries of the same task (cosine similarity of
sentence embeddings) vote: the predicted quality of tier j is their mean quality at j.
The query goes to argmax_j  q_hat_j - lambda * c_j / c_ref, where c_j is tier j's mean
train cost in the task and c_ref the reference tier's, so lambda is the quality given up
for a full reference-tier price; lambda is the knob swept for the curve. The default
lambda is chosen on leave-one-out train predictions (each train query's own label left
out) as the cheapest reaching the target quality ratio. Only tiers serving the task are
candidates; a task unseen in train goes to its top serving tier.
"""

from __future__ import annotations

import numpy as np

from routenlp.bench.baselines.base import Baseline, Context, MatrixView, Path_, choose_by_target, register_baseline

K = 10
LAMBDAS = [0.0, *[round(float(x), 5) for x in np.geomspace(1e-3, 4.0, 47)]]


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def knn_quality(train_emb: np.ndarray, train_q: np.ndarray, query_emb: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """Mean quality of each query's k nearest train queries, per tier: (n_query, tiers)."""
    sim = _unit(query_emb) @ _unit(train_emb).T
    if leave_one_out:
        np.fill_diagonal(sim, -np.inf)
    kk = max(1, min(k, train_emb.shape[0] - (1 if leave_one_out else 0)))
    idx = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
    return train_q[idx].mean(axis=1)


@register_baseline("knn-router")
class KNNRouter(Baseline):
    """kNN router (RouterBench): kNN-predicted quality per tier, argmax quality - lambda * cost."""

    name = "knn-router"
    knob = "lambda"

    def __init__(self, k: int = K) -> None:
        self.k = k
        self.by_task: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def fit(self, train: MatrixView, ctx: Context) -> None:
        emb = np.asarray(ctx.embed([r.prompt for r in train.rows]), dtype=np.float32)
        tasks = np.asarray(train.tasks)
        self.by_task = {}
        self._loo = np.zeros((train.n, train.k))
        for task in train.task_names():
            rows = np.flatnonzero(tasks == task)
            serving = train.serves[rows[0]]
            mc = train.C[rows].mean(axis=0)
            ref = train.serving_at_or_above(int(rows[0]), ctx.reference_tier)
            rel_cost = mc / mc[ref] if mc[ref] > 0 else mc
            self.by_task[task] = (emb[rows], train.Q[rows], rel_cost, serving)
            self._loo[rows] = knn_quality(emb[rows], train.Q[rows], emb[rows], self.k, leave_one_out=True)
        ref_q, _ = ctx.reference_quality_cost(train)
        pts = []
        for lam in LAMBDAS:
            q, c = train.path_quality_cost(self._choose(train, self._loo, lam))
            pts.append((lam, q, c))
        self.default_knob = choose_by_target(pts, ref_q, ctx.target_quality_ratio)

    def _choose(self, view: MatrixView, qhat: np.ndarray, lam: float) -> list[Path_]:
        out: list[Path_] = []
        for i in range(view.n):
            got = self.by_task.get(view.tasks[i])
            if got is None:
                out.append([view.top_index(i)])
                continue
            _, _, rel_cost, serving = got
            util = np.where(serving, qhat[i] - lam * rel_cost, -np.inf)
            best = util.max()
            # ties go to the cheaper tier (lower index = cheaper in config order)
            out.append([int(np.flatnonzero(util >= best - 1e-12)[0])])
        return out

    def predict(self, view: MatrixView, ctx: Context) -> np.ndarray:
        key = ("knn-router", "qhat", id(view))
        if key in ctx.cache:
            return ctx.cache[key]
        emb = np.asarray(ctx.embed([r.prompt for r in view.rows]), dtype=np.float32)
        qhat = np.zeros((view.n, view.k))
        tasks = np.asarray(view.tasks)
        for task, (temb, tq, _, _) in self.by_task.items():
            rows = np.flatnonzero(tasks == task)
            if rows.size:
                qhat[rows] = knn_quality(temb, tq, emb[rows], self.k)
        ctx.cache[key] = qhat
        return qhat

    def knob_values(self) -> list[float]:
        return list(LAMBDAS)

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        lam = self.default_knob if knob is None else knob
        return self._choose(test, self.predict(test, ctx), 0.0 if lam is None else lam)
