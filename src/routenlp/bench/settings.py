"""What the evaluation stages share: one settings object, the prepared data, and each
system's run (per-query outcomes of its default point and of every curve point).

Why a run keeps per-query outcomes of every operating point: the bootstrap re-scores every
point on resampled queries and re-takes the hull, and `--per-query` writes the default
point's rows; both need more than the summary numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from routenlp.bench.baselines.base import EmbedFn, MatrixView
from routenlp.bench.bootstrap import N_RESAMPLES, PointOutcomes
from routenlp.bench.metrics import Served
from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError
from routenlp.matrix import MatrixRow

ASSUMED_OUTPUT_TOKENS = 128
DEFAULT_POINTS = 40
ProgressFn = Callable[[str, int, int], None]
CountTokens = Callable[[Sequence[str]], list[int]]


@dataclass
class EvalSettings:
    """Every knob of one evaluation run (the CLI options of `evaluate` / `benchmark`).

    `points`: the cap on operating points per system (the same for all; a longer knob
    grid is subsampled evenly, deterministically, keeping the default knob).
    `bootstrap`: paired-bootstrap resamples over test queries (0: no intervals).
    `cost_biases`: RouteNLP's cost_bias grid (None: the router rule's default grid).
    `ladder`: the Cascade's escalation ladder ("frontier" | "all"; None: frontier when
    the router provides it)."""

    baselines: str | Sequence[str] = "all"
    reference: Literal["top", "best"] = "top"
    sla_aware: bool = True
    seed: int = 13
    cost_biases: Sequence[float] | None = None
    assumed_output_tokens: int = ASSUMED_OUTPUT_TOKENS
    matrix_name: str = ""
    target_quality_ratio: float = 0.97
    ladder: str | None = None
    points: int = DEFAULT_POINTS
    bootstrap: int = N_RESAMPLES
    embed: EmbedFn | None = None
    count_tokens: CountTokens | None = None
    progress: ProgressFn | None = None

    def __post_init__(self) -> None:
        if self.reference not in ("top", "best"):
            raise ConfigError(f"--reference must be 'top' or 'best', got {self.reference!r}")
        if int(self.points) < 1:
            raise ConfigError(f"--points must be >= 1, got {self.points}")
        if int(self.bootstrap) < 0:
            raise ConfigError(f"--bootstrap must be >= 0, got {self.bootstrap}")

    def step(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(label, done, total)


@dataclass
class EvalData:
    """The prepared splits (costs and latencies filled in) and what preparation noted."""

    config: EnsembleConfig
    test: MatrixView
    train: MatrixView | None
    cal: MatrixView | None
    cal_rows: list[MatrixRow] | None
    notes: list[str] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=dict)
    latency: dict[str, float] | None = None

    @property
    def tiers(self) -> list[str]:
        return self.config.tier_names


@dataclass
class SystemRun:
    """One system on the test split: its default point (`records`, the table row) and its
    capped curve points as per-query outcomes (`points`, shape (P, n))."""

    name: str
    records: list[Served]
    points: PointOutcomes
    description: str = ""
    operating_point: dict[str, float | str | None] = field(default_factory=dict)


def outcomes_of(point_records: Sequence[Sequence[Served]]) -> PointOutcomes:
    """Per-query (quality, cost) arrays of a list of operating points' records."""
    q = np.array([[r.quality for r in recs] for recs in point_records], dtype=float)
    c = np.array([[r.cost for r in recs] for recs in point_records], dtype=float)
    return PointOutcomes(quality=q.reshape(len(point_records), -1), cost=c.reshape(len(point_records), -1))


def single_point_run(name: str, records: list[Served], description: str = "", operating_point: dict[str, Any] | None = None) -> SystemRun:
    """A system with no knob: its curve is its one point."""
    return SystemRun(name, records, outcomes_of([records]), description, operating_point or {})
