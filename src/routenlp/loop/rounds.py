"""Optimisation rounds: mine -> cluster -> sets -> distil -> re-label the changed tiers ->
retrain the router -> re-certify the served policy -> evaluate, with versioned artifacts.

Layout under `out`:
  baseline/artifacts/              round 0: router/, policy.json, thresholds.json, tiers.json
  rounds/<strategy>/round-<n>/     artifacts/ (router/, thresholds.json, tiers/<T>/..., tiers.json),
                                   matrices/{train,cal,test}.jsonl, clusters.json, set.jsonl,
                                   round.json
  serving/                         a byte-for-byte copy of the accepted artifacts the
                                   gateway should serve (serving.json says which round)
  loop.json                        every round's status and table row

Only the primary strategy (the first of --strategy) promotes into serving/; the random
ablation is versioned beside it but never served. A round whose calibration-split quality
ratio falls below the target is rejected: its artifacts stay in its round directory and
serving/ is untouched.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routenlp.config import EnsembleConfig
from routenlp.errors import DataError
from routenlp.loop import adapters
from routenlp.loop.cluster import ClusterReport, cluster_failures
from routenlp.loop.distill import DistillResult, LoraSettings, distill_tier, with_artifact
from routenlp.loop.mining import Failure, mine_matrix, mine_store
from routenlp.loop.sets import DistillSet, Example, HeldOut, random_set, targeted_set
from routenlp.matrix import MatrixRow, read_matrix, write_matrix
from routenlp.store.store import tree_sha256

STAGES = ("mine", "cluster", "sets", "distill", "relabel", "router", "calibrate", "evaluate")
STRATEGIES = ("targeted", "random")


@dataclass
class LoopOptions:
    rounds: int = 3
    strategies: tuple[str, ...] = ("targeted",)
    teacher: str = "top"
    epsilon: float = 0.005
    top_clusters: int = 5
    priority: str = "spend"  # cluster ranking (loop/cluster.py): spend | gap (the paper's)
    min_cluster: int = 8
    k_range: tuple[int, int] = (2, 8)
    max_per_tier: int | None = 64
    tiers: tuple[str, ...] | None = None  # distillable tiers (default: every non-top trainable tier)
    target_quality: float | None = None  # cal quality-ratio bar (default: min(baseline, router.quality_target) - tolerance)
    quality_tolerance: float = 0.01
    seed: int = 13
    lora: LoraSettings = field(default_factory=LoraSettings)
    store: Any = None  # a Store: artifacts are registered in it
    from_store: bool = False  # also mine the store's request log + feedback
    parallel: bool = False  # run the strategies' chains side by side (threads)
    # logged traffic outside the matrices with the teacher's answer recorded (at least the
    # top tier labelled): targeted rounds fill failure clusters with its nearest rows and
    # random rounds draw from it too; it is never re-labelled or scored
    pool: list[MatrixRow] = field(default_factory=list)


@dataclass
class State:
    """What a strategy's chain currently serves."""

    config: EnsembleConfig
    train: list[MatrixRow]
    cal: list[MatrixRow]
    test: list[MatrixRow]
    artifacts: Path
    examples: dict[str, list[Example]] = field(default_factory=dict)
    cal_eval: dict[str, Any] = field(default_factory=dict)
    test_eval: dict[str, Any] = field(default_factory=dict)


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - t0, 3)


# -- artifacts ------------------------------------------------------------------------
def _tier_map(config: EnsembleConfig, root: Path) -> dict[str, dict[str, str | None]]:
    out = {}
    for t in config.tiers:
        art = t.adapter if t.kind == "local" else t.head if t.kind == "classifier" else None
        if art and Path(art).resolve().is_relative_to(root.resolve()):
            # produced by the loop: stored relative, so a copy (serving/) points at itself
            out[t.name] = {"kind": t.kind, "artifact": str(Path(art).resolve().relative_to(root.resolve()))}
        else:
            out[t.name] = {"kind": t.kind, "artifact": None, "configured": art}
    return out


def write_tier_map(config: EnsembleConfig, artifacts: Path) -> None:
    (artifacts / "tiers.json").write_text(json.dumps(_tier_map(config, artifacts), indent=2, sort_keys=True) + "\n")


