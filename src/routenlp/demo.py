"""`routenlp demo`: the whole pipeline on the built-in workload with the local CPU ensemble.

generate workload -> pull local models -> fit the classifier tier -> label with every tier
-> per-task, per-tier table -> train the router -> calibrate -> evaluate (results table +
HTML report). Every stage writes its artifact under --out so a re-run resumes.
"""

from __future__ import annotations

import random
from pathlib import Path

import typer

from routenlp.config import EnsembleConfig, load_config
from routenlp.matrix import MatrixRow, read_matrix, write_matrix


def _split_matrix(
    rows: list[MatrixRow], seed: int, fractions: tuple[float, float]
) -> tuple[list[MatrixRow], list[MatrixRow], list[MatrixRow]]:
    """Seeded per-task split into train / cal / test (stratified by task)."""
    rng = random.Random(seed)
    train: list[MatrixRow] = []
    cal: list[MatrixRow] = []
    test: list[MatrixRow] = []
    by_task: dict[str, list[MatrixRow]] = {}
    for r in sorted(rows, key=lambda r: r.id):
        by_task.setdefault(r.task, []).append(r)
    for task_rows in by_task.values():
        rng.shuffle(task_rows)
        n = len(task_rows)
        n_train = int(round(n * fractions[0]))
        n_cal = int(round(n * fractions[1]))
        train += task_rows[:n_train]
        cal += task_rows[n_train : n_train + n_cal]
        test += task_rows[n_train + n_cal :]
    return train, cal, test


def _demo_config(config_path: Path, out: Path) -> EnsembleConfig:
    cfg = load_config(config_path)
    for tier in cfg.tiers:
        if tier.kind == "classifier":
            tier.head = str(out / "heads" / tier.name)
    cfg.store.url = f"sqlite:///{out / 'routenlp.db'}"
    return cfg


def _acc(x: float | None) -> str:
    """An accuracy, or why there is none (too few rows for a validation split)."""
    return "- (too few rows)" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    from routenlp.cli_utils import console, friendly_errors, progress

    @app.command("demo")
    @friendly_errors
    def demo_cmd(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="working directory"),
        config: Path = typer.Option(
            Path("examples/local-cpu.yaml"), "--config", "-c", help="ensemble YAML"
        ),
        n_per_task: int = typer.Option(
            60,
            min=3,
            help="queries labelled per task, split 35/35/30 into train/cal/test (alpha=0.05 "
            "needs >= 19 calibration rows per task to accept anything)",
        ),
        n_train: int = typer.Option(
            300, min=2, help="training rows per task for the classifier tier"
        ),
        seed: int = typer.Option(13),
    ) -> None:
        """Run the pipeline on the built-in workload with local models and print the results."""
        from routenlp.labeling import label_rows, print_summary, summarise
        from routenlp.models.registry import pull
        from routenlp.tiers.classifier import fit_classifier_head
        from routenlp.workloads import generate_workload
        from routenlp.workloads.io import load_task_rows

        out.mkdir(parents=True, exist_ok=True)
        cfg = _demo_config(config, out)

        console.rule("[bold]1. built-in workload")
        data_dir = out / "workload"
        generate_workload(data_dir, seed=seed, n_train=n_train, n_test=n_per_task)

        console.rule("[bold]2. local models")
        for tier in cfg.tiers:
            if tier.kind == "local" and tier.model:
                with progress() as bar:
                    pull(tier.model, progress=bar)

        console.rule("[bold]3. classifier tier heads")
        for tier in cfg.tiers:
            if tier.kind != "classifier":
                continue
            for task in cfg.task_names:
                if tier.serves(task):
                    m = fit_classifier_head(tier, data_dir / task / "train.jsonl")
                    console.print(
                        f"{tier.name} / {task}: {len(m['labels'])} labels, n={m['n']}, "
                        f"train accuracy {_acc(m['train_accuracy'])}, "
                        f"validation accuracy {_acc(m['val_accuracy'])} -> {m['head_dir']}"
                    )

        console.rule("[bold]4. labelling (every tier on every query)")
        matrix_path = out / "matrix.jsonl"
        rows = []
        for task in cfg.task_names:
            rows += load_task_rows(data_dir / task / "test.jsonl")[:n_per_task]
        with progress() as bar:
            tid = bar.add_task("labelling", total=len(rows))
            stats = label_rows(cfg, rows, matrix_path, on_progress=lambda n: bar.advance(tid, n))
        if stats.cached or stats.generated:  # a resumed run with nothing left prints nothing
            console.print(f"labels: {stats.cached} cached, {stats.generated} generated")
        wanted = {str(r["id"]) for r in rows}  # a re-run with a smaller --n-per-task
        matrix = [r for r in read_matrix(matrix_path) if r.id in wanted]
        print_summary(
            summarise(matrix, cfg.tier_names),
            title="Per task, per tier",
            labels={t.name: t.display_name for t in cfg.tiers},
        )

        train, cal, test = _split_matrix(matrix, seed, (0.35, 0.35))
        for name, part in (("train", train), ("cal", cal), ("test", test)):
            write_matrix(out / f"matrix_{name}.jsonl", part)
        console.print(
            f"matrix split: train {len(train)}, cal {len(cal)}, test {len(test)} rows "
            f"-> {out}/matrix_{{train,cal,test}}.jsonl"
        )

        from routenlp.bench.commands import emit_results, progress_callback
        from routenlp.bench.harness import evaluate
        from routenlp.conformal import calibrate
        from routenlp.conformal.commands import print_thresholds
        from routenlp.router.inference import Router
        from routenlp.router.train import report_table, train_router

        console.rule("[bold]5. router (trained on the train split)")
        with progress() as bar:
            report = train_router(cfg, train, out / "router", progress=bar)
        console.print(report_table(report))
        router = Router.load(out / "router", cfg)

        console.rule(f"[bold]6. conformal calibration (alpha {cfg.cascade.alpha})")
        thresholds = calibrate(cfg, cal, alpha=cfg.cascade.alpha, method=cfg.cascade.method)
        thresholds.save(out / "thresholds.json")
        print_thresholds(thresholds)

        console.rule("[bold]7. evaluation: RouteNLP vs baselines on the test split")
        with progress() as bar:
            results = evaluate(
                cfg,
                test,
                router=router,
                thresholds=thresholds,
                baselines="all",
                train_rows=train,
                cal_rows=cal,
                seed=seed,
                matrix_name="built-in workload (local CPU ensemble)",
                progress=progress_callback(bar),
            )
        emit_results(results, out / "results.json", out / "report.html")
