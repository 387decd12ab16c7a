"""CLI verbs of the tiers area: `routenlp tier fit` (train a classifier tier's head) and
`routenlp serve-tier` (serve one tier over the OpenAI chat-completions API)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from routenlp.cli_groups import tier_app
from routenlp.cli_utils import console, err_console, friendly_errors, progress
from routenlp.config import load_config
from routenlp.errors import ConfigError

DEFAULT_TIER_PORT = 8001


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


@tier_app.command("fit")
@friendly_errors
def fit(
    name: str = typer.Argument(..., help="classifier tier name, e.g. T1"),
    config: Path = typer.Option(..., "--config", "-c", help="ensemble config YAML"),
    data: Path = typer.Option(
        ..., "--data", "-d", help="task JSONL with input/reference rows (or a task directory)"
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="head directory (default: <tier head>/<task>)"
    ),
    task: Optional[str] = typer.Option(
        None, "--task", help="task to fit when the data has several"
    ),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.5),
    seed: int = typer.Option(13, "--seed"),
) -> None:
    """Fit a classifier tier's head (embeddings + logistic regression) on labelled rows."""
    from routenlp.tiers.classifier import fit_head_from_rows, read_task_rows

    cfg = load_config(config)
    tier = cfg.tier(name)
    if tier.kind != "classifier":
        raise ConfigError(
            f"tier {name!r} is a {tier.kind!r} tier; only classifier tiers have a head to fit",
            hint="classifier tiers: "
            + (", ".join(t.name for t in cfg.tiers if t.kind == "classifier") or "none in config"),
        )
    rows = read_task_rows(data)
    with progress() as bar:
        job = bar.add_task(f"embedding rows for {name}", total=len(rows))
        result = fit_head_from_rows(
            tier, rows, out_dir=out, task=task, val_fraction=val_fraction, seed=seed,
            on_progress=lambda done, total: bar.update(job, completed=done, total=total),
        )
    table = Table(title=f"tier {name}: head for task {result['task']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "n_train", "n_val", "train_accuracy", "val_accuracy", "seconds"):
        table.add_row(key, _fmt(result[key]))
    table.add_row("labels", str(len(result["labels"])))
    table.add_row("head", result["head_dir"])
    console.print(table)


def serve_tier(
    name: str = typer.Argument(..., help="tier name, e.g. T1"),
    config: Path = typer.Option(..., "--config", "-c", help="ensemble config YAML"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(DEFAULT_TIER_PORT, "--port", "-p", min=1, max=65535),
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Serve one tier over the OpenAI chat-completions API (stream and non-stream)."""
    import uvicorn

    from routenlp.server.commands import check_log_level
    from routenlp.server.security import BodyLimit, KeyRing
    from routenlp.server.tier_server import create_tier_app
    from routenlp.tiers.base import build_tier

    level = check_log_level(log_level)
    cfg = load_config(config)
    tier_cfg = cfg.tier(name)
    tasks = [t.name for t in cfg.tasks if tier_cfg.serves(t.name)]
    tier = build_tier(tier_cfg, cfg)
    warmup = getattr(tier, "warmup", None)
    if callable(warmup):  # e.g. load the encoder before accepting requests
        warmup()
    app = BodyLimit(create_tier_app(tier, cfg.task, tasks=tasks, server=cfg.server),
                    cfg.server.max_body_bytes)
    if not KeyRing.api_keys(cfg.server).enabled:
        err_console.print("[yellow]warning:[/] auth is OFF (no server.api_keys, no "
                          "ROUTENLP_API_KEYS): anyone who can reach this port can use it")
    err_console.print(
        f"serving tier [bold]{name}[/] ({tier_cfg.kind}) at http://{host}:{port}/v1 "
        f"for tasks {tasks}"
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level=level)  # type: ignore[arg-type]
    finally:
        tier.close()


def register(app: typer.Typer) -> None:
    """Add `serve-tier` to the main app (`tier fit` lives on the shared tier group)."""
    app.command("serve-tier")(friendly_errors(serve_tier))
