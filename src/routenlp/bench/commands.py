"""CLI verbs of the evaluation harness: `routenlp evaluate` and `routenlp benchmark`."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from routenlp.cli_utils import (
    console,
    friendly_errors,
    json_to_stdout,
    positive,
    probability,
    progress,
    unit_interval,
    write_json,
)
from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError, DataError
from routenlp.matrix import MatrixRow


def load_eval_config(
    config: Path | None,
    models: Path | None,
    rows: Sequence[MatrixRow],
    *,
    tau: float | None = None,
    sla_ms: float | None = None,
    latency_profile: Path | None = None,
) -> EnsembleConfig:
    """--config or --models (+ --tau/--sla-ms overrides and an optional latency profile)."""
    from routenlp.config import config_for_matrix
    from routenlp.matrix import matrix_tasks, matrix_tiers

    cfg = config_for_matrix(config, models, matrix_tasks(rows), tau=tau, sla_ms=sla_ms)
    recorded = set(matrix_tiers(rows))
    absent = [t for t in cfg.tier_names if t not in recorded]
    if absent and recorded:
        # a matrix labelled before a tier joined the config (the simulated frontier T4 of the
        # example config): evaluating it would price that tier at 0 and call it "always-top"
        console.print(f"note: the matrix records no outcome of tier(s) {absent}; evaluating without them")
        cfg = cfg.restricted_to([t for t in cfg.tier_names if t in recorded])
    if latency_profile is not None:
        apply_latency_profile(cfg, latency_profile)
    return cfg


def apply_latency_profile(cfg: EnsembleConfig, path: Path) -> None:
    """`{tier: p50_ms}` or `{tier: {"p50_ms": .., "p99_ms": ..}}` -> the tiers' profile."""
    if not path.exists():
        raise DataError(f"latency profile not found: {path}")
    try:
        prof = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"latency profile {path} is not valid JSON: {err}") from None
    if not isinstance(prof, dict):
        raise DataError(f"latency profile {path}: expected an object {{tier: p50_ms}}")
    unknown = [t for t in prof if t not in cfg.tier_names]
    if unknown:
        raise DataError(f"latency profile {path}: unknown tier(s) {unknown}; tiers: {cfg.tier_names}")
    for name, val in prof.items():
        tier = cfg.tier(name)
        if isinstance(val, dict):
            if "p50_ms" not in val:
                raise DataError(f"latency profile {path}: tier {name!r} has no 'p50_ms'")
            tier.latency_p50_ms = float(val["p50_ms"])
            if val.get("p99_ms") is not None:
                tier.latency_p99_ms = float(val["p99_ms"])
        else:
            tier.latency_p50_ms = float(val)


def split_calibration(rows: Sequence[MatrixRow], fraction: float, seed: int) -> tuple[list[MatrixRow], list[MatrixRow]]:
    """(fit rows, calibration rows): a seeded split stratified by task."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--cal-fraction must be in (0, 1), got {fraction}")
    by_task: dict[str, list[MatrixRow]] = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r)
    rng = random.Random(seed)
    fit: list[MatrixRow] = []
    cal: list[MatrixRow] = []
    for task in sorted(by_task):
        group = sorted(by_task[task], key=lambda r: r.id)
        rng.shuffle(group)
        k = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        cal.extend(group[:k])
        fit.extend(group[k:])
    return fit, cal


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(iv: Any) -> str:
    if not iv:
        return ""
    lo, hi = iv
    return f"[{_f(lo)}, {'inf' if hi is None else _f(hi)}]" if lo is not None else f"[-, {_f(hi)}]"


def _diff_mark(results: dict[str, Any], name: str, key: str) -> str:
    """'*' when the system's difference to routenlp has a 95% interval excluding zero."""
    d = results.get("differences", {}).get(name, {}).get(key)
    return "*" if d and d.get("excludes_zero") else ""


