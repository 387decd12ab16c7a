"""Random: route each query to a tier drawn at random with RouteNLP's tier mix.

Method: the control that separates *which* queries a router sends where from *how many*
it sends to each tier. For each task, tier k is drawn with the share of that task's test
queries RouteNLP served at tier k (at its default operating point), restricted to tiers
that serve the task and renormalised; a task RouteNLP never served falls back to
RouteNLP's overall mix. Draws use the run's seed, so a run is reproducible. If RouteNLP's
mix is not available (e.g. evaluating baselines alone) the mix is uniform over the
serving tiers, and the report says so.
"""

from __future__ import annotations

import numpy as np

from routenlp.bench.baselines.base import Baseline, Context, MatrixView, Path_, register_baseline


@register_baseline("random")
class RandomRouter(Baseline):
    """Random: tiers drawn with RouteNLP's per-task tier mix (seeded)."""

    name = "random"
    knob = None

    def fit(self, train: MatrixView, ctx: Context) -> None:
        if ctx.routenlp_mix is None:
            ctx.notes.append("random: RouteNLP's tier mix unavailable; uniform over tiers")

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        rng = np.random.default_rng(ctx.seed)
        mix = ctx.routenlp_mix or {}
        overall = mix.get("__all__")
        paths: list[Path_] = []
        for i in range(test.n):
            shares = mix.get(test.tasks[i]) or overall
            if shares:
                p = np.array([shares.get(t, 0.0) for t in test.tiers], dtype=float)
            else:
                p = np.ones(test.k)
            p = p * test.serves[i]
            if p.sum() <= 0:
                p = test.serves[i].astype(float)
            p = p / p.sum()
            paths.append([int(rng.choice(test.k, p=p))])
        return paths
