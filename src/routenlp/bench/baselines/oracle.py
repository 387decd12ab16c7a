"""Oracle: the cheapest acceptable tier of every query, known in hindsight.

Method: with the test outcomes in hand, serve each query at the cheapest tier whose
quality reaches the task's tau (the router's training label); where no tier does, serve
the cheapest tier with the best quality. It is an upper bound no deployable system can
reach (it reads the test labels), shown to size the headroom, and is excluded when
ranking systems.
"""

from __future__ import annotations

import numpy as np

from routenlp.bench.baselines.base import Baseline, Context, MatrixView, Path_, register_baseline


@register_baseline("oracle")
class Oracle(Baseline):
    """Oracle: cheapest tier with quality >= tau (reads the test labels; upper bound)."""

    name = "oracle"
    knob = None

    def fit(self, train: MatrixView, ctx: Context) -> None:
        return None

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        paths: list[Path_] = []
        for i in range(test.n):
            serving = np.flatnonzero(test.serves[i] & test.has[i])
            if serving.size == 0:
                paths.append([test.top_index(i)])
                continue
            ok = [j for j in serving if test.Q[i, j] >= test.tau[i] - 1e-12]
            if ok:
                paths.append([int(min(ok, key=lambda j: (test.C[i, j], j)))])
            else:
                best = test.Q[i, serving].max()
                cands = [j for j in serving if test.Q[i, j] >= best - 1e-12]
                paths.append([int(min(cands, key=lambda j: (test.C[i, j], j)))])
        return paths