def results_table(results: dict[str, Any]) -> Table:
    """The paper-style table: one row per system (with bootstrap intervals when present)."""
    from routenlp.report.html import top_shares

    flags = results.get("flags", {})
    tags = [t for t, on in (("estimated cost", flags.get("estimated_cost")), ("modelled latency", flags.get("modelled_latency"))) if on]
    title = f"{results.get('matrix') or 'evaluation'}: {results['n_test']} test queries, ratios vs {results['reference']}"
    if tags:
        title += f" ({', '.join(tags)})"
    boot = bool(results.get("intervals"))
    table = Table(title=title, caption=(
        "cost@q.97 / q@c.16 read off each system's upper convex hull; [95% paired-bootstrap interval]; "
        "* = difference to routenlp excludes 0" if boot else None))
    cols = ["system", "pts", "quality ratio", "cost ratio", "p99 ms", "SLA viol", "quality viol", "escal",
            "cost@q.97", *(["95% CI"] if boot else []), "q@c.16", *(["95% CI "] if boot else []), "AUC", "top tier shares"]
    for col in cols:
        if col == "system":
            table.add_column(col, no_wrap=True, min_width=12)
        elif col == "top tier shares":
            table.add_column(col, ratio=1)
        else:
            table.add_column(col, justify="right", min_width=5)
    for name, s in results["systems"].items():
        m = results["matched"].get(name, {})
        iv = results.get("intervals", {}).get(name, {})
        style = "bold cyan" if name == "routenlp" else None
        c97 = _f(m.get("cost_ratio_at_quality_0.97")) + _diff_mark(results, name, "cost_ratio_at_quality_0.97")
        q16 = _f(m.get("quality_at_cost_0.16")) + _diff_mark(results, name, "quality_at_cost_0.16")
        row = [
            name,
            str(results.get("n_points", {}).get(name, s.get("n_points") or len(s.get("curve") or []))),
            _f(s["quality_ratio"]),
            _f(s["cost_ratio"]),
            _f(s["p99_latency_ms"], 0),
            _f(s["sla_violation_rate"]),
            _f(s["quality_violation_rate"]),
            _f(s["escalation_rate"]),
            c97,
            *([_ci(iv.get("cost_ratio_at_quality_0.97"))] if boot else []),
            q16,
            *([_ci(iv.get("quality_at_cost_0.16"))] if boot else []),
            _f(results.get("auc", {}).get(name)),
            top_shares(s["tier_shares"]),
        ]
        table.add_row(*row, style=style)
    return table


