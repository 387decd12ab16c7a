"""Always-Tk: send every query to tier k.

Method: no routing at all; the fixed-tier systems are the reference points of every
routing paper (RouterBench, RouteLLM, FrugalGPT). Where tier k does not serve a query's
task, the query goes to the cheapest serving tier above k (else the top tier), which is
what a deployment pinned to tier k would have to do.
"""

from __future__ import annotations

from routenlp.bench.baselines.base import Baseline, Context, MatrixView, Path_


class AlwaysTier(Baseline):
    """Always-Tk: every query is served by one fixed tier."""

    knob = None

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.name = f"always-{tier}"  # type: ignore[misc]

    def fit(self, train: MatrixView, ctx: Context) -> None:
        return None

    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]:
        return test.always(test.tiers.index(self.tier))
