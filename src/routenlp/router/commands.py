"""CLI verbs of the router: `train-router`, `route`, `bench router`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from routenlp.cli_utils import (
    console,
    err_console,
    friendly_errors,
    json_to_stdout,
    progress,
    unit_interval,
    write_json,
)
from routenlp.errors import ConfigError


def register(app: typer.Typer) -> None:
    from routenlp.cli_groups import bench_app

    @app.command("train-router")
    @friendly_errors
    def train_router_cmd(
        matrix: Annotated[Path, typer.Option("--matrix", help="quality matrix JSONL (training split)")],
        out: Annotated[Path, typer.Option("--out", help="router artifact directory to write")],
        config: Annotated[Optional[Path], typer.Option("--config", help="ensemble YAML")] = None,
        models: Annotated[Optional[Path], typer.Option("--models", help="models.json of a routing matrix")] = None,
        tau: Annotated[Optional[float], typer.Option("--tau", callback=unit_interval, help="override every task's tau")] = None,
        register_: Annotated[bool, typer.Option("--register", help="register in the store")] = False,
        store: Annotated[
            Optional[str], typer.Option("--store", help="store URL for --register (default: the config's store.url)")
        ] = None,
        label_fallback: Annotated[
            str, typer.Option("--label-fallback", help="label when no tier is acceptable: top | best")
        ] = "top",
        backend: Annotated[
            Optional[str], typer.Option("--backend", help="embeddings: onnx-int8 (default) | onnx | torch")
        ] = None,
        objective: Annotated[
            Optional[str],
            typer.Option(
                "--objective",
                help="success (calibrated per-tier success probabilities; default) | paper "
                "(CE + 0.3 cost + 0.5 quality hinge, argmax rule: the ablation)",
            ),
        ] = None,
        quality_target: Annotated[
            Optional[float],
            typer.Option(
                "--quality-target", min=0.01, max=1.5,
                help="quality ratio vs the reference the default knob keeps on out-of-fold rows (0.97)",
            ),
        ] = None,
        reference: Annotated[
            str, typer.Option("--reference", help="quality-target reference: top (the task's top tier) | best")
        ] = "top",
        json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the training report JSON here (- for stdout; the tables then go to stderr)")] = None,
    ) -> None:
        """Train the task-aware router from a quality matrix."""
        from routenlp.config import config_for_matrix
        from routenlp.matrix import matrix_tasks, read_matrix
        from routenlp.router.train import calibration_table, featurisation_table, report_table, train_router

        if label_fallback not in ("top", "best"):
            raise ConfigError(f"--label-fallback must be 'top' or 'best', got {label_fallback!r}")
        if objective not in (None, "success", "paper"):
            raise ConfigError(f"--objective must be 'success' or 'paper', got {objective!r}")
        if reference not in ("top", "best"):
            raise ConfigError(f"--reference must be 'top' or 'best', got {reference!r}")
        json_to_stdout(json_out)
        rows = read_matrix(matrix)
        cfg = config_for_matrix(config, models, matrix_tasks(rows), tau=tau)
        if objective is not None:
            cfg.router.objective = objective  # type: ignore[assignment]
        if quality_target is not None:
            cfg.router.quality_target = quality_target
        if store is not None:
            cfg.store.url = store
        with progress() as prog:
            report = train_router(
                cfg, rows, out, progress=prog, backend=backend, register=register_,
                label_fallback=label_fallback,  # type: ignore[arg-type]
                reference=reference,  # type: ignore[arg-type]
            )
        console.print(report_table(report))
        console.print(featurisation_table(report))
        if report.calibration.get("ece"):
            console.print(calibration_table(report))
        if json_out is not None:
            write_json(json_out, report.model_dump(mode="json"))
        d = report.decision
        base = report.task_only_baseline
        console.print(
            f"decision rule {d.rule}, cost_bias {d.cost_bias:g} ({d.source}); task-only baseline on the "
            f"{report.eval_split} split: quality {base.mean_quality:.3f}, cost {base.expected_cost:.3f}"
        )
        console.print(
            f"epochs {report.epochs_run} (best {report.best_epoch}), cost source {report.cost_source}, "
            f"embeddings {report.embedding_backend}, {report.seconds:.1f} s -> {out}"
            + (" (registered)" if register_ else "")
        )

    @app.command("route")
    @friendly_errors
    def route_cmd(
        text: Annotated[str, typer.Argument(help="the query text")],
        router: Annotated[Path, typer.Option("--router", help="router artifact directory")],
        task: Annotated[str, typer.Option("--task", help="task name")],
        cost_bias: Annotated[
            Optional[float], typer.Option("--cost-bias", help=">0 favours cheaper tiers (default: the trained knob)")
        ] = None,
        rule: Annotated[
            Optional[str], typer.Option("--rule", help="success (per-tier success head) | label (acceptable tier)")
        ] = None,
        min_accept_prob: Annotated[
            Optional[float], typer.Option("--min-accept-prob", help="cheapest tier with P(acceptable) >= p")
        ] = None,
        config: Annotated[Optional[Path], typer.Option("--config", help="check tiers against this config")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    ) -> None:
        """Print the tier the router picks for one query, with the tier probabilities."""
        import json

        from rich.table import Table

        from routenlp.config import load_config
        from routenlp.router.inference import Router

        if rule not in (None, "success", "label"):
            raise ConfigError(f"--rule must be 'success' or 'label', got {rule!r}")
        cfg = load_config(config) if config is not None else None
        r = Router.load(router, cfg, rule=rule)  # type: ignore[arg-type]
        d = r.decide(task, text, cost_bias=cost_bias, min_accept_prob=min_accept_prob)
        if json_out:
            console.print_json(json.dumps(d.__dict__))
            return
        table = Table(title=f"route: task {task}")
        table.add_column("tier")
        table.add_column("P(cheapest acceptable)", justify="right")
        if d.success is not None:
            table.add_column("P(success)", justify="right")
        for t, p in d.probs.items():
            mark = "  <- chosen" if t == d.tier else ""
            cells = [t, f"{p:.4f}"] + ([f"{d.success[t]:.4f}"] if d.success is not None else [])
            cells[-1] += mark
            table.add_row(*cells)
        console.print(table)
        console.print(
            f"chosen tier: [bold]{d.tier}[/] (rule {r.rule}, cost_bias {r.cost_bias if cost_bias is None else cost_bias:g}, "
            f"p_escalate {d.p_escalate:.3f})" + (" [fallback]" if d.fallback else "")
        )

    @bench_app.command("router")
    @friendly_errors
    def bench_router_cmd(
        router: Annotated[Optional[Path], typer.Option("--router", help="router artifact (default: train a tiny one)")] = None,
        n: Annotated[int, typer.Option("--n", help="batch-1 decisions to time")] = 200,
        batch: Annotated[int, typer.Option("--batch", help="batch size for throughput")] = 32,
        threads: Annotated[int, typer.Option("--threads", help="CPU threads for the encoder")] = 2,
        backend: Annotated[Optional[str], typer.Option("--backend", help="onnx-int8 | onnx | torch")] = None,
        json_path: Annotated[Optional[Path], typer.Option("--json", help="write the results JSON here")] = None,
    ) -> None:
        """Router decision latency (batch 1, cache misses) and batched throughput."""
        from routenlp.router.bench import bench_router

        with progress() as prog:
            res = bench_router(router, n=n, batch=batch, backend=backend, threads=threads, progress=prog)
        console.print(
            f"router ({res['backend']}, {threads} threads): p50 {res['p50_ms']:.2f} ms, p99 "
            f"{res['p99_ms']:.2f} ms, {res['batched_per_s']:.0f} decisions/s at batch {batch} "
            f"(goal p50 <= 5, p99 <= 15, >= 500/s); CPU {res['cpu_ms_per_decision']:.2f} ms per decision, "
            f"load average {res['load_avg_1m'][0]:.2f} -> {res['load_avg_1m'][1]:.2f}"
        )
        if json_path is not None:
            write_json(json_path, res)
            err_console.print(f"wrote {json_path}")
