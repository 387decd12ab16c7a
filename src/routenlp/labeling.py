"""Labelling: run every tier that serves a task on every query, score each answer with the
task metric and write the quality matrix (routing-matrix JSONL).

The matrix is what the router learns from, what calibration uses and what evaluation
replays, so labelling is resumable (rows already in the output are skipped; every batch
is appended and fsynced) and a failing tier is recorded as an error outcome instead of
stopping the run.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from routenlp.config import EnsembleConfig, load_config
from routenlp.errors import UnknownTaskError
from routenlp.label_cache import TierCache
from routenlp.matrix import MatrixRow, Outcome, append_rows, done_ids, read_matrix, repair_tail
from routenlp.tiers.base import Generation, Request, Tier, build_tier, token_uncertainty
from routenlp.workloads.io import load_task_rows

log = logging.getLogger(__name__)

def generation_uncertainty(gen: Generation) -> float | None:
    """The signal recorded in the matrix: u from log-probs, else 1 - max class prob."""
    if gen.uncertainty is not None:
        return gen.uncertainty
    u = token_uncertainty(gen.logprobs)
    if u is not None:
        return u
    if gen.class_probs:
        return 1.0 - max(gen.class_probs.values())
    return None


@dataclass
class LabelStats:
    """Rows written/skipped, and tier outcomes: errors, served from the label cache
    (`cached`) or produced by the tier (`generated`)."""

    written: int = 0
    skipped: int = 0
    errors: int = 0
    cached: int = 0
    generated: int = 0


def _finite(value: float | None) -> float | None:
    """NaN/inf from a tier become null: the matrix reader rejects non-finite numbers."""
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _outcome(gen: Generation, quality: float | None) -> Outcome:
    return Outcome(
        quality=_finite(quality),
        cost=_finite(gen.cost),
        latency_s=_finite(gen.latency_s),
        uncertainty=_finite(generation_uncertainty(gen)),
        confidence=_finite(gen.confidence),
        response=gen.text if gen.ok else None,
        tokens_in=gen.usage.tokens_in,
        tokens_out=gen.usage.tokens_out,
        error=gen.error,
    )


def _safe_batch(tier: Tier, requests: Sequence[Request]) -> list[Generation]:
    """A tier that raises (it should not) still yields one error outcome per request."""
    t0 = time.perf_counter()
    try:
        gens = tier.generate_batch(requests)
        if len(gens) != len(requests):
            raise RuntimeError(f"returned {len(gens)} answers for {len(requests)} requests")
        return gens
    except Exception as err:  # noqa: BLE001 - recorded, labelling goes on
        elapsed = time.perf_counter() - t0
        return [Generation(text="", error=f"{tier.name}: {err}", latency_s=elapsed) for _ in requests]


@dataclass
class LabelPlan:
    """What is left to label: validated rows grouped by task (in first-seen order), the
    tiers to run, and per task the serving tiers and the single-machine batch size."""

    todo: dict[str, list[dict[str, Any]]]
    tier_names: list[str]
    serving: dict[str, list[str]]
    batch_size: dict[str, int]
    skipped: int

    @property
    def n_todo(self) -> int:
        return sum(len(v) for v in self.todo.values())


def plan_labelling(
    config: EnsembleConfig,
    rows: Sequence[dict[str, Any]],
    out_path: str | Path,
    *,
    tier_names: Iterable[str] | None = None,
    batch_size: int | None = None,
) -> LabelPlan:
    """Validate rows and tiers, repair a torn output tail and drop rows already labelled.

    Shared by the single-machine loop and the Ray Data pipeline (routenlp.scale.label), so
    both skip, group and order rows the same way."""
    rows = [{**r, "id": str(r["id"])} for r in rows]
    for r in rows:
        if r["task"] not in config.task_names:
            raise UnknownTaskError(
                f"data row {r['id']!r} has task {r['task']!r}, which the config does not "
                f"define; known tasks: {config.task_names}"
            )
    wanted = list(tier_names) if tier_names else config.tier_names
    for name in wanted:
        config.tier(name)  # unknown tier -> clear ConfigError
    repair_tail(out_path)
    done = done_ids(out_path)
    todo = [r for r in rows if r["id"] not in done]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in todo:
        by_task.setdefault(r["task"], []).append(r)
    serving = {t: [n for n in wanted if config.tier(n).serves(t)] for t in by_task}
    # only the tiers some remaining row needs: a finished or resumed run does not pay for
    # loading models it will not call
    wanted = [n for n in wanted if any(n in names for names in serving.values())]
    sizes = {
        t: batch_size or max([config.tier(n).batch_size for n in names] or [8])
        for t, names in serving.items()
    }
    return LabelPlan(by_task, wanted, serving, sizes, skipped=len(rows) - len(todo))


def _cached_batch(
    tier: Tier, requests: Sequence[Request], cache: TierCache | None, stats: LabelStats | None
) -> list[Generation]:
    """`_safe_batch` through the label cache: hits are served as recorded (no model call,
    no waiting), only the misses go to the tier, and their successes are stored."""
    if cache is None:
        gens = _safe_batch(tier, requests)
        if stats is not None:
            stats.generated += len(gens)
        return gens
    keys = [cache.key(r) if cache.cacheable(r) else None for r in requests]
    try:
        hits = cache.store.get_many([k for k in keys if k is not None], cache.tier)
    except sqlite3.Error as err:  # a cache locked past its timeout: label without it
        log.warning("label cache: lookup failed, generating instead: %s", err)
        hits = {}
    out: list[Generation | None] = [hits.get(k) if k is not None else None for k in keys]
    miss = [i for i, g in enumerate(out) if g is None]
    if miss:
        fresh = _safe_batch(tier, [requests[i] for i in miss])
        store: dict[str, tuple[Generation, float | None]] = {}
        for i, gen in zip(miss, fresh):
            out[i] = gen
            key = keys[i]
            if key is not None and gen.ok:
                store[key] = (gen, _finite(generation_uncertainty(gen)))
        try:
            cache.store.put_many(store, cache.tier.kind)
        except sqlite3.Error as err:  # a busy or full cache must not lose the labels
            log.warning("label cache: could not store %d generations: %s", len(store), err)
    if stats is not None:
        stats.cached += len(requests) - len(miss)
        stats.generated += len(miss)
    return [g for g in out if g is not None]


def tier_outcomes(
    tier: Tier,
    spec: Any,
    chunk: Sequence[dict[str, Any]],
    *,
    cache: TierCache | None = None,
    stats: LabelStats | None = None,
) -> list[Outcome]:
    """One tier on one batch of one task's rows: generate (or read the label cache),
    parse, score (never raises). Quality is always scored here, never cached."""
    requests = [spec.build_request(r["input"], id=r["id"]) for r in chunk]
    for req, r in zip(requests, chunk):
        req.reference = r.get("reference")  # read by the simulated-frontier tier only
    out: list[Outcome] = []
    for r, gen in zip(chunk, _cached_batch(tier, requests, cache, stats)):
        quality = None
        if gen.ok:
            try:
                quality = float(spec.score(spec.parse(gen.text), r.get("reference")))
            except Exception as err:  # noqa: BLE001 - a scorer bug must not lose rows
                gen.error = f"scoring failed: {err}"
        out.append(_outcome(gen, quality))
    return out


def matrix_rows(
    task: str, chunk: Sequence[dict[str, Any]], outcomes: Sequence[dict[str, Outcome]]
) -> list[MatrixRow]:
    """The quality-matrix rows of one labelled batch."""
    return [
        MatrixRow(
            id=r["id"], task=task, prompt=r["input"], reference=r.get("reference"),
            outcomes=dict(outcomes[i]),
        )
        for i, r in enumerate(chunk)
    ]


def _fallback_of(config: EnsembleConfig, name: str) -> str | None:
    """The tier a simulated frontier serves on its simulated errors (None for other kinds)."""
    cfg_t = config.tier(name)
    return cfg_t.reference_options.fallback_tier if cfg_t.kind == "reference" else None


def attach_fallbacks(config: EnsembleConfig, built: dict[str, Tier]) -> None:
    """The simulated frontier serves its fallback tier's answer on its simulated errors:
    hand it the already loaded tier instead of letting it load a second copy."""
    for name, tier in built.items():
        fb = _fallback_of(config, name)
        if fb in built and hasattr(tier, "attach_fallback"):
            tier.attach_fallback(built[fb])  # type: ignore[attr-defined]


class SameBatchAnswers:
    """The fallback tier's answers to the batch it is labelling beside the simulated
    frontier: the frontier's simulated errors serve those answers instead of asking the
    fallback model again for the same prompts (on 2 cores the second call waited for the
    model: 5.8 of 90 s when T2-T4 labelled 60 rows). A request outside the batch goes to
    the tier."""

    def __init__(self, tier: Tier, answers: Callable[[], Sequence[Outcome]], ids: Sequence[str]) -> None:
        self.tier = tier
        self.name = tier.name
        self._answers = answers
        self._ids = [str(i) for i in ids]

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        by_id = dict(zip(self._ids, self._answers()))
        out: list[Generation] = []
        for req in requests:
            o = by_id.get(str(req.id)) if req.id is not None else None
            if o is None:
                out.append(self.tier.generate_batch([req])[0])
            else:
                out.append(Generation(text=o.response or "", error=o.error, latency_s=o.latency_s))
        return out

    def generate(self, request: Request) -> Generation:
        return self.generate_batch([request])[0]


def _batch_fallbacks(config: EnsembleConfig, built: dict[str, Tier], names: Sequence[str]) -> dict[str, str]:
    """Simulated-frontier tier -> its fallback tier, for the pairs labelled in the same batch."""
    out: dict[str, str] = {}
    for name in names:
        fb = _fallback_of(config, name)
        if fb in names and config.tier(fb).kind != "reference" and hasattr(built[name], "attach_fallback"):
            out[name] = fb
    return out


def label_rows(
    config: EnsembleConfig,
    rows: Sequence[dict[str, Any]],
    out_path: str | Path,
    *,
    tiers: dict[str, Tier] | None = None,
    tier_names: Iterable[str] | None = None,
    batch_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    use_cache: bool = True,
) -> LabelStats:
    """Label `rows` with every serving tier and append them to `out_path` (resumable).

    Deterministic local tiers go through the label cache (routenlp.label_cache) unless
    `use_cache` is False or ROUTENLP_LABEL_CACHE=0; `stats.cached` counts its hits."""
    from routenlp.label_cache import open_tier_caches
    from routenlp.tasks import get_task_spec

    plan = plan_labelling(config, rows, out_path, tier_names=tier_names, batch_size=batch_size)
    built: dict[str, Tier] = dict(tiers or {})
    for name in plan.tier_names:
        if name not in built:
            built[name] = build_tier(config.tier(name), config)
    attach_fallbacks(config, built)
    stats = LabelStats(skipped=plan.skipped)
    if plan.n_todo == 0:
        return stats
    store, caches = open_tier_caches(
        config, {n: built[n] for n in plan.tier_names}, use_cache=use_cache
    )
    pool = ThreadPoolExecutor(max_workers=max(1, len(plan.tier_names)), thread_name_prefix="label")
    try:
        for task, task_rows in plan.todo.items():
            spec = get_task_spec(config.task(task))
            size = plan.batch_size[task]
            for start in range(0, len(task_rows), size):
                chunk = task_rows[start : start + size]
                outcomes: list[dict[str, Outcome]] = [{} for _ in chunk]
                names = list(plan.serving[task])
                per_tier = {name: LabelStats() for name in names}
                fallbacks = _batch_fallbacks(config, built, names)
                # the tiers of one batch run side by side: local engines release the GIL
                # and each is pinned to its own threads, so on 2 cores T2 and T3 overlap;
                # a simulated frontier goes last, its errors served from its fallback's column
                futures: dict[str, Any] = {}
                for name in sorted(names, key=lambda n: n in fallbacks):
                    if name in fallbacks:
                        fb_future = futures[fallbacks[name]]
                        built[name].attach_fallback(SameBatchAnswers(  # type: ignore[attr-defined]
                            built[fallbacks[name]], fb_future.result, [r["id"] for r in chunk]))
                    futures[name] = pool.submit(
                        tier_outcomes, built[name], spec, chunk,
                        cache=caches.get(name), stats=per_tier[name],
                    )
                for name in names:
                    got = futures[name].result()
                    stats.cached += per_tier[name].cached
                    stats.generated += per_tier[name].generated
                    for i, o in enumerate(got):
                        stats.errors += o.error is not None
                        outcomes[i][name] = o
                append_rows(out_path, matrix_rows(task, chunk, outcomes))
                stats.written += len(chunk)
                if on_progress:
                    on_progress(len(chunk))
    finally:
        pool.shutdown(wait=True)
        attach_fallbacks(config, built)  # the tiers themselves again, for later callers
        if store is not None:
            store.close()
    return stats


def summarise(rows: Iterable[MatrixRow], tier_order: Sequence[str]) -> list[dict[str, Any]]:
    """Per task, per tier: mean quality, mean cost, latency p50/p95 and error rate."""
    import numpy as np

    acc: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in rows:
        for tier, o in row.outcomes.items():
            slot = acc.setdefault((row.task, tier), {"q": [], "c": [], "l": [], "e": []})
            slot["e"].append(0.0 if o.error is None else 1.0)
            if o.quality is not None:
                slot["q"].append(o.quality)
            if o.cost is not None:
                slot["c"].append(o.cost)
            if o.latency_s is not None:
                slot["l"].append(o.latency_s * 1000.0)
    order = {t: i for i, t in enumerate(tier_order)}
    out = []
    for (task, tier), s in sorted(acc.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        out.append(
            {
                "task": task,
                "tier": tier,
                "n": len(s["e"]),
                "quality": float(np.mean(s["q"])) if s["q"] else None,
                "cost": float(np.mean(s["c"])) if s["c"] else None,
                "latency_p50_ms": float(np.percentile(s["l"], 50)) if s["l"] else None,
                "latency_p95_ms": float(np.percentile(s["l"], 95)) if s["l"] else None,
                "error_rate": float(np.mean(s["e"])),
            }
        )
    return out


def print_summary(
    summary: list[dict[str, Any]],
    title: str = "Quality matrix",
    labels: dict[str, str] | None = None,
) -> None:
    """The per-task, per-tier table; `labels` maps tier names to what the table shows
    (e.g. `T4 (simulated frontier (reference answers))`)."""
    from rich.table import Table

    from routenlp.cli_utils import console

    table = Table(title=title)
    for col in ("task", "tier", "n", "quality", "cost $", "p50 ms", "p95 ms", "errors"):
        table.add_column(col, justify="left" if col in ("task", "tier") else "right")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for s in summary:
        table.add_row(
            s["task"],
            (labels or {}).get(s["tier"], s["tier"]),
            str(s["n"]),
            fmt(s["quality"], ".3f"),
            fmt(s["cost"], ".6f"),
            fmt(s["latency_p50_ms"], ".0f"),
            fmt(s["latency_p95_ms"], ".0f"),
            f"{s['error_rate']:.0%}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    from routenlp.cli_utils import friendly_errors, progress

    @app.command("label")
    @friendly_errors
    def label_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="ensemble YAML"),
        data: Path = typer.Option(..., "--data", "-d", help="task dataset JSONL"),
        out: Path = typer.Option(..., "--out", "-o", help="quality matrix JSONL (appended)"),
        tiers: str | None = typer.Option(None, help="comma-separated tiers (default: all)"),
        limit: int | None = typer.Option(
            None, "--limit", min=1, help="label only the first N rows per task"
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", min=1, help="override the tiers' batch sizes"
        ),
        as_json: bool = typer.Option(
            False, "--json", help="print a JSON summary object on stdout instead of the table"
        ),
        ray: bool = typer.Option(
            False, "--ray", help="label on a Ray cluster with Ray Data (extra: routenlp[ray])"
        ),
        address: str | None = typer.Option(
            None, "--address", help="Ray cluster address with --ray (default: RAY_ADDRESS or local)"
        ),
        no_cache: bool = typer.Option(
            False, "--no-cache",
            help="call every tier even when the label cache holds its answer "
            "(also ROUTENLP_LABEL_CACHE=0)",
        ),
    ) -> None:
        """Run every serving tier on every query, score it, write the quality matrix.

        Re-running skips rows already in --out; a failing tier is recorded as an error
        outcome and labelling goes on. Answers of deterministic local tiers are cached by
        content in the user cache dir (quality is always re-scored); --no-cache skips it.
        With --ray each tier is a Ray Data stage with its own batch size; the output file
        is the same (the Ray path does not use the label cache)."""
        from routenlp.cli_utils import console, print_json
        from routenlp.errors import DataError

        if address and not ray:
            raise DataError("--address is only used with --ray", hint="add --ray")
        if out.exists() and out.is_dir():
            raise DataError(f"--out {out} is a directory; give the matrix JSONL file to write")
        cfg = load_config(config)
        rows = load_task_rows(data)
        if not rows:  # before any tier is loaded: the input is what is wrong
            raise DataError(
                f"--data {data}: the input file has no rows",
                hint="each line must be a JSON object with id, task, input and reference",
            )
        if limit:
            per: dict[str, int] = {}
            kept = []
            for r in rows:
                per[r["task"]] = per.get(r["task"], 0) + 1
                if per[r["task"]] <= limit:
                    kept.append(r)
            rows = kept
        names = [t.strip() for t in tiers.split(",") if t.strip()] if tiers else None
        t0 = time.perf_counter()
        with progress() as bar:
            task_id = bar.add_task("labelling", total=len(rows))
            already = len(done_ids(out) & {str(r["id"]) for r in rows})
            bar.advance(task_id, already)
            if ray:
                from routenlp.scale.label import label_rows_ray

                stats = label_rows_ray(
                    cfg, rows, out, tier_names=names, batch_size=batch_size, address=address,
                    on_progress=lambda n: bar.advance(task_id, n),
                )
            else:
                stats = label_rows(
                    cfg, rows, out, tier_names=names, batch_size=batch_size,
                    on_progress=lambda n: bar.advance(task_id, n), use_cache=not no_cache,
                )
        summary = summarise(read_matrix(out), cfg.tier_names)
        labels = {t.name: t.display_name for t in cfg.tiers}
        if as_json:
            print_json(
                {
                    "config": str(config),
                    "data": str(data),
                    "out": str(out),
                    "rows": len(rows),
                    "written": stats.written,
                    "skipped": stats.skipped,
                    "errors": stats.errors,
                    "cached": stats.cached,
                    "generated": stats.generated,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "tiers": labels,
                    "summary": summary,
                }
            )
            return
        print_summary(summary, title=f"Quality matrix {out}", labels=labels)
        console.print(
            f"labelled {stats.written} rows, skipped {stats.skipped} already done, "
            f"{stats.errors} tier errors recorded -> {out}"
        )
        if stats.cached or stats.generated:
            console.print(f"labels: {stats.cached} cached, {stats.generated} generated")
