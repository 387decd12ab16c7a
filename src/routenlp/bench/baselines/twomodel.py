"""Shared machinery of the two-model routers (Hybrid LLM, RouteLLM MF/BERT, AutoMix).

Each learns a per-query score (larger = the strong model is more needed) and routes to
the strong tier when the score reaches a threshold, the knob swept for the curve. The
default threshold is chosen on cross-fitted (out-of-fold) train scores as the cheapest one
whose train quality ratio reaches the target.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from routenlp.bench.baselines.base import (
    Baseline,
    Context,
    MatrixView,
    Path_,
    choose_by_target,
    kfold_indices,
    pair_of,
    pairs_for,
    threshold_grid,
)

N_FOLDS = 3


class TwoModelRouter(Baseline):
    """Route to the weak tier unless a learned score says the strong one is needed."""

    knob = "threshold"
    cascade: bool = False  # True: the weak tier always runs first (AutoMix)

    def __init__(self) -> None:
        self.model: Any = None
        self.pairs: dict[str, tuple[int, int]] = {}
        self.grid: list[float] = []

    @abstractmethod
    def fit_model(self, train: MatrixView, ctx: Context) -> Any:
        """Train on (a fold of) the train split."""

    @abstractmethod
    def score(self, model: Any, view: MatrixView, ctx: Context) -> np.ndarray:
        """Per-query need for the strong tier (larger = route strong)."""

    def paths(self, view: MatrixView, scores: np.ndarray, threshold: float) -> list[Path_]:
        out: list[Path_] = []
        for i in range(view.n):
            weak, strong = pair_of(self.pairs, view, i)
            if scores[i] >= threshold and strong != weak:
                out.append([weak, strong] if self.cascade else [strong])
            else:
                out.append([weak])
        return out

    def fit(self, train: MatrixView, ctx: Context) -> None:
        self.pairs = pairs_for(train, ctx)
        oof = np.zeros(train.n)
        for fold in kfold_indices(train.n, N_FOLDS, ctx.seed):
            rest = np.setdiff1d(np.arange(train.n), fold)
            model = self.fit_model(train.subset(rest), ctx)
            oof[fold] = self.score(model, train.subset(fold), ctx)
        self.grid = [float("-inf"), *threshold_grid(oof), float("inf")]
        ref_q, _ = ctx.reference_quality_cost(train)
        pts = []
        for t in self.grid:
            q, c = train.path_quality_cost(self.paths(train, oof, t))
            pts.append((t, q, c))
        self.default_knob = choose_by_target(pts, ref_q, ctx.target_quality_ratio)
        self.model = self.fit_model(train, ctx)

    def knob_values(self) -> list[float]:
        return list(self.grid)

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        key = (self.name, "scores", id(test))
        if key not in ctx.cache:
            ctx.cache[key] = self.score(self.model, test, ctx)
        t = self.default_knob if knob is None else knob
        return self.paths(test, ctx.cache[key], 0.5 if t is None else t)
