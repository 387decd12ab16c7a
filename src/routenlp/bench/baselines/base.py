"""What every baseline sees (the matrix as arrays), the baseline protocol and the registry.

A baseline is fitted on the train split only and then maps each test query to a *path*:
the tier indices it calls in order, the last one serving the answer (a router's path has
one tier; a cascade's path grows with each escalation). The harness turns paths into
`Served` records with the same cost/latency/quality accounting as the replayed cascade.

Systems with a knob (a threshold, a budget) expose `knob_values()`; the harness sweeps
them for the cost-quality curve and reports the table row at `default_knob`, which every
baseline sets on the *train* split as the cheapest knob whose train quality ratio (vs the
same reference system as the report) reaches the target (0.97): "threshold set for the
same quality" as in the RouteLLM paper, applied to all baselines alike. Learned scores used
for that choice are cross-fitted (out-of-fold) so the choice is not fooled by
in-sample fit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError
from routenlp.matrix import MatrixRow

Path_ = list[int]
EmbedFn = Callable[[Sequence[str]], np.ndarray]


def response_text(response: Any) -> str:
    """A recorded response as text (lists/dicts as JSON) for embedding."""
    if response is None:
        return ""
    if isinstance(response, str):
        return response
    import json

    try:
        return json.dumps(response, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(response)


@dataclass
class MatrixView:
    """A (prepared) quality matrix as arrays, tiers in config (cost) order.

    Q: quality (a failed or missing outcome counts 0); C: cost (USD); L: latency in ms
    (nan when unknown); R: the recorded risk signal (nan when none); serves: whether the
    tier serves the query's task; has: whether the matrix holds an outcome for it.
    """

    rows: list[MatrixRow]
    tiers: list[str]
    tasks: list[str]
    Q: np.ndarray
    C: np.ndarray
    L: np.ndarray
    R: np.ndarray
    serves: np.ndarray
    has: np.ndarray
    tau: np.ndarray
    sla: np.ndarray

    @classmethod
    def build(cls, config: EnsembleConfig, rows: Sequence[MatrixRow]) -> MatrixView:
        tiers = config.tier_names
        n, k = len(rows), len(tiers)
        Q = np.zeros((n, k))
        C = np.zeros((n, k))
        L = np.full((n, k), np.nan)
        R = np.full((n, k), np.nan)
        serves = np.zeros((n, k), dtype=bool)
        has = np.zeros((n, k), dtype=bool)
        tau = np.zeros(n)
        sla = np.full(n, np.nan)
        task_cfg = {t.name: t for t in config.tasks}
        for i, row in enumerate(rows):
            tc = task_cfg.get(row.task)
            if tc is None:
                raise ConfigError(
                    f"matrix row {row.id!r} has task {row.task!r}, which the config does not "
                    f"define; known tasks: {config.task_names}"
                )
            tau[i] = tc.tau
            sla[i] = tc.sla_ms
            for j, tier in enumerate(config.tiers):
                serves[i, j] = tier.serves(row.task)
                o = row.outcomes.get(tier.name)
                if o is None:
                    continue
                has[i, j] = True
                Q[i, j] = float(o.quality) if (o.ok and o.quality is not None) else 0.0
                C[i, j] = float(o.cost or 0.0)
                if o.latency_s is not None:
                    L[i, j] = float(o.latency_s) * 1000.0
                r = o.risk()
                if r is not None:
                    R[i, j] = r
        return cls(list(rows), tiers, [r.task for r in rows], Q, C, L, R, serves, has, tau, sla)

    # -- helpers -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def k(self) -> int:
        return len(self.tiers)

    def subset(self, idx: Sequence[int] | np.ndarray) -> MatrixView:
        idx = np.asarray(idx, dtype=int)
        return MatrixView(
            [self.rows[i] for i in idx],
            self.tiers,
            [self.tasks[i] for i in idx],
            self.Q[idx],
            self.C[idx],
            self.L[idx],
            self.R[idx],
            self.serves[idx],
            self.has[idx],
            self.tau[idx],
            self.sla[idx],
        )

    def task_names(self) -> list[str]:
        return sorted(set(self.tasks))

    def top_index(self, i: int) -> int:
        """The most expensive tier serving query i."""
        idx = np.flatnonzero(self.serves[i])
        return int(idx[-1]) if idx.size else self.k - 1

    def serving_at_or_above(self, i: int, j: int) -> int:
        """Tier j if it serves query i, else the cheapest serving tier above it (else top)."""
        for jj in range(j, self.k):
            if self.serves[i, jj]:
                return jj
        return self.top_index(i)

    def always(self, j: int) -> list[Path_]:
        return [[self.serving_at_or_above(i, j)] for i in range(self.n)]

    def path_quality_cost(self, paths: Sequence[Path_]) -> tuple[float, float]:
        """(mean quality, total cost) of a set of paths: for quick train-side choices."""
        q = sum(self.Q[i, p[-1]] for i, p in enumerate(paths))
        c = sum(self.C[i, jj] for i, p in enumerate(paths) for jj in p)
        return q / max(self.n, 1), float(c)


@dataclass
class Context:
    """What the harness hands every baseline besides the split itself."""

    config: EnsembleConfig
    embed: EmbedFn
    reference_tier: int
    seed: int = 13
    target_quality_ratio: float = 0.97
    routenlp_mix: dict[str, dict[str, float]] | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def query_features(self, view: MatrixView) -> np.ndarray:
        """[MiniLM(prompt), one-hot(task)]: the input of every learned query router."""
        emb = self.embed([r.prompt for r in view.rows])
        tasks = self.config.task_names
        onehot = np.zeros((view.n, len(tasks)), dtype=np.float32)
        pos = {t: i for i, t in enumerate(tasks)}
        for i, t in enumerate(view.tasks):
            onehot[i, pos[t]] = 1.0
        return np.hstack([emb.astype(np.float32), onehot])

    def reference_quality_cost(self, view: MatrixView) -> tuple[float, float]:
        return view.path_quality_cost(view.always(self.reference_tier))


class Baseline(ABC):
    """A routing method from the literature, trained on the train split only."""

    name: ClassVar[str]
    knob: ClassVar[str | None] = None
    default_knob: float | None = None

    @abstractmethod
    def fit(self, train: MatrixView, ctx: Context) -> None: ...

    @abstractmethod
    def route(self, test: MatrixView, ctx: Context, knob: float | None = None) -> list[Path_]: ...

    def knob_values(self) -> list[float]:
        return []

    def describe(self) -> str:
        return (self.__doc__ or self.name).strip().splitlines()[0]


BaselineFactory = Callable[[], Baseline]
_REGISTRY: dict[str, BaselineFactory] = {}


def register_baseline(name: str) -> Callable[[BaselineFactory], BaselineFactory]:
    def deco(factory: BaselineFactory) -> BaselineFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def registered() -> dict[str, BaselineFactory]:
    import routenlp.bench.baselines  # noqa: F401  (registers the built-in baselines)

    return dict(_REGISTRY)


# -- shared pieces ----------------------------------------------------------------------


def choose_by_target(
    points: Sequence[tuple[float, float, float]], ref_quality: float, target: float
) -> float | None:
    """Given (knob, mean quality, total cost) on train, the cheapest knob whose quality
    ratio reaches the target; if none does, the knob with the best quality."""
    if not points:
        return None
    ok = [p for p in points if ref_quality > 0 and p[1] / ref_quality >= target - 1e-12]
    if ok:
        return min(ok, key=lambda p: (p[2], -p[1]))[0]
    return max(points, key=lambda p: (p[1], -p[2]))[0]


def kfold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return [perm[f::k] for f in range(k)]


def strong_weak_pair(train: MatrixView, task: str) -> tuple[int, int]:
    """Per task: strong = serving tier with the best train mean quality (cheaper on ties);
    weak = the best-quality serving tier costing at most half the strong tier (mean train
    cost), else the cheapest serving tier. Two-model routers (Hybrid LLM, RouteLLM,
    AutoMix) route between this pair."""
    rows = np.array([t == task for t in train.tasks])
    if not rows.any():
        raise ConfigError(f"task {task!r} has no train rows; cannot fit a two-model router")
    serving = np.flatnonzero(train.serves[rows][0])
    mq = train.Q[rows].mean(axis=0)
    mc = train.C[rows].mean(axis=0)
    strong = int(max(serving, key=lambda j: (round(mq[j], 9), -j)))
    cheaper = [j for j in serving if j < strong and mc[j] <= 0.5 * mc[strong] + 1e-15]
    if not cheaper:
        cheaper = [j for j in serving if j < strong]
    weak = int(max(cheaper, key=lambda j: (round(mq[j], 9), -j))) if cheaper else strong
    return weak, strong


def pairs_for(train: MatrixView, ctx: Context) -> dict[str, tuple[int, int]]:
    """Memoised per-task (weak, strong) pairs, shared by the two-model baselines."""
    key = "pairs"
    if key not in ctx.cache:
        ctx.cache[key] = {t: strong_weak_pair(train, t) for t in train.task_names()}
    return ctx.cache[key]


def pair_of(pairs: dict[str, tuple[int, int]], view: MatrixView, i: int) -> tuple[int, int]:
    """The pair for query i; a task unseen in train routes between cheapest and top."""
    got = pairs.get(view.tasks[i])
    if got is not None:
        return got
    serving = np.flatnonzero(view.serves[i])
    return int(serving[0]), int(serving[-1])


def threshold_grid(scores: np.ndarray, n: int = 41) -> list[float]:
    """Knob values spanning a score's range: quantiles plus both extremes (all/none)."""
    s = scores[np.isfinite(scores)]
    if s.size == 0:
        return [0.5]
    qs = np.quantile(s, np.linspace(0, 1, n))
    vals = sorted({float(v) for v in qs} | {float(s.min()) - 1e-9, float(s.max()) + 1e-9})
    return vals
