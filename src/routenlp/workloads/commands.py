"""CLI: `routenlp workload generate` writes the built-in six-task workload to a directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from routenlp.cli_groups import workload_app
from routenlp.cli_utils import console, friendly_errors, print_json, progress
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
    as_json: bool = typer.Option(False, "--json", help="print the per-task summary as JSON on stdout"),
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
    summary = []
    for name, task_dir in written.items():
        task = BUILTIN_TASKS[name]
        rows = load_task_rows(task_dir / "train.jsonl") + load_task_rows(task_dir / "test.jsonl")
        diffs = [float(r["difficulty"]) for r in rows]
        n_tr = sum(1 for r in rows if "-train-" in r["id"])
        summary.append(
            {
                "task": name, "kind": task.card_kind, "metric": task.metric,
                "labels": len(task.labels), "train": n_tr, "test": len(rows) - n_tr,
                "difficulty_mean": sum(diffs) / len(diffs) if diffs else 0.0,
                "hard_share": sum(1 for d in diffs if d >= 0.7) / len(diffs) if diffs else 0.0,
                "dir": str(task_dir),
            }
        )
    if as_json:
        print_json({"out": str(out), "seed": seed, "tasks": summary})
        return
    table = Table(title=f"built-in workload (seed {seed}) -> {out}")
    for col in ("task", "kind", "metric", "labels", "train", "test", "difficulty", "hard"):
        left = col in ("task", "kind", "metric")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for s in summary:
        table.add_row(
            s["task"], s["kind"], s["metric"], str(s["labels"] or "-"), str(s["train"]),
            str(s["test"]), f"{s['difficulty_mean']:.2f}", f"{s['hard_share']:.0%}",
        )
    console.print(table)
    console.print("difficulty: mean per-row difficulty; hard: share of rows with difficulty >= 0.7")


def register(app: typer.Typer) -> None:
    """Verbs live on the shared `workload` group (cli_groups.workload_app), added by import."""
    del app
