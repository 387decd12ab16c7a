"""Calibrated per-(task, tier) success probabilities: what the router decides from.

Two estimators of P(success_k | query), both learnt on train rows:
  * the MLP's success head (a residual over the task prior, early-stopped on the success
    loss), predicted out of fold by heads that never saw the row;
  * a kNN estimator over the featurised query embeddings: per task, the mean success of
    the k nearest train queries, shrunk towards the task's success rate
    `(sum_j s_jk + m * prior_tk) / (k + m)` (RouterBench's kNN router, made safe for
    small tasks by the shrinkage).
Per task they are blended with the weight (0, 0.25, ..., 1 on the MLP) of least
out-of-fold log-loss, then calibrated per (task, tier) by isotonic regression on the
out-of-fold blend (per tier pooled over tasks where a task has too few rows). The report
gives ECE per tier before and after calibration, the latter cross-fitted (each fold's
isotonic map fitted on the other folds), so it is not an in-sample number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_ISOTONIC_ROWS = 30  # fewer attempted rows of a tier: no isotonic map
MIN_TASK_ISOTONIC_ROWS = 100  # fewer rows of a (task, tier): use the tier's pooled map
ECE_BINS = 10
EPS = 1e-4


def log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Mean soft-target binary cross-entropy over weighted entries."""
    p = np.clip(p, EPS, 1 - EPS)
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    tot = float(w.sum())
    return float((ll * w).sum() / tot) if tot > 0 else float("nan")


