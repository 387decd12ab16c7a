"""Task-mix: the query-agnostic rule every router must beat.

Method: per task, on the train split, each serving tier is one (mean cost, mean quality)
point; the upper convex hull of those points is the best quality reachable at each cost
by sending a random share of the task's queries to one tier and the rest to another.
For a target quality ratio t (vs the reference tier's mean train quality), the tasks'
hull segments are taken in order of quality gained per unit of cost (weighted by each
task's share of train rows), starting from every task's cheapest hull tier, until the
expected train quality reaches t * q_ref: the cheapest allocation reaching the target.
Every task then sits at one hull tier except (at most) one, which mixes the two hull
tiers bracketing its share of the target at the weight that meets it. It never looks at
a query: the draw per query is a seeded hash of (seed, query id), so runs are
reproducible and a larger target only moves queries up. The knob is the target t; the
default is the cheapest grid target whose expected train quality ratio reaches the
evaluation target (0.97).
"""

from __future__ import annotations

import hashlib

import numpy as np

from routenlp.bench.baselines.base import Baseline, Context, MatrixView, Path_, choose_by_target, register_baseline

TARGETS = [round(float(x), 4) for x in np.linspace(0.5, 1.1, 61)]


def tier_hull(costs: np.ndarray, quals: np.ndarray, tiers: np.ndarray) -> list[int]:
    """Tier indices on the upper convex hull of (cost, quality), cheapest first (rising
    cost and quality)."""
    order = sorted(range(len(tiers)), key=lambda k: (costs[k], -quals[k], tiers[k]))
    front: list[int] = []
    for k in order:
        if not front or quals[k] > quals[front[-1]] + 1e-12:
            front.append(k)
    hull: list[int] = []
    for k in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (quals[b] - quals[a]) * (costs[k] - costs[a]) <= (quals[k] - quals[a]) * (costs[b] - costs[a]) + 1e-15:
                hull.pop()
            else:
                break
        hull.append(k)
    return [int(tiers[k]) for k in hull]


def _uniform(seed: int, row_id: str) -> float:
    h = hashlib.blake2b(f"task-mix|{seed}|{row_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 2.0**64


@register_baseline("task-mix")
class TaskMix(Baseline):
    """Task-mix: per task, a random mix of two train-hull tiers, allocated across tasks for the target (no query features)."""

    name = "task-mix"
    knob = "target"

    def __init__(self) -> None:
        # task -> (hull tier indices, their mean train quality, their mean train cost, ref quality)
        self.hulls: dict[str, tuple[list[int], np.ndarray, np.ndarray, float]] = {}
        self.weights: dict[str, float] = {}
        self.ref_quality = 0.0
        self._alloc: dict[float, dict[str, tuple[int, int, float]]] = {}

    def fit(self, train: MatrixView, ctx: Context) -> None:
        self.hulls = {}
        self._alloc: dict[float, dict[str, tuple[int, int, float]]] = {}
        tasks = np.asarray(train.tasks)
        self.weights = {t: float(np.sum(tasks == t)) for t in train.task_names()}
        for task in train.task_names():
            rows = np.flatnonzero(tasks == task)
            serving = np.flatnonzero(train.serves[rows[0]])
            mq = train.Q[rows].mean(axis=0)
            mc = train.C[rows].mean(axis=0)
            hull = tier_hull(mc[serving], mq[serving], serving)
            ref = train.serving_at_or_above(int(rows[0]), ctx.reference_tier)
            self.hulls[task] = (hull, mq[hull], mc[hull], float(mq[ref]))
        ref_q, _ = ctx.reference_quality_cost(train)
        self.ref_quality = float(ref_q)
        pts = []
        for t in TARGETS:
            q, c = self.expected(train, t)
            pts.append((t, q, c))
        self.default_knob = choose_by_target(pts, ref_q, ctx.target_quality_ratio)

    def allocation(self, target: float) -> dict[str, tuple[int, int, float]]:
        """Per task (lower hull position, upper hull position, weight of the upper) for a
        target quality ratio: the greedy (fractional-knapsack) walk up the hull segments
        by quality gained per cost, which is the cheapest way to reach the target."""
        key = round(float(target), 9)
        if key in self._alloc:
            return self._alloc[key]
        total = sum(self.weights.values()) or 1.0
        pos = {t: 0 for t in self.hulls}
        have = sum(self.weights[t] * h[1][0] for t, h in self.hulls.items()) / total
        goal = float(target) * self.ref_quality
        segs = []
        for t, (hull, q, c, _) in self.hulls.items():
            for k in range(1, len(hull)):
                segs.append(((q[k] - q[k - 1]) / (c[k] - c[k - 1]), t, k))
        segs.sort(key=lambda x: (-x[0], x[1], x[2]))
        out: dict[str, tuple[int, int, float]] = {}
        for _, t, k in segs:
            if have >= goal - 1e-12:
                break
            q = self.hulls[t][1]
            gain = self.weights[t] * (q[k] - q[k - 1]) / total
            if have + gain >= goal - 1e-12:
                out[t] = (k - 1, k, float((goal - have) / gain))
                have = goal
                break
            pos[t] = k
            have += gain
        for t, k in pos.items():
            out.setdefault(t, (k, k, 0.0))
        self._alloc[key] = out
        return out

    def mixture(self, task: str, target: float) -> tuple[int, int, float]:
        """(lower tier, upper tier, probability of the upper tier) for a task and target."""
        lo, hi, w = self.allocation(target)[task]
        hull = self.hulls[task][0]
        return hull[lo], hull[hi], w

    def expected(self, view: MatrixView, target: float) -> tuple[float, float]:
        """(mean quality, total cost) of the mixture in expectation on a split (for the
        train-side choice of the default target: no random draw)."""
        q_tot, c_tot = 0.0, 0.0
        for i in range(view.n):
            lo, hi, w = self._mix_for(view, i, target)
            q_tot += (1 - w) * view.Q[i, lo] + w * view.Q[i, hi]
            c_tot += (1 - w) * view.C[i, lo] + w * view.C[i, hi]
        return q_tot / max(view.n, 1), c_tot

    def _mix_for(self, view: MatrixView, i: int, target: float) -> tuple[int, int, float]:
        task = view.tasks[i]
        if task not in self.hulls:  # unseen in train: the top serving tier
            top = view.top_index(i)
            return top, top, 0.0
        return self.mixture(task, target)

    def knob_values(self) -> list[float]:
        return list(TARGETS)

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        t = self.default_knob if knob is None else knob
        t = ctx.target_quality_ratio if t is None else t
        out: list[Path_] = []
        for i in range(test.n):
            lo, hi, w = self._mix_for(test, i, t)
            out.append([hi if _uniform(ctx.seed, test.rows[i].id) < w else lo])
        return out
