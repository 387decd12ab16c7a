"""Labelling on a Ray cluster with Ray Data: one pipeline stage per tier, each with its
own batch size and its own pool of actors (a tier's model is loaded once per actor).

Why this shape: the single-machine loop (routenlp.labeling) runs tiers one after the
other on each batch; on a cluster each tier becomes a `map_batches` stage so a slow top
tier and a fast classifier run at the same time on different workers. Everything that
defines the output is reused from labeling.py (which rows are left, their order, the
per-tier generate+score function, the matrix rows, the fsynced appends), so `--ray` writes
byte for byte the file the single-machine command writes, and is resumable the same way:
rows are written in input order as soon as their whole batch is labelled, and a rerun
skips the ids already in the output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from routenlp.config import EnsembleConfig
from routenlp.labeling import LabelStats, matrix_rows, plan_labelling, tier_outcomes
from routenlp.matrix import Outcome, append_rows
from routenlp.scale import connect, require_ray

_ROW = "row"
_IDX = "i"


def _column(k: int) -> str:
    return f"outcome_{k}"


class TierStage:
    """A Ray Data actor: builds one tier once, labels every batch of rows it serves."""

    def __init__(self, config: EnsembleConfig, tier_name: str, column: str) -> None:
        from routenlp.tiers.base import build_tier

        self.config = config
        self.tier_config = config.tier(tier_name)
        self.tier = build_tier(self.tier_config, config)
        self.column = column
        self._specs: dict[str, Any] = {}

    def _spec(self, task: str) -> Any:
        from routenlp.tasks import get_task_spec

        if task not in self._specs:
            self._specs[task] = get_task_spec(self.config.task(task))
        return self._specs[task]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [json.loads(s) for s in batch[_ROW]]
        out = [""] * len(rows)  # "" = this tier does not serve the row's task
        by_task: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if self.tier_config.serves(r["task"]):
                by_task.setdefault(r["task"], []).append(i)
        for task, idx in by_task.items():
            outcomes = tier_outcomes(self.tier, self._spec(task), [rows[i] for i in idx])
            for i, o in zip(idx, outcomes):
                out[i] = o.model_dump_json()
        return {**batch, self.column: np.array(out, dtype=object)}


def _stage_resources(cluster_cpus: float, n_stages: int) -> tuple[int, float]:
    """(actors per tier, CPUs per actor): share the cluster's CPUs evenly over the tiers.

    Fractional CPUs below one actor per tier keep every stage schedulable on a small
    cluster (a 2-CPU test with three tiers) instead of waiting forever for a free CPU."""
    share = max(cluster_cpus, 1.0) / max(n_stages, 1)
    if share >= 1.0:
        return int(share), 1.0
    return 1, share


def label_rows_ray(
    config: EnsembleConfig,
    rows: Sequence[dict[str, Any]],
    out_path: str | Path,
    *,
    tier_names: Iterable[str] | None = None,
    batch_size: int | None = None,
    address: str | None = None,
    workers_per_tier: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LabelStats:
    """Label `rows` on the Ray cluster at `address` (None: local or RAY_ADDRESS) and
    append them to `out_path` exactly as `routenlp.labeling.label_rows` would."""
    plan = plan_labelling(config, rows, out_path, tier_names=tier_names, batch_size=batch_size)
    stats = LabelStats(skipped=plan.skipped)
    if plan.n_todo == 0:
        return stats
    ray = connect(address)
    require_ray("data")
    import ray.data

    # Rows in the single-machine order (task groups in first-seen order), and the chunks
    # that order is written in (same boundaries, so a crash leaves the same prefix).
    ordered: list[dict[str, Any]] = [r for task_rows in plan.todo.values() for r in task_rows]
    chunks: list[tuple[str, int, int]] = []
    start = 0
    for task, task_rows in plan.todo.items():
        size = plan.batch_size[task]
        for s in range(0, len(task_rows), size):
            n = min(size, len(task_rows) - s)
            chunks.append((task, start + s, start + s + n))
        start += len(task_rows)

    stage_tiers = [n for n in plan.tier_names if any(n in s for s in plan.serving.values())]
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    actors, cpus_per_actor = _stage_resources(cpus, len(stage_tiers))
    if workers_per_tier:
        actors = workers_per_tier
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    n_blocks = max(1, min(len(ordered), actors * 4))
    ds = ray.data.from_items(
        [{_IDX: k, _ROW: json.dumps(r)} for k, r in enumerate(ordered)],
        override_num_blocks=n_blocks,
    )
    for k, name in enumerate(stage_tiers):
        ds = ds.map_batches(
            TierStage,
            fn_constructor_args=(config, name, _column(k)),
            batch_size=batch_size or config.tier(name).batch_size,
            concurrency=actors,
            num_cpus=cpus_per_actor,
            batch_format="numpy",
        )

    # Reorder buffer: write the contiguous prefix chunk by chunk, whatever order the
    # cluster finishes blocks in.
    pending: dict[int, dict[str, Outcome]] = {}
    next_chunk = 0
    for rec in ds.iter_rows():
        outcomes: dict[str, Outcome] = {}
        for k, name in enumerate(stage_tiers):
            raw = rec[_column(k)]
            if raw:
                outcomes[name] = Outcome.model_validate_json(raw)
        pending[int(rec[_IDX])] = outcomes
        while next_chunk < len(chunks):
            task, lo, hi = chunks[next_chunk]
            if not all(i in pending for i in range(lo, hi)):
                break
            got = [pending.pop(i) for i in range(lo, hi)]
            # Same outcome key order as the single-machine loop (serving tiers in order).
            got = [{n: o[n] for n in plan.serving[task] if n in o} for o in got]
            stats.errors += sum(o.error is not None for oc in got for o in oc.values())
            append_rows(out_path, matrix_rows(task, ordered[lo:hi], got))
            stats.written += hi - lo
            next_chunk += 1
            if on_progress:
                on_progress(hi - lo)
    if next_chunk != len(chunks):
        raise RuntimeError(
            f"the Ray pipeline returned {stats.written} of {len(ordered)} rows; rerun to resume"
        )
    return stats
