"""CLI verbs of the closed loop: `routenlp optimize`, `routenlp loop clusters`,
`routenlp loop rollback`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from routenlp.cli_utils import console

loop_app = typer.Typer(help="The closed loop: failure clusters, round artifacts, rollback.", no_args_is_help=True)


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def round_table(rows: list[dict[str, Any]]) -> Table:
    """The paper-style per-round table (test split; stage times in seconds)."""
    t = Table(title="Closed-loop rounds (test split; quality ratio, cost ratio, shares; seconds per stage)")
    for col in ("round", "strategy", "status", "quality", "cost", "cheap", "top"):
        t.add_column(col, justify="right" if col not in ("strategy", "status") else "left")
    stages = ("mine", "cluster", "sets", "distill", "relabel", "router", "calibrate", "evaluate", "total")
    short = ("mine", "clus", "sets", "distil", "relab", "router", "calib", "eval", "total")
    for s in short:
        t.add_column(s, justify="right")
    for r in rows:
        sec = r.get("seconds") or {}
        t.add_row(str(r["round"]), r["strategy"], r.get("status", ""), _fmt(r.get("quality_ratio")),
                  _fmt(r.get("cost_ratio")), _fmt(r.get("cheap_share"), ".3f"), _fmt(r.get("top_share"), ".3f"),
                  *[_fmt(sec.get(s), ".1f") for s in stages])
    return t


def _parse_k(spec: str) -> tuple[int, int]:
    from routenlp.errors import DataError

    try:
        lo, hi = (int(x) for x in spec.split(":", 1)) if ":" in spec else (int(spec), int(spec))
    except ValueError:
        raise DataError(f"--k must look like 2:8, got {spec!r}") from None
    return lo, hi


def register(app: typer.Typer) -> None:
    from routenlp.cli_utils import err_console, friendly_errors, progress, write_json

    app.add_typer(loop_app, name="loop")

    @app.command("optimize")
    @friendly_errors
    def optimize_cmd(
        config: Path = typer.Option(..., "--config", help="ensemble config YAML"),
        train: Path = typer.Option(..., "--train", help="train quality matrix JSONL (mined, distilled, router)"),
        cal: Path = typer.Option(..., "--cal", help="calibration matrix JSONL (thresholds, round acceptance)"),
        test: Path = typer.Option(..., "--test", help="test matrix JSONL (the reported table)"),
        out: Path = typer.Option(Path("runs/loop"), "--out", help="directory for versioned round artifacts"),
        rounds: int = typer.Option(3, "--rounds", min=1, help="maximum rounds per strategy"),
        strategy: str = typer.Option("targeted", "--strategy", help="targeted | random | both"),
        teacher: str = typer.Option("top", "--teacher", help="top | accepted | reference"),
        epsilon: float = typer.Option(0.005, "--epsilon", help="stop when the cost-ratio gain is below this"),
        top_clusters: int = typer.Option(5, "--top-clusters", min=1, help="clusters distilled per round"),
        priority: str = typer.Option("spend", "--priority", help="cluster ranking: spend (gap x the top tier's cost, summed over the cluster: where the money goes) | gap (size x mean gap, the paper's)"),
        min_cluster: int = typer.Option(8, "--min-cluster", min=0, help="top small clusters up with neighbours"),
        k: str = typer.Option("2:8", "--k", help="k-means k range searched by silhouette, MIN:MAX"),
        max_per_tier: int = typer.Option(64, "--max-per-tier", min=1, help="new examples per tier per round"),
        tiers: str | None = typer.Option(None, "--tiers", help="comma-separated tiers to distil (default: all cheap)"),
        target_quality: float | None = typer.Option(None, "--target-quality", help="cal quality-ratio bar a round must keep (default: min(baseline, router.quality_target) - 0.01)"),
        epochs: int = typer.Option(2, "--epochs", min=1, help="LoRA epochs"),
        lr: float = typer.Option(1e-3, "--lr", help="LoRA learning rate"),
        lora_r: int = typer.Option(8, "--lora-r", min=1, help="LoRA rank"),
        max_length: int = typer.Option(384, "--max-length", min=16, help="tokens per training example"),
        threads: int | None = typer.Option(None, "--threads", help="torch threads for LoRA"),
        pool: Path | None = typer.Option(None, "--pool", help="matrix JSONL of logged traffic outside train/cal/test with the top tier's answer recorded: clusters are filled from it and random rounds draw from it"),
        from_store: bool = typer.Option(False, "--from-store", help="also mine the store's request log + feedback"),
        store_url: str | None = typer.Option(None, "--store", help="store URL (default: the config's store.url)"),
        json_out: Path | None = typer.Option(None, "--json", help="write the round table as JSON"),
        parallel: bool = typer.Option(False, "--parallel", help="with --strategy both: run the two chains side by side (threads; about 2x faster on 2+ cores)"),
        seed: int = typer.Option(13, "--seed"),
    ) -> None:
        """Rounds of mine -> cluster -> distil -> re-label -> retrain -> re-certify -> evaluate."""
        from routenlp.config import load_config
        from routenlp.errors import DataError
        from routenlp.loop.distill import LoraSettings
        from routenlp.loop.cluster import check_priority
        from routenlp.loop.rounds import LoopOptions, load_matrices, optimize, table_rows
        from routenlp.loop.sets import TEACHERS

        if strategy not in ("targeted", "random", "both"):
            raise DataError(f"--strategy must be targeted, random or both, got {strategy!r}")
        if teacher not in TEACHERS:
            raise DataError(f"--teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}")
        check_priority(priority)
        cfg = load_config(config)
        tier_list = tuple(t.strip() for t in tiers.split(",") if t.strip()) if tiers else None
        store = None
        if from_store or store_url:
            from routenlp.store import Store

            store = Store(store_url or cfg.store.url)
        opts = LoopOptions(
            rounds=rounds, strategies=("targeted", "random") if strategy == "both" else (strategy,),
            teacher=teacher, epsilon=epsilon, top_clusters=top_clusters, min_cluster=min_cluster,
            priority=priority, k_range=_parse_k(k), max_per_tier=max_per_tier, tiers=tier_list, target_quality=target_quality,
            seed=seed, store=store, from_store=from_store, parallel=parallel,
            lora=LoraSettings(r=lora_r, alpha=2 * lora_r, lr=lr, epochs=epochs, max_length=max_length,
                              seed=seed, threads=threads),
        )
        tr, ca, te = load_matrices(train, cal, test)
        if pool is not None:
            from routenlp.matrix import read_matrix

            opts.pool = read_matrix(pool)  # a missing or bad file is a DataError naming it

        def show(rec: dict[str, Any]) -> None:
            console.print(round_table([rec]))
            if rec.get("reason"):
                console.print(f"[yellow]round {rec['round']} ({rec['strategy']}) {rec['status']}:[/] {rec['reason']}")
            for g in rec.get("gains") or []:
                console.print(f"  cluster {g['cluster']} {g['tier']}: n_test={g['n_test']} "
                              f"quality {g['quality_before']} -> {g['quality_after']}")

        try:
            with progress() as prog:
                rows = optimize(cfg, tr, ca, te, out, opts, progress=prog, say=err_console.print, on_round=show)
        finally:
            if store is not None:
                store.close()
        console.print(round_table(rows))
        for r in rows:
            if r.get("stop"):
                console.print(f"[dim]{r['strategy']} stopped after round {r['round']}: {r['stop']}[/]")
        if json_out is not None:
            write_json(json_out, table_rows(rows))
            console.print(f"round table -> {json_out}")
        console.print(f"artifacts -> {out} (serving: {out / 'serving'})")

    @loop_app.command("rollback")
    @friendly_errors
    def rollback_cmd(
        round_no: int = typer.Argument(..., metavar="ROUND", help="round to restore (0 = baseline)"),
        out: Path = typer.Option(Path("runs/loop"), "--out", help="the optimize --out directory"),
        strategy: str | None = typer.Option(None, "--strategy", help="default: the served strategy"),
        store_url: str | None = typer.Option(None, "--store", help="also re-activate its versions in this store"),
    ) -> None:
        """Restore serving/ to a round's artifacts, byte for byte."""
        from routenlp.loop.rounds import rollback

        store = None
        if store_url:
            from routenlp.store import Store

            store = Store(store_url)
        try:
            res = rollback(out, round_no, strategy, store=store)
        finally:
            if store is not None:
                store.close()
        console.print(f"serving <- round {res['round']} ({res['strategy'] or 'primary'}), sha256 {res['sha256'][:16]}")

    @loop_app.command("clusters")
    @friendly_errors
    def clusters_cmd(
        config: Path = typer.Option(..., "--config", help="ensemble config YAML"),
        matrix: Path = typer.Option(..., "--matrix", help="labelled quality matrix JSONL to mine"),
        out: Path | None = typer.Option(None, "--out", help="cluster report JSON"),
        router_dir: Path | None = typer.Option(None, "--router", help="router artifact (adds its task embedding)"),
        k: str = typer.Option("2:8", "--k", help="k range MIN:MAX"),
        priority: str = typer.Option("spend", "--priority", help="cluster ranking: spend | gap (see optimize --help)"),
        limit: int = typer.Option(10, "--limit", min=1),
        seed: int = typer.Option(13, "--seed"),
    ) -> None:
        """Mine a matrix's failures and print the ranked cluster report."""
        from routenlp.config import load_config
        from routenlp.loop import adapters
        from routenlp.loop.cluster import cluster_failures, report_table
        from routenlp.loop.mining import mine_matrix
        from routenlp.matrix import read_matrix

        cfg = load_config(config)
        failures = mine_matrix(cfg, read_matrix(matrix))
        report = cluster_failures(failures, adapters.router_embedder(cfg),
                                  task_vectors=adapters.router_task_vectors(router_dir), k_range=_parse_k(k), seed=seed,
                                  priority=priority)
        console.print(report_table(report, limit))
        if out is not None:
            report.save(out)
            console.print(f"cluster report -> {out}")
        else:
            console.print(json.dumps({"n_failures": len(failures), "clusters": len(report.clusters)}))