def ece(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-width bins (soft targets allowed)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    b = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for i in range(bins):
        sel = b == i
        if sel.any():
            total += abs(p[sel].mean() - y[sel].mean()) * sel.sum()
    return float(total / len(p))


class KnnBank:
    """Train embeddings, success targets and attempted flags, grouped by task."""

    def __init__(
        self,
        emb: np.ndarray,
        task_index: np.ndarray,
        targets: np.ndarray,
        attempted: np.ndarray,
        n_tasks: int,
        *,
        k: int = 25,
        shrink: float = 5.0,
    ) -> None:
        self.emb = np.asarray(emb, dtype=np.float32)
        self.task_index = np.asarray(task_index, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.attempted = np.asarray(attempted, dtype=bool)
        self.k, self.shrink = int(k), float(shrink)
        self.by_task = [np.flatnonzero(self.task_index == t) for t in range(n_tasks)]
        w = self.attempted.astype(np.float64)
        sums = np.zeros((n_tasks, self.targets.shape[1]))
        cnt = np.zeros_like(sums)
        np.add.at(sums, self.task_index, self.targets * w)
        np.add.at(cnt, self.task_index, w)
        self.prior = (sums + 1.0) / (cnt + 2.0)

    def predict(
        self, emb: np.ndarray, task_idx: np.ndarray, *, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, K) shrunk kNN success estimates. `exclude[i]`: a bank row index to leave out
        for query i (leave-one-out predictions of the bank's own rows), or -1."""
        emb = np.asarray(emb, dtype=np.float32)
        task_idx = np.asarray(task_idx, dtype=np.int64)
        out = np.zeros((len(emb), self.targets.shape[1]))
        for t in np.unique(task_idx):
            q_rows = np.flatnonzero(task_idx == t)
            bank = self.by_task[t] if t < len(self.by_task) else np.zeros(0, dtype=np.int64)
            prior = self.prior[t] if t < len(self.prior) else np.full(out.shape[1], 0.5)
            if len(bank) == 0:
                out[q_rows] = prior
                continue
            sims = emb[q_rows] @ self.emb[bank].T
            if exclude is not None:
                ex = exclude[q_rows]
                hit = ex[:, None] == bank[None, :]
                sims = np.where(hit, -np.inf, sims)
            k = min(self.k, len(bank) - (1 if exclude is not None else 0))
            if k <= 0:
                out[q_rows] = prior
                continue
            nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            idx = bank[nn]  # (nq, k)
            w = self.attempted[idx].astype(np.float64)
            s = (self.targets[idx] * w).sum(1)
            out[q_rows] = (s + self.shrink * prior) / (w.sum(1) + self.shrink)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "knn_emb": self.emb.astype(np.float16),
            "knn_task": self.task_index.astype(np.int32),
            "knn_targets": self.targets.astype(np.float16),
            "knn_attempted": self.attempted.astype(np.uint8),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_tasks: int, *, k: int, shrink: float) -> KnnBank:
        return cls(
            arrays["knn_emb"].astype(np.float32), arrays["knn_task"].astype(np.int64),
            arrays["knn_targets"].astype(np.float32), arrays["knn_attempted"].astype(bool), n_tasks,
            k=k, shrink=shrink,
        )


class IsoMap(BaseModel):
    """A fitted isotonic map as its breakpoints (np.interp between them, clipped)."""

    x: list[float]
    y: list[float]

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self.x, self.y)


def fit_isotonic(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> IsoMap:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(p, y, sample_weight=w)
    xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ys = np.asarray(iso.y_thresholds_, dtype=np.float64)
    if len(xs) == 1:
        xs, ys = np.array([0.0, 1.0]), np.array([ys[0], ys[0]])
    return IsoMap(x=xs.tolist(), y=ys.tolist())


class SuccessCalibration(BaseModel):
    """How the router turns its two estimators into calibrated success probabilities."""

    blend: dict[str, float] = Field(description="per task, weight of the MLP (1 - w on kNN)")
    knn_k: int = 25
    knn_shrink: float = 5.0
    per_task: dict[str, dict[str, IsoMap]] = Field(default_factory=dict)
    pooled: dict[str, IsoMap] = Field(default_factory=dict)
    report: dict[str, object] = Field(default_factory=dict)

    def apply(
        self,
        p_mlp: np.ndarray,
        p_knn: np.ndarray | None,
        task_idx: np.ndarray,
        tasks: Sequence[str],
        tiers: Sequence[str],
    ) -> np.ndarray:
        """Blend and calibrate (n, K) success estimates of rows of the given task indices."""
        task_idx = np.asarray(task_idx, dtype=np.int64)
        out = np.array(p_mlp, dtype=np.float64)
        for t in np.unique(task_idx):
            rows = task_idx == t
            name = tasks[t]
            w = self.blend.get(name, 1.0)
            if p_knn is not None and w < 1.0:
                out[rows] = w * out[rows] + (1 - w) * p_knn[rows]
            maps = self.per_task.get(name, {})
            for k, tier in enumerate(tiers):
                m = maps.get(tier) or self.pooled.get(tier)
                if m is not None:
                    out[rows, k] = m(out[rows, k])
        return out


def _fit_maps(
    p: np.ndarray, y: np.ndarray, w: np.ndarray, task_idx: np.ndarray, tasks: Sequence[str], tiers: Sequence[str]
) -> tuple[dict[str, dict[str, IsoMap]], dict[str, IsoMap]]:
    per_task: dict[str, dict[str, IsoMap]] = {}
    pooled: dict[str, IsoMap] = {}
    for k, tier in enumerate(tiers):
        sel = w[:, k]
        if sel.sum() >= MIN_ISOTONIC_ROWS:
            pooled[tier] = fit_isotonic(p[sel, k], y[sel, k])
        for t, name in enumerate(tasks):
            rows = sel & (task_idx == t)
            if rows.sum() >= MIN_TASK_ISOTONIC_ROWS:
                per_task.setdefault(name, {})[tier] = fit_isotonic(p[rows, k], y[rows, k])
    return per_task, pooled


def fit_success_calibration(
    p_mlp: np.ndarray,
    p_knn: np.ndarray,
    targets: np.ndarray,
    attempted: np.ndarray,
    task_idx: np.ndarray,
    tasks: Sequence[str],
    tiers: Sequence[str],
    folds: Sequence[np.ndarray],
    *,
    knn_k: int,
    knn_shrink: float,
) -> tuple[SuccessCalibration, np.ndarray]:
    """Choose the blend and fit the isotonic maps on out-of-fold estimates of the same rows.

    Returns the calibration (fitted on all rows) and the cross-fitted calibrated estimates
    (row f's map fitted without fold f), on which the decision knob is then chosen."""
    task_idx = np.asarray(task_idx, dtype=np.int64)
    w = np.asarray(attempted, dtype=bool)
    blend: dict[str, float] = {}
    losses: dict[str, dict[str, float]] = {}
    mixed = np.zeros_like(p_mlp, dtype=np.float64)
    for t, name in enumerate(tasks):
        rows = task_idx == t
        if not rows.any():
            continue
        scores = {
            a: log_loss(a * p_mlp[rows] + (1 - a) * p_knn[rows], targets[rows], w[rows]) for a in BLEND_GRID
        }
        valid = {a: s for a, s in scores.items() if np.isfinite(s)}
        best = min(valid, key=lambda a: (valid[a], -a)) if valid else 1.0
        blend[name] = float(best)
        losses[name] = {"mlp": scores[1.0], "knn": scores[0.0], "chosen": scores[best]}
        mixed[rows] = best * p_mlp[rows] + (1 - best) * p_knn[rows]
    per_task, pooled = _fit_maps(mixed, targets, w, task_idx, tasks, tiers)
    cal = SuccessCalibration(blend=blend, knn_k=knn_k, knn_shrink=knn_shrink, per_task=per_task, pooled=pooled)
    # cross-fitted calibrated estimates: no row is calibrated by a map that saw it
    crossed = mixed.copy()
    for held in folds:
        rest = np.setdiff1d(np.arange(len(task_idx)), held)
        pt, po = _fit_maps(mixed[rest], targets[rest], w[rest], task_idx[rest], tasks, tiers)
        part = SuccessCalibration(blend={n: 1.0 for n in tasks}, per_task=pt, pooled=po)
        crossed[held] = part.apply(mixed[held], None, task_idx[held], tasks, tiers)
    # a tier keeps its isotonic maps only where they lower the cross-fitted log-loss: with few
    # rows a step function can fit noise and end up worse calibrated than the blend
    kept: list[str] = []
    for k, tier in enumerate(tiers):
        sel = w[:, k]
        if not sel.any():
            continue
        if log_loss(crossed[sel, k], targets[sel, k], np.ones(int(sel.sum()))) < log_loss(
            mixed[sel, k], targets[sel, k], np.ones(int(sel.sum()))
        ):
            kept.append(tier)
        else:
            crossed[:, k] = mixed[:, k]
            cal.pooled.pop(tier, None)
            for maps in cal.per_task.values():
                maps.pop(tier, None)
    ece_rows = {}
    for k, tier in enumerate(tiers):
        sel = w[:, k]
        if sel.any():
            ece_rows[tier] = {
                "n": int(sel.sum()),
                "ece_mlp": ece(p_mlp[sel, k], targets[sel, k]),
                "ece_knn": ece(p_knn[sel, k], targets[sel, k]),
                "ece_blend": ece(mixed[sel, k], targets[sel, k]),
                "ece_calibrated": ece(crossed[sel, k], targets[sel, k]),
            }
    cal.report = {
        "blend": blend,
        "log_loss": losses,
        "ece": ece_rows,
        "log_loss_calibrated": log_loss(crossed, targets, w),
        "log_loss_blend": log_loss(mixed, targets, w),
        "isotonic_tiers": kept,
    }
    return cal, crossed
