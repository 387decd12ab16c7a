"""CLI: `routenlp workload generate` writes the built-in six-task workload to a directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from routenlp.cli_groups import workload_app
from routenlp.cli_utils import console, friendly_errors, progress
from routenlp.workloads.generator import (
    BUILTIN_TASKS,
    DEFAULT_N_TEST,
    DEFAULT_N_TRAIN,
    DEFAULT_SEED,
    generate_workload,
    parse_task_list,
)
from routenlp.workloads.io import load_task_rows


@workload_app.command("generate")
@friendly_errors
def generate_cmd(
    out: Path = typer.Option(..., "--out", help="output directory (one sub-directory per task)"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="random seed; same seed, same files"),
    n_train: int = typer.Option(DEFAULT_N_TRAIN, "--n-train", min=0, help="train rows per task"),
    n_test: int = typer.Option(DEFAULT_N_TEST, "--n-test", min=0, help="test rows per task"),
    tasks: str | None = typer.Option(
        None, "--tasks", help=f"comma-separated subset of: {','.join(BUILTIN_TASKS)}"
    ),
) -> None:
    """Generate the built-in workload: <out>/<task>/{train,test}.jsonl and card.json."""
    names = parse_task_list(tasks)
    with progress() as bar:
        job = bar.add_task("generating workload", total=len(names))
        written = generate_workload(
            out,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            tasks=names,
            on_task=lambda _name: bar.advance(job),
        )
    table = Table(title=f"built-in workload (seed {seed}) -> {out}")
    for col in ("task", "kind", "metric", "labels", "train", "test", "difficulty", "hard"):
        left = col in ("task", "kind", "metric")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for name, task_dir in written.items():
        task = BUILTIN_TASKS[name]
        rows = load_task_rows(task_dir / "train.jsonl") + load_task_rows(task_dir / "test.jsonl")
        diffs = [float(r["difficulty"]) for r in rows]
        n_tr = sum(1 for r in rows if "-train-" in r["id"])
        mean = sum(diffs) / len(diffs) if diffs else 0.0
        hard = sum(1 for d in diffs if d >= 0.7) / len(diffs) if diffs else 0.0
        table.add_row(
            name, task.card_kind, task.metric, str(len(task.labels) or "-"), str(n_tr),
            str(len(rows) - n_tr), f"{mean:.2f}", f"{hard:.0%}",
        )
    console.print(table)
    console.print("difficulty: mean per-row difficulty; hard: share of rows with difficulty >= 0.7")


def register(app: typer.Typer) -> None:
    """Verbs live on the shared `workload` group (cli_groups.workload_app), added by import."""
    del app
