"""CLI verbs: `routenlp models pull|list` and `routenlp bench tiers`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from routenlp.cli_groups import bench_app, models_app
from routenlp.cli_utils import console, friendly_errors, print_json, progress, write_json


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@models_app.command("pull")
@friendly_errors
def pull_cmd(
    names: list[str] = typer.Argument(..., help="registry model name(s), e.g. smollm2-135m-instruct"),
    force: bool = typer.Option(False, "--force", help="convert again even if the cache is valid"),
    engine: str = typer.Option("ctranslate2", "--engine", help="ctranslate2 (default) or transformers"),
    as_json: bool = typer.Option(False, "--json", help="print {name: cache path} as JSON on stdout"),
) -> None:
    """Locate a model in its wheel and convert it once into the RouteNLP cache."""
    from routenlp.errors import ConfigError
    from routenlp.models.registry import ENGINES, get_spec, pull

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    for name in names:
        get_spec(name)  # fail fast on a typo before converting anything
    paths = {}
    with progress() as prog:
        for name in names:
            paths[name] = pull(name, progress=prog, force=force, engine=engine)  # type: ignore[arg-type]
    if as_json:
        print_json({name: str(path) for name, path in paths.items()})
        return
    for name, path in paths.items():
        console.print(f"[green]{name}[/] -> {path}")


@models_app.command("list")
@friendly_errors
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout"),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="also write the list as JSON here"),
) -> None:
    """Registry models: installed wheel, conversion state, cache path and size."""
    from routenlp.models.registry import list_models

    rows = list_models()
    payload = [{**r.__dict__, "path": str(r.path) if r.path else None} for r in rows]
    if json_out:
        write_json(json_out, payload)
    if as_json:
        print_json(payload)
        return
    table = Table(title="RouteNLP local models")
    for col in ("name", "kind", "status", "engine", "size", "path"):
        table.add_column(col)
    for r in rows:
        colour = "green" if r.converted else ("red" if not r.installed else "yellow")
        table.add_row(
            r.name, r.kind, f"[{colour}]{r.status}[/]", r.engine or "-", _size(r.size_bytes),
            str(r.path) if r.path else "-",
        )
    console.print(table)


@bench_app.command("tiers")
@friendly_errors
def bench_tiers_cmd(
    config: Path = typer.Option(Path("examples/local-cpu.yaml"), "--config", "-c", help="ensemble YAML"),
    tiers: Optional[str] = typer.Option(None, "--tiers", help="comma-separated tier names (default: all local tiers)"),
    n: int = typer.Option(8, "--n", min=1, help="requests per measurement"),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="tokens generated per request"),
    baseline: bool = typer.Option(False, "--baseline", help="also measure transformers fp32 on the same prompts"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write results JSON here"),
) -> None:
    """Tokens/s of each local tier, single-stream and batched (rich table + JSON)."""
    from routenlp.bench.tiers import bench_tiers
    from routenlp.config import load_config

    cfg = load_config(config)
    names = [t.strip() for t in tiers.split(",") if t.strip()] if tiers else None
    with progress() as prog:
        results = bench_tiers(cfg, names, n=n, max_tokens=max_tokens, baseline=baseline, progress=prog)
    table = Table(title=f"local tiers: {n} requests x {max_tokens} tokens")
    cols = ["tier", "model", "engine", "single tok/s", "batched tok/s", "batch", "load s"]
    if baseline:
        cols += ["transformers single", "transformers batched"]
    for c in cols:
        table.add_column(c)
    for name, r in results.items():
        row = [
            name, str(r.get("model")), str(r.get("engine")), f"{r['single_tok_s']:.1f}",
            f"{r['batched_tok_s']:.1f}", str(r.get("batch_size")), f"{r.get('load_s', 0):.1f}",
        ]
        if baseline:
            b = r.get("baseline") or {}
            row += [str(b.get("single_tok_s", "-")), str(b.get("batched_tok_s", "-"))]
        table.add_row(*row)
    console.print(table)
    if json_out:
        write_json(json_out, results)
        console.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Verbs live on the shared `models` and `bench` groups (added by the decorators above)."""
    return None
