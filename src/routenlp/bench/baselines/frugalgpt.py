"""FrugalGPT (Chen, Zaharia, Zou 2023): an LLM cascade with a learned answer scorer.

Method: a query goes through an ordered list of LLM APIs; after each API answers, a
scoring function g(query, answer) in [0, 1] estimates whether the answer is reliable; the
cascade stops at the first API whose score reaches that stage's threshold (the last API's
answer is always accepted). The list of APIs and the per-stage thresholds are chosen on
training data to maximise quality under a cost budget.

Here: g is the per-tier answer scorer of `scorer.py` (logistic regression on MiniLM
embeddings of query and answer; the paper used DistilBERT). Candidate cascades are all
cost-ordered chains of up to three tiers (as in the paper's search), thresholds for the
non-final stages come from a quantile grid of the cross-fitted train scores, and every
(chain, thresholds) pair is scored on the train split. The knob is the budget (cost ratio
vs the reference system on train); for each budget the best-quality configuration within
it is chosen, and the default budget is the least one whose train quality ratio reaches
the target. Tiers that do not serve a query's task are skipped; a chain whose last tier
does not serve it ends at the top serving tier.
"""

from __future__ import annotations

import itertools

import numpy as np

from routenlp.bench.baselines.base import (
    Baseline,
    Context,
    MatrixView,
    Path_,
    register_baseline,
)
from routenlp.bench.baselines.scorer import answer_scorer, scores_for

MAX_CHAIN = 3
N_THRESHOLDS = 6
BUDGETS = [round(x, 3) for x in np.concatenate([np.linspace(0.01, 0.3, 30), np.linspace(0.32, 1.2, 23)])]

Config = tuple[tuple[int, ...], tuple[float, ...]]


def run_chain(view: MatrixView, scores: np.ndarray, chain: tuple[int, ...], thr: tuple[float, ...]) -> list[Path_]:
    """Paths of one cascade configuration (skipping tiers that do not serve a task)."""
    out: list[Path_] = []
    for i in range(view.n):
        path: Path_ = []
        served = False
        for s, j in enumerate(chain):
            if not view.serves[i, j]:
                continue
            path.append(j)
            if s == len(chain) - 1 or scores[i, j] >= thr[s]:
                served = True
                break
        if not served:
            top = view.top_index(i)
            if not path or path[-1] != top:
                path.append(top)
        out.append(path)
    return out


def _vector_eval(view: MatrixView, scores: np.ndarray, chain: tuple[int, ...], thr: tuple[float, ...]) -> tuple[float, float]:
    """(mean quality, total cost) of a chain, vectorised for the search (all tiers serve)."""
    n = view.n
    alive = np.ones(n, dtype=bool)
    quality = np.zeros(n)
    cost = np.zeros(n)
    for s, j in enumerate(chain):
        cost += np.where(alive, view.C[:, j], 0.0)
        accept = alive if s == len(chain) - 1 else alive & (scores[:, j] >= thr[s])
        quality += np.where(accept, view.Q[:, j], 0.0)
        alive = alive & ~accept
    return float(quality.mean()), float(cost.sum())


@register_baseline("frugalgpt")
class FrugalGPT(Baseline):
    """FrugalGPT: cascade with a learned answer scorer, chain + thresholds fit on train for a budget."""

    name = "frugalgpt"
    knob = "budget"

    def __init__(self) -> None:
        self.by_budget: dict[float, Config] = {}

    def fit(self, train: MatrixView, ctx: Context) -> None:
        scorer = answer_scorer(train, ctx)
        S = scorer.train_scores
        all_serve = bool(train.serves.all())
        grids = [sorted(set(np.quantile(S[:, j], np.linspace(0.1, 0.95, N_THRESHOLDS)).tolist())) for j in range(train.k)]
        ref_q, ref_c = ctx.reference_quality_cost(train)
        results: list[tuple[float, float, Config]] = []  # (quality, cost ratio, config)
        for length in range(1, min(MAX_CHAIN, train.k) + 1):
            for chain in itertools.combinations(range(train.k), length):
                for thr in itertools.product(*(grids[j] for j in chain[:-1])):
                    if all_serve:
                        q, c = _vector_eval(train, S, chain, thr)
                    else:
                        q, c = train.path_quality_cost(run_chain(train, S, chain, thr))
                    results.append((q, c / ref_c if ref_c > 0 else 0.0, (chain, tuple(thr))))
        results.sort(key=lambda r: r[1])
        best: tuple[float, float, Config] | None = None
        best_by_cost: list[tuple[float, float, Config]] = []
        for r in results:  # running best quality as the budget grows
            if best is None or r[0] > best[0]:
                best = r
            best_by_cost.append(best)
        costs = np.array([r[1] for r in results])
        self.by_budget = {}
        for b in BUDGETS:
            k = int(np.searchsorted(costs, b, side="right")) - 1
            if k >= 0:
                self.by_budget[b] = best_by_cost[k][2]
        target = ctx.target_quality_ratio * ref_q
        self.default_knob = None
        for b in sorted(self.by_budget):
            k = int(np.searchsorted(costs, b, side="right")) - 1
            if best_by_cost[k][0] >= target - 1e-12:
                self.default_knob = b
                break
        if self.default_knob is None and self.by_budget:
            self.default_knob = max(self.by_budget)

    def knob_values(self) -> list[float]:
        return sorted(self.by_budget)

    def configuration(self, budget: float | None) -> Config:
        b = self.default_knob if budget is None else budget
        if b not in self.by_budget:
            b = min(self.by_budget, key=lambda x: abs(x - (b or 0.0)))
        return self.by_budget[b]

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        chain, thr = self.configuration(knob)
        return run_chain(test, scores_for(test, ctx), chain, thr)