def progress_callback(prog: Any) -> Any:
    tasks: dict[str, Any] = {}

    def tick(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = prog.add_task(label, total=total)
        prog.update(tasks[label], completed=done, total=total)

    return tick


def emit_results(results: Any, json_out: Path | None, html_out: Path | None, per_query: Path | None = None) -> None:
    to_stdout = json_to_stdout(json_out)
    payload = results.to_json()
    console.print(results_table(payload))
    for note in payload.get("notes", []):
        console.print(f"[dim]note: {note}[/]")
    if json_out is not None:
        write_json(json_out, payload)
        if not to_stdout:
            console.print(f"results -> {json_out}")
    if html_out is not None:
        from routenlp.report import write_html

        write_html(payload, html_out)
        console.print(f"report -> {html_out}")
    if per_query is not None:
        results.write_per_query(per_query)
        console.print(f"per-query rows -> {per_query}")


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    @friendly_errors
    def evaluate_cmd(
        matrix: Annotated[Path, typer.Option("--matrix", help="labelled test split (quality matrix JSONL)")],
        router: Annotated[Path, typer.Option("--router", help="trained router artifact directory")],
        thresholds: Annotated[Optional[Path], typer.Option("--thresholds", help="per-tier thresholds JSON from `routenlp calibrate --policy per-tier` (with --policy: the routenlp-per-tier ablation)")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", help="ensemble YAML")] = None,
        models: Annotated[Optional[Path], typer.Option("--models", help="models.json of a routing matrix")] = None,
        train: Annotated[Optional[Path], typer.Option("--train", help="train split: fits the learned baselines")] = None,
        cal: Annotated[Optional[Path], typer.Option("--cal", help="calibration split (picks --reference best when there is no --train)")] = None,
        estimator: Annotated[Optional[Path], typer.Option("--estimator", help="quality estimator directory (if the thresholds use it)")] = None,
        baselines: Annotated[str, typer.Option("--baselines", help="all | none | comma-separated names")] = "all",
        reference: Annotated[str, typer.Option("--reference", help="ratio reference: top (most expensive tier) | best (best single tier on train)")] = "top",
        json_out: Annotated[Optional[Path], typer.Option("--json", help="write the evaluation-results JSON (- for stdout; the tables then go to stderr)")] = None,
        html_out: Annotated[Optional[Path], typer.Option("--html", help="write the HTML report")] = None,
        tau: Annotated[Optional[float], typer.Option("--tau", callback=unit_interval, help="override every task's tau")] = None,
        sla_ms: Annotated[Optional[float], typer.Option("--sla-ms", callback=positive, help="override every task's SLA (ms)")] = None,
        latency_profile: Annotated[Optional[Path], typer.Option("--latency-profile", help="JSON {tier: p50_ms | {p50_ms, p99_ms}} for matrices without latency")] = None,
        no_sla: Annotated[bool, typer.Option("--no-sla", help="evaluate RouteNLP without SLA awareness")] = False,
        points: Annotated[int, typer.Option("--points", help="cap on operating points per system (same for all; longer grids subsampled evenly)")] = 40,
        bootstrap: Annotated[int, typer.Option("--bootstrap", help="paired-bootstrap resamples over test queries (0: no intervals)")] = 1000,
        per_query: Annotated[Optional[Path], typer.Option("--per-query", help="write one JSONL row per system default point and test query")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 13,
        policy: Annotated[Optional[Path], typer.Option("--policy", help="certified policy JSON from `routenlp calibrate --policy certified`: served as RouteNLP's default point (--thresholds then run as the routenlp-per-tier ablation)")] = None,
    ) -> None:
        """Replay a test split through RouteNLP's cascade and every baseline; print the table."""
        from routenlp.bench.harness import evaluate
        from routenlp.conformal import QualityEstimator, Thresholds
        from routenlp.matrix import read_matrix
        from routenlp.router.inference import Router

        from routenlp.bench.settings import EvalSettings

        EvalSettings(reference=reference, points=points, bootstrap=bootstrap)  # type: ignore[arg-type] # checks them before any work
        json_to_stdout(json_out)
        if thresholds is None and policy is None:
            from routenlp.errors import DataError

            raise DataError("evaluate needs an accept rule: --policy policy.json (certified) or --thresholds thresholds.json")
        test_rows = read_matrix(matrix)
        train_rows = read_matrix(train) if train is not None else None
        cal_rows = read_matrix(cal) if cal is not None else None
        cfg = load_eval_config(config, models, [*test_rows, *(train_rows or [])], tau=tau, sla_ms=sla_ms, latency_profile=latency_profile)
        rt = Router.load(router, cfg)
        thr = Thresholds.load(thresholds) if thresholds is not None else None
        est = QualityEstimator.load(estimator) if estimator is not None else None
        art = None
        if policy is not None:
            from routenlp.conformal.certify import PolicyArtifact

            art = PolicyArtifact.load(policy)
        with progress() as prog:
            results = evaluate(
                cfg, test_rows, router=rt, thresholds=thr, baselines=baselines, train_rows=train_rows,
                reference=reference, sla_aware=not no_sla, seed=seed, estimator=est, cal_rows=cal_rows,  # type: ignore[arg-type]
                matrix_name=str(matrix), progress=progress_callback(prog), points=points, bootstrap=bootstrap,
                policy=art,
            )
        emit_results(results, json_out, html_out, per_query)
        if art is not None:
            from routenlp.conformal.commands import print_certificate

            print_certificate(art)

    @app.command("benchmark")
    @friendly_errors
    def benchmark_cmd(
        matrix_dir: Annotated[Path, typer.Option("--matrix-dir", help="routing-matrix directory (train.jsonl, test.jsonl, models.json, optional cal.jsonl)")],
        json_out: Annotated[Path, typer.Option("--json", help="write the evaluation-results JSON (- for stdout; the tables then go to stderr)")],
        html_out: Annotated[Optional[Path], typer.Option("--html", help="write the HTML report")] = None,
        out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="where the router, estimator and thresholds go")] = None,
        alpha: Annotated[float, typer.Option("--alpha", callback=probability, help="target accepted-but-bad rate")] = 0.05,
        method: Annotated[str, typer.Option("--method", help="crc | ltt")] = "crc",
        reference: Annotated[str, typer.Option("--reference", help="top | best")] = "top",
        baselines: Annotated[str, typer.Option("--baselines", help="all | none | comma-separated names")] = "all",
        config: Annotated[Optional[Path], typer.Option("--config", help="ensemble YAML instead of the directory's models.json")] = None,
        tau: Annotated[Optional[float], typer.Option("--tau", callback=unit_interval, help="override every task's tau")] = None,
        sla_ms: Annotated[Optional[float], typer.Option("--sla-ms", callback=positive, help="every task's SLA (ms)")] = None,
        latency_profile: Annotated[Optional[Path], typer.Option("--latency-profile", help="JSON {tier: p50_ms | {p50_ms, p99_ms}}")] = None,
        cal_fraction: Annotated[float, typer.Option("--cal-fraction", help="share of train split off for calibration when there is no cal.jsonl")] = 0.2,
        points: Annotated[int, typer.Option("--points", help="cap on operating points per system (same for all; longer grids subsampled evenly)")] = 40,
        bootstrap: Annotated[int, typer.Option("--bootstrap", help="paired-bootstrap resamples over test queries (0: no intervals)")] = 1000,
        per_query: Annotated[Optional[Path], typer.Option("--per-query", help="write one JSONL row per system default point and test query")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 13,
        policy: Annotated[str, typer.Option("--policy", help="certified (one guarantee for the served policy) | per-tier (the ablation's thresholds served)")] = "certified",
        quality_target: Annotated[float, typer.Option("--quality-target", min=0.01, max=0.999, help="quality ratio vs the ladder top the certified policy keeps (sets alpha)")] = 0.97,
        delta: Annotated[float, typer.Option("--delta", min=1e-6, max=0.999, help="the certificate's failure probability")] = 0.1,
        guarantee: Annotated[str, typer.Option("--guarantee", help="high-probability (learn then test) | expected (CRC)")] = "high-probability",
    ) -> None:
        """Train the router, certify the policy and evaluate on a routing-matrix directory in one go."""
        from routenlp.bench.harness import evaluate
        from routenlp.conformal.commands import print_certificate
        from routenlp.conformal import calibrate, train_estimator
        from routenlp.matrix import read_matrix
        from routenlp.router.inference import Router
        from routenlp.router.train import train_router

        from routenlp.bench.settings import EvalSettings

        EvalSettings(reference=reference, points=points, bootstrap=bootstrap)  # type: ignore[arg-type] # checks them before any work
        json_to_stdout(json_out)
        if policy not in ("certified", "per-tier"):
            raise ConfigError(f"--policy must be 'certified' or 'per-tier', got {policy!r}")
        if guarantee not in ("high-probability", "expected"):
            raise ConfigError(f"--guarantee must be 'high-probability' or 'expected', got {guarantee!r}")
        d = matrix_dir
        for need in ("train.jsonl", "test.jsonl"):
            if not (d / need).exists():
                raise DataError(f"{d}: no {need} (a routing-matrix directory needs train.jsonl and test.jsonl)")
        if config is None and not (d / "models.json").exists():
            raise DataError(f"{d}: no models.json (or pass --config)")
        out = out_dir or Path("runs") / "bench" / d.name
        out.mkdir(parents=True, exist_ok=True)
        train_rows = read_matrix(d / "train.jsonl")
        test_rows = read_matrix(d / "test.jsonl")
        if (d / "cal.jsonl").exists():
            cal_rows = read_matrix(d / "cal.jsonl")
            fit_rows = train_rows
            console.print(f"calibration split: {d / 'cal.jsonl'} ({len(cal_rows)} rows)")
        else:
            fit_rows, cal_rows = split_calibration(train_rows, cal_fraction, seed)
            console.print(f"calibration split: {len(cal_rows)} of {len(train_rows)} train rows (seed {seed}, by task)")
        cfg = load_eval_config(
            config, d / "models.json" if config is None else None, [*train_rows, *test_rows, *cal_rows],
            tau=tau, sla_ms=sla_ms, latency_profile=latency_profile,
        )
        with progress() as prog:
            tick = progress_callback(prog)
            cfg.router.quality_target = quality_target
            report = train_router(cfg, fit_rows, out / "router", progress=prog, reference=reference)  # type: ignore[arg-type]
            router = Router.load(out / "router", cfg)
            tick("router trained", 1, 1)
            paper_cfg = cfg.model_copy(deep=True)
            paper_cfg.router.objective = "paper"
            train_router(paper_cfg, fit_rows, out / "router-paper", reference=reference)  # type: ignore[arg-type]
            paper_router = Router.load(out / "router-paper", cfg)
            tick("paper-objective router trained", 1, 1)
            needs_est = any(
                o.risk() is None for r in cal_rows[:200] for o in r.outcomes.values()
            )
            est = None
            if needs_est:
                est = train_estimator(cfg, fit_rows, seed=seed, progress=lambda lbl, a, b: tick("quality estimator", a, b))
                est.save(out / "estimator")
            thr = calibrate(cfg, cal_rows, alpha=alpha, method=method, estimator=est, progress=lambda lbl, a, b: tick("calibration", a, b))
            thr.save(out / "thresholds.json")
            art = None
            if policy == "certified":
                from routenlp.conformal.certify import calibrate_policy

                art = calibrate_policy(
                    cfg, cal_rows, router=router, estimator=est, quality_target=quality_target, delta=delta,
                    guarantee=guarantee, seed=seed, progress=lambda lbl, a, b: tick("certifying the policy", a, b),  # type: ignore[arg-type]
                )
                art.save(out / "policy.json")
            results = evaluate(
                cfg, test_rows, router=router, thresholds=thr, baselines=baselines, train_rows=train_rows,
                reference=reference, seed=seed, estimator=est, cal_rows=cal_rows,  # type: ignore[arg-type]
                matrix_name=d.name, progress=tick, points=points, bootstrap=bootstrap, policy=art,
                ablation_routers={"routenlp-paper-objective": paper_router},
            )
        results.notes.insert(
            0,
            f"benchmark: router + estimator fitted on {len(fit_rows)} train rows, thresholds calibrated "
            f"on {len(cal_rows)} rows (alpha {alpha}, {method}); baselines fitted on all {len(train_rows)} "
            f"train rows; router validation tier accuracy {report.overall.tier_accuracy:.3f}",
        )
        emit_results(results, json_out, html_out, per_query)
        if art is not None:
            print_certificate(art)
        console.print(f"artifacts -> {out}")
