"""CLI verbs of the conformal area: `routenlp calibrate` and `routenlp train-estimator`.

`calibrate --policy certified` (the default with `--router`) certifies the whole served
policy (router + cascade) and writes a policy artifact; `--policy per-tier` keeps the
per-(task, tier) thresholds file (each tier's accepted-but-bad rate over all queries is
bounded, the served policy's is not: see docs/design.md).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from routenlp.cli_utils import console, probability, unit_interval
from routenlp.config import config_for_matrix
from routenlp.conformal.certify import PolicyArtifact
from routenlp.conformal.thresholds import Thresholds
from routenlp.errors import ConfigError
from routenlp.matrix import matrix_tasks, read_matrix


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def print_thresholds(th: Thresholds) -> None:
    """Per (task, tier): n, delta, calibration risk, bound, accept rate; and why a pair never
    accepts (the CLI and the demo print the same table)."""
    m, a, dc = th.method, th.alpha, th.delta_conf
    title = f"thresholds ({m}, alpha={a:g}" + (f", delta_conf={dc:g})" if m == "ltt" and dc else ")")
    table = Table(title=title)
    for col in ("task", "tier", "n", "delta", "risk", "bound", "accept", "signal"):
        right = col in ("n", "risk", "bound", "accept")
        table.add_column(col, justify="right" if right else "left")
    never: dict[str, list[str]] = {}
    for task, tier, e in th.pairs():
        table.add_row(
            task,
            tier,
            str(e.n),
            "never" if e.delta is None else _fmt(e.delta),
            _fmt(e.risk, 3),
            _fmt(e.bound, 3),
            "-" if e.accept_rate is None else f"{e.accept_rate:.1%}",
            e.signal or "-",
        )
        if e.delta is None:
            never.setdefault(e.reason or "no threshold", []).append(f"{task}/{tier}")
    console.print(table)
    for reason, pairs in never.items():
        which = ", ".join(pairs) if len(pairs) <= 4 else f"{len(pairs)} pairs"
        console.print(f"[yellow]never accept ({which}):[/] {reason}")


def print_certificate(art: PolicyArtifact) -> None:
    """The certificate in plain words, its evidence, and any per-task certificates."""
    c = art.certificate
    colour = "green" if c.certified else "yellow"
    console.print(f"[{colour}]{c.plain()}[/]")
    table = Table(title=f"certified policy ({c.guarantee}, {c.loss} loss)")
    for col in ("alpha", "delta", "n_A", "n_B", "p-value", "UCB", "risk_B", "cost_B", "theta"):
        table.add_column(col)
    table.add_row(_fmt(c.alpha, 3), _fmt(c.delta, 3), str(c.n_A), str(c.n_B), _fmt(c.p_value, 3),
                  _fmt(c.ucb, 3), _fmt(c.risk_B, 3), _fmt(c.cost_B, 4), c.theta.label())
    console.print(table)
    console.print(f"population: {c.population}")
    for task, tp in sorted(art.per_task.items()):
        if tp.refused:
            console.print(f"[yellow]per-task refused:[/] {tp.refused}")
        elif tp.certificate is not None:
            console.print(f"{task}: {tp.certificate.plain()}")


def certificate_json(art: PolicyArtifact) -> dict[str, object]:
    """The `--json` payload (also what evaluate/benchmark embed in their results)."""
    return {
        "policy": "certified",
        "theta": art.theta.model_dump(),
        "certificate": art.certificate.model_dump(mode="json"),
        "plain": art.certificate.plain(),
        "per_task": {t: tp.model_dump(mode="json") for t, tp in art.per_task.items()},
        "alphas": art.alphas,
        "quality_target": art.quality_target,
    }


def register(app: typer.Typer) -> None:
    from routenlp.cli_utils import err_console, friendly_errors, progress

    @app.command("calibrate")
    @friendly_errors
    def calibrate_cmd(
        matrix: Path = typer.Option(..., "--matrix", help="calibration quality matrix JSONL"),
        out: Path = typer.Option(..., "--out", help="thresholds JSON to write"),
        config: Path | None = typer.Option(None, "--config", help="ensemble config YAML"),
        models: Path | None = typer.Option(
            None, "--models", help="routing-matrix models.json (instead of --config)"
        ),
        alpha: float | None = typer.Option(
            None, "--alpha", callback=probability, help="target accepted-but-bad rate (default: config, else 0.05)"
        ),
        method: str | None = typer.Option(None, "--method", help="crc (expected risk) or ltt"),
        delta_conf: float | None = typer.Option(
            None, "--delta-conf", callback=probability, help="ltt: P(risk > alpha) <= delta_conf"
        ),
        tau: float | None = typer.Option(None, "--tau", callback=unit_interval, help="override every task's quality bar"),
        estimator: Path | None = typer.Option(
            None, "--estimator", help="learned quality estimator dir for tiers without a signal"
        ),
        policy: str | None = typer.Option(
            None, "--policy",
            help="certified (one guarantee for router + cascade; default with --router) or "
            "per-tier (one threshold per task/tier; default without --router)",
        ),
        router: Path | None = typer.Option(None, "--router", help="trained router artifact directory"),
        train_matrix: Path | None = typer.Option(
            None, "--train-matrix",
            help="certified: train split (top-tier quality for alpha_t, extra isotonic fit rows)",
        ),
        quality_target: float = typer.Option(
            0.97, "--quality-target", help="certified: alpha_t = (1 - Q) * mean train quality of the top"
        ),
        delta: float = typer.Option(0.1, "--delta", help="certified: P(mean regret > alpha) <= delta"),
        guarantee: str | None = typer.Option(
            None, "--guarantee",
            help="certified: high-probability (LTT) or expected (CRC); default: cascade.guarantee",
        ),
        loss: str | None = typer.Option(
            None, "--loss",
            help="certified: regret ((q_top - q_served)+) or bar (misses tau where the top meets "
            "it); default: cascade.certify_loss",
        ),
        per_task: bool = typer.Option(False, "--per-task", help="certified: certify each task alone"),
        seed: int = typer.Option(0, "--seed", help="certified: seed of the A/B split"),
        json_out: Path | None = typer.Option(None, "--json", help="write the certificate JSON here (- for stdout; the tables then go to stderr)"),
    ) -> None:
        """Calibrate the accept policy: certify the served policy, or per-tier thresholds."""
        from routenlp.cli_utils import json_to_stdout
        from routenlp.conformal.estimator import QualityEstimator
        from routenlp.conformal.thresholds import calibrate

        json_to_stdout(json_out)
        rows = read_matrix(matrix)
        if not rows:
            raise ConfigError(f"quality matrix {matrix} is empty")
        cfg = config_for_matrix(config, models, matrix_tasks(rows), tau=tau)
        kind = policy or ("certified" if router is not None else "per-tier")
        if kind not in ("certified", "per-tier"):
            raise ConfigError(f"--policy must be certified or per-tier, got {kind!r}")
        if kind == "certified":
            _certify_cmd(cfg, rows, matrix=matrix, out=out, router=router, estimator=estimator,
                         train_matrix=train_matrix, quality_target=quality_target, alpha=alpha,
                         delta=delta, guarantee=guarantee or cfg.cascade.guarantee,
                         loss=loss or cfg.cascade.certify_loss, per_task=per_task, seed=seed,
                         json_out=json_out)
            return
        a = alpha if alpha is not None else (cfg.cascade.alpha if config else 0.05)
        m = method or (cfg.cascade.method if config else "crc")
        dc = delta_conf if delta_conf is not None else cfg.cascade.delta_conf
        if m not in ("crc", "ltt"):
            raise ConfigError(f"--method must be crc or ltt, got {m!r}")
        est = QualityEstimator.load(estimator) if estimator else None
        with progress() as bar:
            job = bar.add_task("calibrating", total=None)

            def tick(label: str, done: int, total: int) -> None:
                bar.update(job, total=total, completed=done, description=f"calibrating {label}")

            th = calibrate(
                cfg, rows, alpha=a, method=m, delta_conf=dc, estimator=est, progress=tick
            )
        th.__pydantic_extra__["matrix"] = str(matrix)  # type: ignore[index]
        if estimator:
            th.__pydantic_extra__["estimator"] = str(estimator)  # type: ignore[index]
        th.save(out)

        print_thresholds(th)
        skipped = (th.model_extra or {}).get("skipped_tasks")
        if skipped:
            err_console.print(f"[yellow]matrix tasks not in the config (ignored):[/] {skipped}")
        n_set = sum(1 for _, _, e in th.pairs() if e.delta is not None)
        console.print(f"wrote {out}: {n_set} of {len(th.pairs())} (task, tier) pairs accept")
        if json_out is not None:
            from routenlp.cli_utils import write_json

            write_json(json_out, {"policy": "per-tier", **th.to_json()})

    @app.command("train-estimator")
    @friendly_errors
    def train_estimator_cmd(
        matrix: Path = typer.Option(
            ..., "--matrix", help="training quality matrix (disjoint from the calibration split)"
        ),
        out: Path = typer.Option(..., "--out", help="directory to write the estimator to"),
        config: Path | None = typer.Option(None, "--config", help="ensemble config YAML"),
        models: Path | None = typer.Option(None, "--models", help="routing-matrix models.json"),
        tau: float | None = typer.Option(None, "--tau", callback=unit_interval, help="override every task's quality bar"),
        tiers: str | None = typer.Option(
            None, "--tiers", help="comma-separated tiers (default: every tier but the top)"
        ),
        limit: int | None = typer.Option(None, "--limit", help="use only the first N rows"),
    ) -> None:
        """Train the learned quality estimator (u = 1 - P(quality >= tau) from embeddings)."""
        from routenlp.conformal.estimator import train_estimator

        rows = read_matrix(matrix)
        if limit:
            rows = rows[:limit]
        cfg = config_for_matrix(config, models, matrix_tasks(rows), tau=tau)
        default = cfg.tier_names[:-1] or cfg.tier_names
        use = [t.strip() for t in tiers.split(",")] if tiers else default
        for t in use:
            cfg.tier(t)  # clear error for an unknown tier
        with progress() as bar:
            job = bar.add_task("training estimator", total=len(use))

            def tick(label: str, done: int, total: int) -> None:
                bar.update(job, completed=done, description=f"estimator: {label}")

            est = train_estimator(cfg, rows, tiers=use, progress=tick)
        est.save(out)
        table = Table(title=f"quality estimator ({est.encoder_name})")
        for col in ("tier", "n", "P(good)"):
            table.add_column(col)
        for name, m in sorted(est.models.items()):
            table.add_row(name, str(m.n), f"{m.positive_rate:.1%}")
        console.print(table)
        console.print(f"wrote {out}")


def _certify_cmd(
    cfg: object, rows: list, *, matrix: Path, out: Path, router: Path | None,
    estimator: Path | None, train_matrix: Path | None, quality_target: float,
    alpha: float | None, delta: float, guarantee: str, per_task: bool, seed: int,
    json_out: Path | None, loss: str = "regret",
) -> None:
    """`calibrate --policy certified`: replay the real Cascade, Pareto-test, write the artifact."""
    from routenlp.bench.harness import prepare_rows
    from routenlp.cli_utils import progress, write_json
    from routenlp.config import EnsembleConfig
    from routenlp.conformal.certify import calibrate_policy
    from routenlp.conformal.estimator import QualityEstimator

    assert isinstance(cfg, EnsembleConfig)
    if guarantee not in ("high-probability", "expected"):
        raise ConfigError(f"--guarantee must be high-probability or expected, got {guarantee!r}")
    if loss not in ("regret", "bar"):
        raise ConfigError(f"--loss must be regret or bar, got {loss!r}")
    if not 0 < delta < 1:
        raise ConfigError(f"--delta must be in (0, 1), got {delta}")
    if not 0 < quality_target < 1:
        raise ConfigError(f"--quality-target must be in (0, 1), got {quality_target}")
    if alpha is not None and not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {alpha}")
    rt = None
    if router is not None:
        from routenlp.router.inference import Router

        rt = Router.load(router, cfg)
    est = QualityEstimator.load(estimator) if estimator else None
    train = read_matrix(train_matrix) if train_matrix else None
    cal, _ = prepare_rows(cfg, rows)
    with progress() as bar:
        job = bar.add_task("certifying", total=None)

        def tick(label: str, done: int, total: int) -> None:
            bar.update(job, total=total, completed=done, description=f"replaying {label}")

        art = calibrate_policy(
            cfg, cal, router=rt, estimator=est, train_rows=train, quality_target=quality_target,
            alpha=alpha, delta=delta, guarantee=guarantee, per_task=per_task, seed=seed,  # type: ignore[arg-type]
            progress=tick, loss=loss,  # type: ignore[arg-type]
        )
    art.meta.update({"matrix": str(matrix), "router": str(router) if router else None,
                     "estimator": str(estimator) if estimator else None})
    art.save(out)
    print_certificate(art)
    if rt is None:
        console.print("[yellow]no --router: certified the cascade from each task's cheapest rung (theta = lambda only)[/]")
    if json_out is not None:
        write_json(json_out, certificate_json(art))
    console.print(f"wrote {out}")