def config_with_tiers(config: EnsembleConfig, artifacts: Path) -> EnsembleConfig:
    """The config with each loop-trained tier pointed at the adapter/head an artifacts
    dir holds (tiers the loop did not train keep the config's own adapter/head)."""
    mp = json.loads((artifacts / "tiers.json").read_text())
    tiers = []
    for t in config.tiers:
        art = (mp.get(t.name) or {}).get("artifact")
        if art is not None:  # else the tier keeps what the config says
            art = str((artifacts / art).resolve())
            t = t.model_copy(update={"adapter" if t.kind == "local" else "head": art})
        tiers.append(t)
    return config.model_copy(update={"tiers": tiers})


def promote(artifacts: Path, serving: Path, meta: dict[str, Any]) -> str:
    """Replace serving/ by a copy of `artifacts` (atomic rename); returns its sha256."""
    tmp = serving.with_name(serving.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(artifacts, tmp)
    sha = tree_sha256(tmp)
    old = serving.with_name(serving.name + ".old")
    if serving.exists():
        if old.exists():
            shutil.rmtree(old)
        serving.rename(old)
    tmp.rename(serving)
    if old.exists():
        shutil.rmtree(old)
    (serving.parent / "serving.json").write_text(json.dumps({**meta, "sha256": sha}, indent=2, sort_keys=True) + "\n")
    return sha


def round_artifacts(out: Path, round_no: int, strategy: str | None = None) -> Path:
    """The artifacts dir of round N (0 = baseline); strategy defaults to the served one."""
    if round_no == 0:
        return out / "baseline" / "artifacts"
    if strategy is None:
        loop = json.loads((out / "loop.json").read_text()) if (out / "loop.json").exists() else {}
        strategy = loop.get("primary", "targeted")
    return out / "rounds" / str(strategy) / f"round-{round_no}" / "artifacts"


def rollback(out: str | Path, round_no: int, strategy: str | None = None, store: Any = None) -> dict[str, Any]:
    """Restore serving/ to round N's artifacts, byte for byte (verified by sha256)."""
    out = Path(out)
    src = round_artifacts(out, round_no, strategy)
    if not src.is_dir():
        raise DataError(f"round {round_no} has no artifacts under {src.parent}",
                        hint="list the rounds with `cat <out>/loop.json`")
    status = json.loads((src.parent / "round.json").read_text()).get("status") if (src.parent / "round.json").exists() else "accepted"
    want = tree_sha256(src)
    got = promote(src, out / "serving", {"round": round_no, "strategy": strategy or "baseline", "rolled_back": True})
    if got != want:
        raise DataError(f"rollback copy of {src} differs from the original (sha256 {got} != {want})")
    if store is not None:
        for rec in store.list_artifacts():
            md = rec.metadata or {}
            if rec.kind.startswith("loop-") and md.get("round") == round_no and md.get("strategy") in (strategy, None, "baseline"):
                store.activate_artifact(rec.kind, rec.version)
    return {"round": round_no, "strategy": strategy, "sha256": got, "source": str(src), "round_status": status}


def register_in_store(store: Any, artifacts: Path, config: EnsembleConfig, round_no: int, strategy: str) -> None:
    meta = {"round": round_no, "strategy": strategy}
    store.register_artifact("loop-router", artifacts / "router", config_hash=config.hash(), metadata=meta)
    store.register_artifact("loop-thresholds", artifacts / "thresholds.json", config_hash=config.hash(), metadata=meta)
    if (artifacts / "policy.json").is_file():
        store.register_artifact("loop-policy", artifacts / "policy.json", config_hash=config.hash(), metadata=meta)
    for sub in sorted((artifacts / "tiers").glob("*")) if (artifacts / "tiers").is_dir() else []:
        store.register_artifact(f"loop-tier-{sub.name}", sub, config_hash=config.hash(), metadata=meta)


# -- one round ------------------------------------------------------------------------
def distillable_tiers(config: EnsembleConfig, wanted: Sequence[str] | None) -> list[str]:
    top_only = {ts[-1].name for task in config.task_names if (ts := config.tiers_for(task))}
    names = list(wanted) if wanted else [t.name for t in config.tiers if t.name not in top_only
                                         and t.kind in ("local", "classifier", "openai_compat")]
    for n in names:
        config.tier(n)
    return names


def per_cluster_gain(report: ClusterReport, clusters: Sequence[Any], embed: adapters.EmbedFn,
                     before: Sequence[MatrixRow], after: Sequence[MatrixRow], tiers: Sequence[str]) -> list[dict[str, Any]]:
    """Quality of each distilled tier on the test queries that fall in each cluster."""
    after_by = {r.id: r for r in after}
    out = []
    for c in clusters:
        rows = [r for r in before if r.task == c.task]
        if not rows:
            continue
        lab = report.spaces[c.task].assign(embed([r.prompt for r in rows]))
        members = [r for r, k in zip(rows, lab) if int(k) == c.index]
        for tier in tiers:
            qb = [r.quality(tier) for r in members if r.quality(tier) is not None]
            qa = [after_by[r.id].quality(tier) for r in members if after_by[r.id].quality(tier) is not None]
            if not qb:
                continue
            out.append({"cluster": c.key, "rank": c.rank, "tier": tier, "n_test": len(members),
                        "quality_before": round(float(np.mean(qb)), 6),
                        "quality_after": round(float(np.mean(qa)), 6) if qa else None})
    return out


def fit_policy(state_cfg: EnsembleConfig, train: list[MatrixRow], cal: list[MatrixRow], artifacts: Path,
               timer: Timer) -> tuple[Any, Any]:
    artifacts.mkdir(parents=True, exist_ok=True)
    timer.run("router", lambda: adapters.train_router(state_cfg, train, artifacts / "router"))
    router = adapters.load_router(state_cfg, artifacts / "router")
    policy = timer.run("calibrate", lambda: adapters.calibrate(state_cfg, cal, artifacts, router=router))
    return router, policy


def evaluate_both(cfg: EnsembleConfig, cal: list[MatrixRow], test: list[MatrixRow], router: Any, th: Any,
                  timer: Timer) -> tuple[dict[str, Any], dict[str, Any]]:
    def run() -> tuple[dict[str, Any], dict[str, Any]]:
        return adapters.evaluate(cfg, cal, router, th), adapters.evaluate(cfg, test, router, th)

    return timer.run("evaluate", run)


def run_round(
    base_config: EnsembleConfig,
    state: State,
    strategy: str,
    round_no: int,
    round_dir: Path,
    opts: LoopOptions,
    held_out: HeldOut,
    *,
    embed: adapters.EmbedFn,
    bar: float,
    progress: Any = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[dict[str, Any], State | None]:
    """One round of one strategy. Returns (round record, new state or None if rejected)."""
    timer = Timer()
    art = round_dir / "artifacts"
    if round_dir.exists():
        shutil.rmtree(round_dir)
    art.mkdir(parents=True)
    tiers = distillable_tiers(base_config, opts.tiers)

    def mine() -> list[Failure]:
        fs = mine_matrix(state.config, state.train, tiers=tiers)
        if opts.from_store and opts.store is not None:
            fs += [f for f in mine_store(state.config, opts.store) if (f.id, f.query) not in held_out]
        return fs

    failures = timer.run("mine", mine)
    if not failures:
        return _record(round_no, strategy, "stopped", "no failures left to mine", state, timer), None
    tv = adapters.router_task_vectors(state.artifacts / "router")
    report = timer.run("cluster", lambda: cluster_failures(failures, embed, task_vectors=tv,
                                                           k_range=opts.k_range, seed=opts.seed,
                                                           priority=opts.priority))
    report.save(round_dir / "clusters.json")
    pool = [*state.train, *opts.pool]  # held-out rows are dropped by the set builders

    def build_sets() -> DistillSet:
        tgt = targeted_set(state.config, report, failures, pool, held_out, tiers=tiers, teacher=opts.teacher,
                           top_clusters=opts.top_clusters, min_cluster=opts.min_cluster,
                           max_per_tier=opts.max_per_tier, embed=embed)
        if strategy == "targeted":
            return tgt
        return random_set(state.config, pool, held_out, tgt.volume(), teacher=opts.teacher,
                          seed=opts.seed + round_no)

    dset = timer.run("sets", build_sets)
    dset.save(round_dir / "set.jsonl")
    for e in dset.examples:  # the invariant the evaluation rests on
        if (e.id, e.query) in held_out:
            raise DataError(f"held-out row {e.id!r} entered the distillation set")
    cumulative: dict[str, list[Example]] = {t: list(v) for t, v in state.examples.items()}
    for e in dset.examples:
        seen = {x.id for x in cumulative.setdefault(e.tier, [])}
        if e.id not in seen:
            cumulative[e.tier].append(e)

    new_cfg = state.config
    results: list[DistillResult] = []

    def distil() -> None:
        nonlocal new_cfg
        for tier in tiers:
            ex = cumulative.get(tier, [])
            if not [e for e in dset.examples if e.tier == tier]:
                continue  # nothing new for this tier this round
            say(f"distilling {tier} on {len(ex)} examples ({base_config.tier(tier).kind})")
            res = distill_tier(base_config, tier, ex, art / "tiers" / tier, base_rows=state.train,
                               settings=opts.lora, progress=progress)
            results.append(res)
            new_cfg = with_artifact(new_cfg, tier, res)

    timer.run("distill", distil)
    changed = [r.tier for r in results if r.status == "trained"]
    if not changed:
        write_tier_map(state.config, art)
        rec = _record(round_no, strategy, "stopped", "no tier was distilled (nothing trainable in the set)",
                      state, timer, distill=results, volume=dset.volume())
        _save_round(round_dir, rec)
        return rec, None
    write_tier_map(new_cfg, art)
    new_cfg = config_with_tiers(base_config, art)

    def relabel() -> tuple[list[MatrixRow], list[MatrixRow], list[MatrixRow]]:
        splits = {"train": state.train, "cal": state.cal, "test": state.test}
        out: dict[str, list[MatrixRow]] = {}
        total = sum(len(v) for v in splits.values()) * len(changed)
        task = progress.add_task(f"re-labelling {', '.join(changed)}", total=total) if progress is not None else None
        for name, rows in splits.items():
            cur = rows
            for tier in changed:
                cur = adapters.relabel(new_cfg, cur, tier, round_dir / "matrices" / f"{name}.{tier}.jsonl",
                                       on_progress=(lambda n: progress.update(task, advance=n)) if task is not None else None)
                if task is not None:
                    served = sum(1 for r in rows if new_cfg.tier(tier).serves(r.task))
                    progress.update(task, advance=len(rows) - served)
            write_matrix(round_dir / "matrices" / f"{name}.jsonl", cur)
            out[name] = cur
        return out["train"], out["cal"], out["test"]

    train, cal, test = timer.run("relabel", relabel)
    router, th = fit_policy(new_cfg, train, cal, art, timer)
    cal_eval, test_eval = evaluate_both(new_cfg, cal, test, router, th, timer)
    gains = per_cluster_gain(report, report.top(opts.top_clusters), embed, state.test, test, changed)
    new_state = State(new_cfg, train, cal, test, art, cumulative, cal_eval, test_eval)
    status, reason = "accepted", None
    if cal_eval["quality_ratio"] < bar - 1e-12:
        status = "rejected"
        reason = (f"calibration quality ratio {cal_eval['quality_ratio']:.4f} is below the target "
                  f"{bar:.4f}; serving artifacts left unchanged")
    rec = _record(round_no, strategy, status, reason, new_state, timer, distill=results, volume=dset.volume(),
                  gains=gains, n_failures=len(failures), bar=bar)
    _save_round(round_dir, rec)
    return rec, (new_state if status == "accepted" else None)


def _record(round_no: int, strategy: str, status: str, reason: str | None, state: State, timer: Timer,
            **extra: Any) -> dict[str, Any]:
    test = state.test_eval or {}
    rec = {
        "round": round_no, "strategy": strategy, "status": status, "reason": reason,
        "quality_ratio": test.get("quality_ratio"), "cost_ratio": test.get("cost_ratio"),
        "cheap_share": test.get("cheap_share"), "top_share": test.get("top_share"),
        "certified": test.get("certified"),
        "cal": {k: state.cal_eval.get(k) for k in ("quality_ratio", "cost_ratio", "cheap_share", "top_share")},
        "seconds": {s: timer.seconds.get(s, 0.0) for s in STAGES},
    }
    rec["seconds"]["total"] = round(sum(timer.seconds.values()), 3)
    for k, v in extra.items():
        if k == "distill":
            rec[k] = [r.to_json() for r in v]
        else:
            rec[k] = v
    return rec


def _save_round(round_dir: Path, rec: dict[str, Any]) -> None:
    (round_dir / "round.json").write_text(json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n")


# -- the loop -------------------------------------------------------------------------
def optimize(
    config: EnsembleConfig,
    train: list[MatrixRow],
    cal: list[MatrixRow],
    test: list[MatrixRow],
    out: str | Path,
    opts: LoopOptions | None = None,
    *,
    embed: adapters.EmbedFn | None = None,
    progress: Any = None,
    say: Callable[[str], None] = lambda _m: None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the rounds for each strategy from the same baseline; returns the table rows."""
    opts = opts or LoopOptions()
    for s in opts.strategies:
        if s not in STRATEGIES:
            raise DataError(f"--strategy must be targeted, random or both, got {s!r}")
    if opts.rounds < 1:
        raise DataError(f"--rounds must be >= 1, got {opts.rounds}")
    distillable_tiers(config, opts.tiers)  # unknown tier names fail before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    embed = embed or adapters.router_embedder(config)
    held_out = HeldOut([*cal, *test])
    leaked = [r.id for r in train if (r.id, r.prompt) in held_out]
    if leaked:
        raise DataError(f"{len(leaked)} train rows are also in the calibration/test splits (e.g. {leaked[:3]})",
                        hint="split the matrix so that train, cal and test are disjoint")
    # round 0: the policy as it stands, on the given matrices
    timer = Timer()
    base_art = out / "baseline" / "artifacts"
    if base_art.parent.exists():
        shutil.rmtree(base_art.parent)
    router, th = fit_policy(config, train, cal, base_art, timer)
    write_tier_map(config, base_art)
    cal_eval, test_eval = evaluate_both(config, cal, test, router, th, timer)
    base = State(config, train, cal, test, base_art, {}, cal_eval, test_eval)
    # the bar a round must keep on the calibration split: the lower of the baseline and the
    # configured quality target, less the tolerance (a baseline above the target, e.g. a
    # cheap tier that beats a noisy top on some task, must not forbid every saving)
    bar = opts.target_quality if opts.target_quality is not None else (
        min(cal_eval["quality_ratio"], config.router.quality_target) - opts.quality_tolerance)
    rows = [_record(0, "baseline", "accepted", None, base, timer)]
    primary = opts.strategies[0]
    serving_meta = {"round": 0, "strategy": "baseline"}
    promote(base_art, out / "serving", serving_meta)
    if opts.store is not None:
        register_in_store(opts.store, base_art, config, 0, "baseline")
    loop_doc = {"primary": primary, "target_quality": bar, "rounds": rows}
    _write_loop(out, loop_doc)
    if on_round:
        on_round(rows[0])
    lock = threading.Lock()  # rows, loop.json and serving/ are shared by the chains

    def chain(strategy: str) -> None:
        state = base
        for n in range(1, opts.rounds + 1):
            say(f"[bold]round {n} ({strategy})[/]")
            rd = out / "rounds" / strategy / f"round-{n}"
            rec, new_state = run_round(config, state, strategy, n, rd, opts, held_out, embed=embed,
                                       bar=bar, progress=progress, say=say)
            with lock:
                rows.append(rec)
                if on_round:
                    on_round(rec)
                if new_state is None:
                    _write_loop(out, loop_doc)
                    break
                if strategy == primary:
                    promote(new_state.artifacts, out / "serving", {"round": n, "strategy": strategy})
                    if opts.store is not None:
                        register_in_store(opts.store, new_state.artifacts, new_state.config, n, strategy)
                gain = state.cal_eval["cost_ratio"] - new_state.cal_eval["cost_ratio"]
                state = new_state
                if gain < opts.epsilon:
                    rec["stop"] = f"cost-ratio gain {gain:.4f} on the calibration split < epsilon {opts.epsilon}"
                _write_loop(out, loop_doc)
            if gain < opts.epsilon:
                break

    if opts.parallel and len(opts.strategies) > 1:
        # each chain is mostly single-threaded model work (LoRA steps, a 1-thread
        # CTranslate2 re-label), so on a multi-core machine the chains overlap
        with ThreadPoolExecutor(max_workers=len(opts.strategies), thread_name_prefix="loop") as pool:
            for f in [pool.submit(chain, s) for s in opts.strategies]:
                f.result()
    else:
        for strategy in opts.strategies:
            chain(strategy)
    order = {s: i for i, s in enumerate(("baseline", *opts.strategies))}
    rows.sort(key=lambda r: (order.get(r["strategy"], 99), r["round"]))
    _write_loop(out, loop_doc)
    return rows


def _write_loop(out: Path, doc: dict[str, Any]) -> None:
    (out / "loop.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The --json table: one object per round and strategy."""
    keys = ("round", "strategy", "status", "quality_ratio", "cost_ratio", "cheap_share", "top_share", "seconds")
    return [{k: r.get(k) for k in keys} for r in rows]


def load_matrices(train: str | Path, cal: str | Path, test: str | Path) -> tuple[list[MatrixRow], ...]:
    return tuple(read_matrix(p) for p in (train, cal, test))
