"""CLI verbs of the conformal area: `routenlp calibrate` and `routenlp train-estimator`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from routenlp.cli_utils import console
from routenlp.config import config_for_matrix
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
            None, "--alpha", help="target accepted-but-bad rate (default: config, else 0.05)"
        ),
        method: str | None = typer.Option(None, "--method", help="crc (expected risk) or ltt"),
        delta_conf: float | None = typer.Option(
            None, "--delta-conf", help="ltt: P(risk > alpha) <= delta_conf"
        ),
        tau: float | None = typer.Option(None, "--tau", help="override every task's quality bar"),
        estimator: Path | None = typer.Option(
            None, "--estimator", help="learned quality estimator dir for tiers without a signal"
        ),
    ) -> None:
        """Set one acceptance threshold per (task, non-top tier) with a conformal guarantee."""
        from routenlp.conformal.estimator import QualityEstimator
        from routenlp.conformal.thresholds import calibrate

        rows = read_matrix(matrix)
        if not rows:
            raise ConfigError(f"quality matrix {matrix} is empty")
        cfg = config_for_matrix(config, models, matrix_tasks(rows), tau=tau)
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

    @app.command("train-estimator")
    @friendly_errors
    def train_estimator_cmd(
        matrix: Path = typer.Option(
            ..., "--matrix", help="training quality matrix (disjoint from the calibration split)"
        ),
        out: Path = typer.Option(..., "--out", help="directory to write the estimator to"),
        config: Path | None = typer.Option(None, "--config", help="ensemble config YAML"),
        models: Path | None = typer.Option(None, "--models", help="routing-matrix models.json"),
        tau: float | None = typer.Option(None, "--tau", help="override every task's quality bar"),
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
