"""Router labels from a quality matrix: the cheapest acceptable tier of every query.

A tier is *acceptable* for a query when it serves the query's task and its recorded
quality is >= the task's tau. The label is the cheapest acceptable tier (lowest index in
the config's cost order, so price ties break towards the tier listed first); when no tier
is acceptable the label is the top tier serving the task (the best we can do is to send
the query to the strongest model). A missing outcome (no entry, quality None or an error)
counts as not acceptable: we never assume a tier would have succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from routenlp.config import EnsembleConfig
from routenlp.errors import DataError
from routenlp.matrix import MatrixRow

LABEL_DEFINITION = (
    "acceptable tier = cheapest tier (lowest index in the config's cost order) that serves the "
    "task and has recorded quality >= tau_t; the top serving tier when none is acceptable; "
    "missing outcomes (absent, quality null, or error) are not acceptable"
)
BEST_FALLBACK_DEFINITION = (
    "acceptable tier = cheapest tier (lowest index in the config's cost order) that serves the "
    "task and has recorded quality >= tau_t; when none is acceptable, the cheapest serving tier "
    "with the highest recorded quality; missing outcomes are not acceptable"
)


def serving_mask(config: EnsembleConfig, tasks: Sequence[str]) -> np.ndarray:
    """(T, K) bool matrix: True where tier k serves task t (config order)."""
    return np.array([[tier.serves(t) for tier in config.tiers] for t in tasks], dtype=bool)


LabelFallback = Literal["top", "best"]


def acceptable_tier(
    qualities: Sequence[float | None],
    serves: Sequence[bool],
    tau: float,
    fallback: LabelFallback = "top",
) -> tuple[int, bool]:
    """Index of the cheapest acceptable tier, and whether any tier was acceptable.

    `qualities[k]` is None for a missing outcome. When no tier is acceptable: "top" -> the
    top serving tier (the design default: the strongest model is the best bet); "best" ->
    the cheapest serving tier with the highest recorded quality on this query (for
    ensembles whose most expensive tier is not the strongest, as in public matrices).
    """
    top = -1
    best, best_q = -1, -1.0
    for k, (q, s) in enumerate(zip(qualities, serves)):
        if not s:
            continue
        top = k
        if q is not None and q >= tau:
            return k, True
        qq = -1.0 if q is None else q
        if best < 0 or qq > best_q:
            best, best_q = k, qq
    if top < 0:
        raise DataError("no tier serves this task; cannot build a router label")
    return (top if fallback == "top" else best), False


@dataclass
class LabelSet:
    """Everything router training and evaluation need, as aligned arrays."""

    tiers: list[str]
    tasks: list[str]
    texts: list[str]
    ids: list[str]
    task_index: np.ndarray  # (n,) int64 index into `tasks`
    labels: np.ndarray  # (n,) int64 acceptable tier index
    any_acceptable: np.ndarray  # (n,) bool: False where the label is the top-tier fallback
    quality: np.ndarray  # (n, K) float32, missing -> 0
    observed: np.ndarray  # (n, K) bool: outcome present with a quality and no error
    acceptable: np.ndarray  # (n, K) bool
    tau: np.ndarray  # (n,) float32 per-row tau of the row's task
    task_mask: np.ndarray  # (T, K) bool serving mask
    errored: np.ndarray | None = None  # (n, K) bool: the tier was tried and failed (error)

    @property
    def row_mask(self) -> np.ndarray:
        """(n, K) serving mask of each row's task."""
        return self.task_mask[self.task_index]

    @property
    def attempted(self) -> np.ndarray:
        """(n, K) bool: serving tiers with a known outcome (a quality, or an error = failure).

        The success head learns only from these: a never-recorded outcome says nothing
        about whether the tier would have succeeded.
        """
        err = self.errored if self.errored is not None else np.zeros_like(self.observed)
        return (self.observed | err) & self.row_mask

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> LabelSet:
        return LabelSet(
            tiers=self.tiers,
            tasks=self.tasks,
            texts=[self.texts[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            task_index=self.task_index[idx],
            labels=self.labels[idx],
            any_acceptable=self.any_acceptable[idx],
            quality=self.quality[idx],
            observed=self.observed[idx],
            acceptable=self.acceptable[idx],
            tau=self.tau[idx],
            task_mask=self.task_mask,
            errored=None if self.errored is None else self.errored[idx],
        )


def success_targets(labels: LabelSet, kind: Literal["graded", "binary"] = "graded") -> np.ndarray:
    """(n, K) float32 targets of the success head.

    binary: 1[q_k >= tau_t] (the acceptable matrix). graded: min(1, q_k / tau_t), which equals
    the binary target on 0/1 quality and gives partial credit on graded quality (ROUGE, F1),
    where with tau = 1 almost no answer is "acceptable" and the binary target carries no
    signal to tell tiers apart. Missing outcomes are 0 (they are masked out of the loss).
    """
    if kind == "binary":
        return labels.acceptable.astype(np.float32)
    tau = np.maximum(labels.tau, 1e-6)[:, None]
    graded = np.clip(labels.quality / tau, 0.0, 1.0)
    return np.where(labels.observed & labels.row_mask, graded, 0.0).astype(np.float32)


def build_labels(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    *,
    tasks: Sequence[str] | None = None,
    fallback: LabelFallback = "top",
) -> LabelSet:
    """Build labels for `rows` against the config's tiers (cost order) and task taus.

    `tasks` fixes the task index (e.g. the trained router's task list); by default it is
    the tasks of `rows` in first-seen order. Every row's task must be in the config.
    """
    if not rows:
        raise DataError("the quality matrix is empty; nothing to train the router on")
    tiers = config.tier_names
    if tasks is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.setdefault(r.task, None)
        tasks = list(seen)
    tasks = list(tasks)
    t_of = {t: i for i, t in enumerate(tasks)}
    taus = {t: config.task(t).tau for t in tasks}  # UnknownTaskError names the task
    mask = serving_mask(config, tasks)
    n, k = len(rows), len(tiers)
    quality = np.zeros((n, k), dtype=np.float32)
    observed = np.zeros((n, k), dtype=bool)
    errored = np.zeros((n, k), dtype=bool)
    acceptable = np.zeros((n, k), dtype=bool)
    labels = np.zeros(n, dtype=np.int64)
    any_ok = np.zeros(n, dtype=bool)
    task_index = np.zeros(n, dtype=np.int64)
    tau = np.zeros(n, dtype=np.float32)
    n_with_outcomes = 0
    for i, row in enumerate(rows):
        if row.task not in t_of:
            raise DataError(
                f"row {row.id!r} has task {row.task!r}, which is not among the router tasks "
                f"{tasks}"
            )
        ti = t_of[row.task]
        task_index[i] = ti
        tau[i] = taus[row.task]
        qs: list[float | None] = []
        for j, tier in enumerate(tiers):
            o = row.outcomes.get(tier)
            errored[i, j] = o is not None and o.error is not None
            q = None if o is None or o.error is not None or o.quality is None else o.quality
            if q is not None and np.isnan(q):
                q = None
            qs.append(q)
            if q is not None:
                quality[i, j] = q
                observed[i, j] = True
                acceptable[i, j] = bool(mask[ti, j]) and q >= taus[row.task]
        if any(q is not None for q in qs):
            n_with_outcomes += 1
        labels[i], any_ok[i] = acceptable_tier(qs, mask[ti].tolist(), taus[row.task], fallback)
    if n_with_outcomes == 0:
        found = sorted({t for r in rows for t in r.outcomes})
        raise DataError(
            f"no row has an outcome for any config tier {tiers}; the matrix has tiers {found}",
            hint="use the config (or models.json) that the matrix was labelled with",
        )
    return LabelSet(
        tiers=tiers,
        tasks=tasks,
        texts=[r.prompt for r in rows],
        ids=[r.id for r in rows],
        task_index=task_index,
        labels=labels,
        any_acceptable=any_ok,
        quality=quality,
        observed=observed,
        acceptable=acceptable,
        tau=tau,
        task_mask=mask,
        errored=errored,
    )


def tier_costs(config: EnsembleConfig, rows: Sequence[MatrixRow]) -> tuple[np.ndarray, str]:
    """Per-tier cost c_k used by the loss and the decision knob, and where it came from.

    "measured": the mean recorded cost per tier in the matrix, used when every tier has at
    least one recorded positive cost (real traffic knows what a tier costs better than the
    list price). "unit_price": TierConfig.unit_price otherwise (e.g. public matrices
    without token counts).
    """
    tiers = config.tier_names
    sums = np.zeros(len(tiers))
    counts = np.zeros(len(tiers))
    for r in rows:
        for j, t in enumerate(tiers):
            o = r.outcomes.get(t)
            if o is not None and o.cost is not None and not np.isnan(o.cost):
                sums[j] += o.cost
                counts[j] += 1
    if np.all(counts > 0) and np.all(sums > 0):
        return (sums / counts).astype(np.float64), "measured"
    prices = np.array([t.unit_price for t in config.tiers], dtype=np.float64)
    return prices, "unit_price"


def normalised_costs(costs: np.ndarray) -> np.ndarray:
    """c_k / c_K with c_K the most expensive tier (the top tier when tiers are cost-sorted).

    All-zero prices (free tiers) fall back to the tier rank so cost pressure still orders
    tiers cheapest-first.
    """
    c = np.asarray(costs, dtype=np.float64)
    top = float(c.max()) if c.size else 0.0
    if top <= 0:
        rank = np.arange(1, len(c) + 1, dtype=np.float64)
        return (rank / rank[-1]).astype(np.float32)
    return (c / top).astype(np.float32)
