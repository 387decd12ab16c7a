"""`routenlp demo`: the paper's story on the built-in workload with the local CPU ensemble.

workload -> local models -> classifier heads -> label every tier (cached by content) ->
per-task, per-tier check table -> train the router -> certify the served policy ->
evaluate against every baseline -> closed-loop rounds (targeted and random) -> re-evaluate
the promoted round against every baseline -> tables, rounds.json, HTML report, summary.

Every stage writes under --out; labels and distilled adapters are cached in the user cache
directory by content, so a second run (any --out) only retrains, re-certifies and
re-evaluates.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer

from routenlp.config import EnsembleConfig, load_config
from routenlp.matrix import MatrixRow, read_matrix, write_matrix

SPLIT = (0.30, 0.45)  # train / cal; the rest is test. The certificate lives on cal rows.


@dataclass(frozen=True)
class Preset:
    """One size of the demo. The class constants below are measured on 2 cores and only
    feed the printed estimate."""

    name: str
    n_per_task: int
    n_train: int  # classifier-tier training rows per task
    rounds: int
    epochs: int
    max_per_tier: int
    min_cluster: int
    description: str
    lora_loss: bool = False  # measure the set's loss before/after LoRA (two extra passes)
    lora_batch: int = 8  # LoRA batch size
    lora_lr: float = 1e-3  # LoRA learning rate (scaled with the batch size)
    priority: str = "spend"  # failure-cluster ranking of the targeted rounds (loop/cluster.py)
    # logged traffic per task outside the matrix, answered by the top tier only (the loop's
    # pool: failure clusters are filled with its nearest rows, random rounds draw from it)
    pool_per_task: int = 100

    # measured on 2 cores of a 2.6 GHz AMD EPYC (Zen 4) with a cold cache (quick preset,
    # commit f319493): labelling T1-T4 0.94 s per row; one round of both strategies side by
    # side: re-labelling T2 0.8 s per row, LoRA 3.3 s per distilled example per epoch (x1.25
    # with the loss passes); answering the pool 0.07 s per row; model conversion and the
    # classifier heads 71 s. A 2 GHz AVX2 machine took about 2.5x as long for each (see
    # docs/benchmarks.md).
    LABEL_S_PER_ROW = 0.94
    RELABEL_S_PER_ROW = 0.8
    LORA_S_PER_EXAMPLE_EPOCH = 3.3
    POOL_S_PER_ROW = 0.07
    SETUP_S = 71.0

    def estimate_minutes(self, n_tasks: int) -> float:
        rows = self.n_per_task * n_tasks
        lora = (self.LORA_S_PER_EXAMPLE_EPOCH * self.max_per_tier * self.epochs
                * (1.25 if self.lora_loss else 1.0))
        per_round = self.RELABEL_S_PER_ROW * rows + lora
        pool = self.POOL_S_PER_ROW * self.pool_per_task * n_tasks if self.rounds else 0.0
        return (rows * self.LABEL_S_PER_ROW + per_round * self.rounds + pool + self.SETUP_S) / 60.0


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 12, 60, 1, 1, 8, 3, "CI smoke test: every stage on 12 rows per task; "
                   "too few calibration rows for a certificate", pool_per_task=12),
    "quick": Preset("quick", 40, 300, 1, 1, 48, 10, "40 rows per task (108 calibration rows: "
                    "enough for the config's certificate at quality target 0.97); one round per "
                    "strategy, LoRA one epoch at batch 2 on up to 48 examples; a pool of 100 logged requests "
                    "per task answered by the top tier", lora_batch=2, lora_lr=5e-4),
    "full": Preset("full", 200, 300, 3, 2, 96, 8, "200 rows per task, up to 3 rounds per strategy",
                   lora_loss=True),
}


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


def meets_tau_table(config: EnsembleConfig, rows: list[MatrixRow]) -> list[dict[str, Any]]:
    """Per task, per tier: share of queries on which the tier meets the task's tau (the
    difficulty check of the built-in workload), and which tier is the cheapest generative one."""
    out = []
    for task in config.task_names:
        tau = config.task(task).tau
        t_rows = [r for r in rows if r.task == task]
        generative = [t.name for t in config.tiers_for(task) if t.kind not in ("classifier",)]
        for tier in [t.name for t in config.tiers_for(task)]:
            qs = [r.quality(tier) for r in t_rows]
            qs = [q for q in qs if q is not None]
            if not qs:
                continue
            out.append({
                "task": task, "tier": tier, "n": len(qs),
                "meets_tau": sum(q >= tau - 1e-9 for q in qs) / len(qs),
                "cheapest_generative": bool(generative) and tier == generative[0],
            })
    return out


def _meets_table(rows: list[dict[str, Any]], labels: dict[str, str], order: list[str]) -> Any:
    from rich.table import Table

    present = {r["tier"] for r in rows}
    tiers = [n for n in order if n in present]
    t = Table(title="Share of queries on which each tier meets the task's tau "
                    "(* = cheapest generative tier; the workload aims at 20-60%)")
    t.add_column("task")
    for name in tiers:
        t.add_column(labels.get(name, name), justify="right")
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = []
        for name in tiers:
            hit = next((r for r in rows if r["task"] == task and r["tier"] == name), None)
            cells.append("-" if hit is None else f"{hit['meets_tau']:.2f}" + ("*" if hit["cheapest_generative"] else ""))
        t.add_row(task, *cells)
    return t


MATCHED = "cost_ratio_at_quality_0.97"


def _system_row(results: dict[str, Any], name: str) -> dict[str, Any]:
    m = results["systems"][name]
    iv = (results.get("default_point_intervals") or {}).get(name) or {}
    miv = (results.get("intervals") or {}).get(name) or {}
    return {
        "system": name,
        "quality_ratio": m["quality_ratio"], "cost_ratio": m["cost_ratio"],
        "quality_ratio_ci": iv.get("quality_ratio"), "cost_ratio_ci": iv.get("cost_ratio"),
        "cost_at_q97": (results.get("matched") or {}).get(name, {}).get(MATCHED),
        "cost_at_q97_ci": miv.get(MATCHED),
        "p99_latency_ms": m.get("p99_latency_ms"), "sla_violation_rate": m.get("sla_violation_rate"),
        "tier_shares": m.get("tier_shares"),
    }


def results_with_intervals(res: Any, seed: int) -> dict[str, Any]:
    """The results JSON plus paired-bootstrap intervals of every system's default point."""
    from routenlp.bench.bootstrap import default_point_intervals

    doc = res.to_json()
    doc["default_point_intervals"] = default_point_intervals(
        res.per_query_rows(), f"always-{doc['tiers'][-1]}", seed=seed)
    return doc


CHANGE_LABELS = {
    MATCHED: "cost ratio at quality ratio 0.97",
    "quality_at_cost_0.16": "quality ratio at cost ratio 0.16",
    "cost_ratio": "cost ratio (default point)",
    "quality_ratio": "quality ratio (default point)",
}


def round_label(r: dict[str, Any]) -> str:
    return f"{r['strategy']} round {r['round']}" + (" (promoted)" if r.get("promoted") else "")


def _change_table(rounds: list[dict[str, Any]], n_test: int) -> Any:
    """What each strategy's last accepted round changed for RouteNLP: the promoted round and
    the ablation side by side, each paired against the same before."""
    from rich.table import Table

    t = Table(title=f"What each round changed for RouteNLP (paired over the same {n_test} test queries)",
              caption="change = after - before; 95% paired-bootstrap interval of the change (1,000 "
                      "resamples); * the interval excludes 0; - the curve never reaches that point")
    t.add_column("number")
    t.add_column("before", justify="right")
    for r in rounds:
        t.add_column(f"{round_label(r)}: after", justify="right")
        t.add_column("change [95% CI]", justify="right")

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    for key, label in CHANGE_LABELS.items():
        ms = [r["metrics"].get(key) for r in rounds]
        cells = [label, f(next((m["before"] for m in ms if m), None))]
        for m in ms:
            if not m:
                cells += ["-", "-"]
                continue
            lo, hi = m["ci"]
            cells += [f(m["after"]), f"{f(m['diff'])} [{f(lo)}, {f(hi)}]" + (" *" if m["excludes_zero"] else "")]
        t.add_row(*cells)
    return t


def _ablation_changes(cfg: EnsembleConfig, loop_dir: Path, loop: dict[str, Any], primary: str,
                      before: Any, seed: int) -> list[dict[str, Any]]:
    """The paired change of every other strategy's last accepted round against the same
    before (RouteNLP only, no baselines): "targeted beats random" is then a claim the tables
    can check, not one the demo makes for it."""
    from routenlp.bench.harness import evaluate

    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in loop.get("rounds", [])):
        ok = [r for r in loop["rounds"] if r["strategy"] == strategy and r.get("round", 0) > 0
              and r["status"] == "accepted"]
        if strategy in (primary, "baseline") or not ok:
            continue
        c, train, cal, test, router, thresholds, policy = _round_inputs(
            cfg, loop_dir / "rounds" / strategy / f"round-{ok[-1]['round']}")
        res = evaluate(c, test, router=router, thresholds=thresholds, policy=policy, baselines="none",
                       train_rows=train, cal_rows=cal, seed=seed, bootstrap=0)
        out.append({"strategy": strategy, "round": ok[-1]["round"], "promoted": False,
                    "metrics": res.change_against(before, "routenlp", seed=seed)})
    return out


def allowed_misses(certificate: dict[str, Any]) -> int | None:
    """How many misses (loss-1 rows) a policy may have on the certificate's test half and
    still pass: CRC needs (k + 1) / (n + 1) <= alpha; the binomial test P(X <= k) <= delta
    at rate alpha. None for a [0, 1]-valued loss (no count to give)."""
    from scipy.stats import binom

    n, alpha = certificate.get("n_B"), certificate.get("alpha")
    if not n or alpha is None or certificate.get("loss", "binary") != "binary":
        return None
    if certificate.get("guarantee") == "expected":
        return max(-1, math.floor(alpha * (n + 1) - 1 + 1e-9))
    k = -1
    while k + 1 <= n and binom.cdf(k + 1, n, alpha) <= certificate.get("delta", 0.1):
        k += 1
    return k


def plain_summary(before: dict[str, Any], after: dict[str, Any], loop: dict[str, Any],
                  certificate: dict[str, Any] | None, top_label: str,
                  change: dict[str, Any] | None = None,
                  ablations: list[dict[str, Any]] | None = None) -> str:
    """One paragraph a newcomer can read: what was saved, at what quality, with which guarantee."""
    b, a = _system_row(before, "routenlp"), _system_row(after, "routenlp")

    def ci(x: Any) -> str:
        return f" (95% interval {x[0]:.2f}-{x[1]:.2f})" if x and None not in x else ""

    n = after.get("n_test")
    cheap = 1.0 - float((a["tier_shares"] or {}).get(after["tiers"][-1], 0.0))
    text = (
        f"On {n} held-out requests of the built-in workload, RouteNLP served {cheap:.0%} of "
        f"requests from tiers cheaper than {top_label} and spent {a['cost_ratio']:.2f}x the "
        f"cost of always using it{ci(a['cost_ratio_ci'])}, at {a['quality_ratio']:.2f}x its "
        f"quality{ci(a['quality_ratio_ci'])}. "
    )
    if certificate is not None:
        if certificate.get("certified"):
            what = ("the share of requests that miss their task's quality bar where the top "
                    "tier meets it" if certificate.get("measure") == "bar"
                    else "the mean quality loss against the top tier")
            how = ("in expectation over calibration sets" if certificate.get("guarantee") == "expected"
                   else f"with probability at least {1 - certificate['delta']:.0%}")
            text += (
                f"The served policy is certified: {how}, {what} is at most "
                f"{certificate['alpha']:.3f} (conformal test on {certificate['n_B']} calibration rows). "
            )
        else:
            text += (
                "No policy that accepts cheap answers could be certified on this calibration set "
                f"({certificate.get('message') or 'too few rows'}), so RouteNLP serves its "
                "fallback: no cheap answer is accepted on trust; each request goes to the top of "
                "its task's ladder. "
            )
    rounds = [r for r in loop.get("rounds", []) if r.get("round", 0) > 0]
    tgt = [r for r in rounds if r["strategy"] == "targeted"]
    rnd = [r for r in rounds if r["strategy"] == "random"]
    if tgt:
        last = [r for r in tgt if r["status"] == "accepted"]
        if last:
            text += (
                f"The closed loop distilled the top tier's answers on the failure clusters into the "
                f"cheap tiers: the cost ratio went from {b['cost_ratio']:.2f} to "
                f"{last[-1]['cost_ratio']:.2f} on the test split (quality ratio "
                f"{b['quality_ratio']:.2f} -> {last[-1]['quality_ratio']:.2f})"
            )
            ok_rnd = [r for r in rnd if r["status"] == "accepted"]
            if ok_rnd:
                text += (f"; the same volume of random examples reached {ok_rnd[-1]['cost_ratio']:.2f} "
                         f"at quality {ok_rnd[-1]['quality_ratio']:.2f}")
            text += ". "
            pinned = abs(float(last[-1]["cost_ratio"]) - float(b["cost_ratio"])) < 1e-9
            misses = allowed_misses(certificate) if certificate and certificate.get("certified") else None
            if pinned and misses is not None:
                text += (f"The served point did not move because the certificate, tested on "
                         f"{certificate['n_B']} calibration rows, allows at most {misses} "
                         f"miss{'' if misses == 1 else 'es'} there, and no cheaper candidate passed that test "
                         f"before or after the round; the round's effect shows on the rest of the curve. ")
            if b["cost_at_q97"] is not None and a["cost_at_q97"] is not None:
                text += (f"At equal quality (ratio 0.97 on the cost-quality curve) the cheapest "
                         f"RouteNLP point cost {b['cost_at_q97']:.2f}{ci(b['cost_at_q97_ci'])} before the "
                         f"loop and {a['cost_at_q97']:.2f}{ci(a['cost_at_q97_ci'])} after")
                m = (change or {}).get(MATCHED)
                if m and m.get("diff") is not None and None not in m["ci"]:
                    lo, hi = m["ci"]
                    verdict = ("so the round lowered cost at equal quality" if hi < 0 else
                               "so the round raised cost at equal quality" if lo > 0 else
                               "so one round on this many test queries does not establish a change")
                    text += (f"; paired over the same test queries the change is {m['diff']:+.3f} "
                             f"(95% interval {lo:+.3f} to {hi:+.3f}), {verdict}")
                text += ". "
                for ab in ablations or []:
                    m = ab["metrics"].get(MATCHED) or {}
                    if m.get("diff") is not None and None not in (m.get("ci") or [None]):
                        lo, hi = m["ci"]
                        text += (f"The {ab['strategy']} round of the same volume changed it by "
                                 f"{m['diff']:+.3f} (95% interval {lo:+.3f} to {hi:+.3f}"
                                 f"{', excludes 0' if m.get('excludes_zero') else ''}). ")
            qc = (change or {}).get("quality_at_cost_0.16")
            if qc and qc.get("diff") is not None and None not in qc["ci"]:
                lo, hi = qc["ci"]
                text += (f"At equal cost (ratio 0.16) its quality ratio went from {qc['before']:.3f} to "
                         f"{qc['after']:.3f} (paired change {qc['diff']:+.3f}, 95% interval {lo:+.3f} to "
                         f"{hi:+.3f}{'' if qc['excludes_zero'] else ', not established'}). ")
        else:
            text += f"The closed loop's targeted round was {tgt[0]['status']}: {tgt[0].get('reason')}. "
    return text.strip()


def _main_table(results: dict[str, Any], before: dict[str, Any] | None, title: str) -> Any:
    from rich.table import Table

    def ci(x: Any) -> str:
        return "" if not x or None in x else f" [{x[0]:.3f}, {x[1]:.3f}]"

    t = Table(title=title, caption="[95% paired-bootstrap intervals over test queries]; cost@q.97: "
              "the cheapest cost at which the system's curve keeps quality ratio 0.97 (- never)")
    for col in ("system", "quality ratio", "cost ratio", "cost@q.97", "p99 ms", "SLA viol."):
        t.add_column(col, justify="left" if col == "system" else "right")
    rows = []
    if before is not None:
        r = _system_row(before, "routenlp")
        r["system"] = "routenlp (before the loop)"
        rows.append(r)
    rows += [_system_row(results, name) for name in results["systems"]]
    for r in rows:
        t.add_row(
            r["system"], f"{r['quality_ratio']:.3f}{ci(r['quality_ratio_ci'])}",
            f"{r['cost_ratio']:.3f}{ci(r['cost_ratio_ci'])}",
            "-" if r["cost_at_q97"] is None else f"{r['cost_at_q97']:.3f}{ci(r['cost_at_q97_ci'])}",
            "-" if r["p99_latency_ms"] is None else f"{r['p99_latency_ms']:.0f}",
            "-" if r["sla_violation_rate"] is None else f"{r['sla_violation_rate']:.3f}",
        )
    return t


def _serving_round(loop_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """(serving.json, the round directory it points at): the primary strategy's last
    accepted round, or None when serving/ still holds the baseline."""
    meta = json.loads((loop_dir / "serving.json").read_text())
    if meta.get("round", 0) == 0:
        return meta, None
    return meta, loop_dir / "rounds" / meta["strategy"] / f"round-{meta['round']}"


def _round_inputs(cfg: EnsembleConfig, round_dir: Path) -> tuple[Any, ...]:
    """What a round's evaluation needs, from its directory: (config with the round's tiers,
    train, cal, test matrices, router, per-tier thresholds, certified policy)."""
    from routenlp.conformal import Thresholds
    from routenlp.conformal.certify import PolicyArtifact
    from routenlp.loop.rounds import config_with_tiers
    from routenlp.router.inference import Router

    art = round_dir / "artifacts"
    c = config_with_tiers(cfg, art)
    train, cal, test = (read_matrix(round_dir / "matrices" / f"{s}.jsonl") for s in ("train", "cal", "test"))
    return (c, train, cal, test, Router.load(art / "router", c), Thresholds.load(art / "thresholds.json"),
            PolicyArtifact.load(art / "policy.json"))


def register(app: typer.Typer) -> None:
    from routenlp.cli_utils import console, err_console, friendly_errors, progress, write_json

    @app.command("demo")
    @friendly_errors
    def demo_cmd(
        preset: str = typer.Option(
            "quick", "--preset",
            help="tiny (CI smoke test), quick (40 rows per task; measured 14.6 min cold with install "
            "on a 2-core Zen 4 EPYC, 16-18 min on a 2-core 2.45 GHz AVX2-only EPYC with T2 in int8, "
            "now float32 there and slower; about 40 s "
            "warm) or "
            "full (200 rows per task, 3 rounds; prints its estimate first)",
        ),
        out: Path = typer.Option(Path("runs/demo"), "--out", help="working directory"),
        config: Path = typer.Option(
            Path("examples/local-cpu.yaml"), "--config", "-c", help="ensemble YAML"
        ),
        n_per_task: int | None = typer.Option(
            None, "--n-per-task", min=6,
            help="override the preset: queries labelled per task, split 30/45/25 into "
            "train/cal/test",
        ),
        rounds: int | None = typer.Option(None, "--rounds", min=0, help="override the preset: loop rounds per strategy (0: no loop)"),
        seed: int = typer.Option(13, "--seed"),
        priority: str | None = typer.Option(
            None, "--priority",
            help="override the preset: failure-cluster ranking of the targeted rounds, spend "
            "(gap x the top tier's cost, summed; the default) or gap (size x mean gap, the paper's)"),
        as_json: bool = typer.Option(False, "--json", help="print the final summary JSON on stdout (tables go to stderr)"),
    ) -> None:
        """Run the whole story on the built-in workload with local models: label, route,
        certify, compare with every baseline, improve the cheap tiers, compare again."""
        from routenlp.errors import DataError

        if preset not in PRESETS:
            raise DataError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        p = PRESETS[preset]
        if n_per_task is not None:
            p = replace(p, n_per_task=n_per_task)
        if rounds is not None:
            p = replace(p, rounds=rounds)
        if priority is not None:
            from routenlp.loop.cluster import check_priority

            check_priority(priority)
            p = replace(p, priority=priority)
        t_start = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        cfg = _demo_config(config, out)
        est = p.estimate_minutes(len(cfg.task_names))
        err_console.print(
            f"[bold]demo preset {p.name}[/]: {p.description}. Estimated {est:.0f} minutes on 2 CPU "
            "cores with nothing cached (much less when labels are cached)."
        )
        stages: dict[str, float] = {}

        def stage(name: str, t0: float) -> None:
            stages[name] = round(time.perf_counter() - t0, 1)

        # --json: stdout carries the JSON only; every table goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            summary = _run(cfg, out, p, seed, stage, console, progress)
            summary["seconds"] = {**stages, "total": round(time.perf_counter() - t_start, 1)}
            write_json(out / "summary.json", summary)
            _print_end(console, out, summary)
        if as_json:
            print(json.dumps(summary, indent=2, default=str))


def _print_end(console: Any, out: Path, summary: dict[str, Any]) -> None:
    """The closing paragraph and where the files are."""
    console.rule("[bold]summary")
    console.print(summary["summary"])
    console.print(
        f"\nfiles: {out}/results.json (main table), {out}/rounds.json (per round), "
        f"{out}/report.html (report), {out}/summary.json; wall clock "
        f"{summary['seconds']['total'] / 60:.1f} min"
    )


def _run(cfg: EnsembleConfig, out: Path, p: Preset, seed: int, stage: Any, console: Any,
         progress: Any) -> dict[str, Any]:
    from routenlp.bench.commands import progress_callback, results_table
    from routenlp.bench.harness import evaluate
    from routenlp.loop import adapters
    from routenlp.labeling import print_summary, summarise
    from routenlp.loop.commands import round_table
    from routenlp.loop.distill import LoraSettings
    from routenlp.loop.rounds import LoopOptions, optimize, table_rows
    from routenlp.report import write_html
    from routenlp.router.inference import Router
    from routenlp.router.train import report_table, train_router
    from routenlp.tiers.classifier import fit_classifier_head
    from routenlp.workloads import generate_workload

    labels = {t.name: t.display_name for t in cfg.tiers}
    top = cfg.tiers[-1]
    top_label = labels.get(top.name, top.name)

    t0 = time.perf_counter()
    console.rule("[bold]1. built-in workload")
    data_dir = out / "workload"
    generate_workload(data_dir, seed=seed, n_train=p.n_train, n_test=p.n_per_task)
    stage("workload", t0)

    t0 = time.perf_counter()
    console.rule("[bold]2. local models (converted once, cached in the user cache directory) "
                 "and 3. classifier tier heads (fitted meanwhile)")
    models = list(dict.fromkeys(t.model for t in cfg.tiers if t.kind == "local" and t.model))

    def fit_heads() -> None:
        t_heads = time.perf_counter()
        for tier in cfg.tiers:
            if tier.kind != "classifier":
                continue
            for task in cfg.task_names:
                if tier.serves(task):
                    m = fit_classifier_head(tier, data_dir / task / "train.jsonl")
                    console.print(
                        f"{tier.name} / {task}: {len(m['labels'])} labels, n={m['n']}, "
                        f"train accuracy {_acc(m['train_accuracy'])}, "
                        f"validation accuracy {_acc(m['val_accuracy'])}"
                    )
        stage("classifier", t_heads)

    _pull_side_by_side(models, console, progress, meanwhile=fit_heads)
    from routenlp.tiers.hf_local import planned_compute

    for tier in cfg.tiers:
        planned = planned_compute(tier) if tier.kind == "local" else None
        if planned is not None:
            console.print(f"{tier.name} ({tier.model}): CTranslate2 {planned[0]} ({planned[1]})")
    stage("models", t0)

    t0 = time.perf_counter()
    console.rule("[bold]4. labelling (every tier on every query)")
    matrix_path = out / "matrix.jsonl"
    matrix, stats = _label_workload(cfg, data_dir, "test", p.n_per_task, matrix_path, None,
                                    "labelling", progress)
    console.print(
        f"labels: {stats.skipped} already in {matrix_path.name}, {stats.cached} from the label "
        f"cache, {stats.generated} generated"
    )
    _fail_on_dead_tiers(cfg, matrix)
    print_summary(summarise(matrix, cfg.tier_names), title="Per task, per tier", labels=labels)
    meets = meets_tau_table(cfg, matrix)
    console.print(_meets_table(meets, labels, cfg.tier_names))
    stage("label", t0)

    pool: list[MatrixRow] = []
    if p.rounds > 0 and p.pool_per_task > 0:
        t0 = time.perf_counter()
        pool = _traffic_pool(cfg, data_dir, out / "pool.jsonl", p.pool_per_task, console, progress)
        stage("pool", t0)

    train, cal, test = _split_matrix(matrix, seed, SPLIT)
    for name, part in (("train", train), ("cal", cal), ("test", test)):
        write_matrix(out / f"matrix_{name}.jsonl", part)
    console.print(f"matrix split: train {len(train)}, cal {len(cal)}, test {len(test)} rows")

    t0 = time.perf_counter()
    console.rule("[bold]5. router (trained on the train split)")
    with progress() as bar:
        report = train_router(cfg, train, out / "router", progress=bar)
    console.print(report_table(report))
    router = Router.load(out / "router", cfg)
    stage("router", t0)

    t0 = time.perf_counter()
    target = cfg.router.quality_target
    console.rule(f"[bold]6. certify the served policy (quality target {target}, delta 0.1, "
                 f"{cfg.cascade.guarantee}, {cfg.cascade.certify_loss} loss)")
    served = adapters.calibrate(cfg, cal, out, router=router)  # the loop's round-0 rule too
    thresholds, policy = served.thresholds, served.artifact
    cert = policy.certificate
    console.print(("[green]certified[/]: " if cert.certified else "[yellow]not certified[/]: ") + cert.plain())
    stage("certify", t0)

    t0 = time.perf_counter()
    console.rule("[bold]7. evaluation: RouteNLP vs every baseline on the test split")
    with progress() as bar:
        res = evaluate(
            cfg, test, router=router, thresholds=thresholds, policy=policy, baselines="all",
            train_rows=train, cal_rows=cal, seed=seed, bootstrap=200,
            matrix_name="built-in workload (local CPU ensemble), before the loop",
            progress=progress_callback(bar),
        )
    before = results_with_intervals(res, seed)
    res_before = res
    change: dict[str, Any] | None = None
    by_round: list[dict[str, Any]] = []
    res.write_per_query(out / "per_query_before.jsonl")
    write_json_file(out / "results_before.json", before)
    console.print(results_table(before))
    stage("evaluate", t0)

    loop_doc: dict[str, Any] = {"rounds": []}
    loop_dir = out / "loop"
    after = before
    if p.rounds > 0:
        t0 = time.perf_counter()
        console.rule("[bold]8. closed loop: mine -> cluster -> distil -> re-label -> retrain -> re-certify")
        opts = LoopOptions(
            rounds=p.rounds, strategies=("targeted", "random"), seed=seed, tiers=_cheap_tiers(cfg),
            max_per_tier=p.max_per_tier, min_cluster=p.min_cluster, priority=p.priority, parallel=True, pool=pool,
            # one torch thread per chain: the two chains run side by side on 2 cores
            lora=LoraSettings(epochs=p.epochs, batch_size=p.lora_batch, lr=p.lora_lr, seed=seed, threads=1,
                              measure_loss=p.lora_loss),
        )
        with progress() as bar:
            rows_out = optimize(cfg, train, cal, test, loop_dir, opts, progress=bar, say=console.print)
        write_json_file(out / "rounds.json", table_rows(rows_out))
        console.print(round_table(rows_out))
        loop_doc = json.loads((loop_dir / "loop.json").read_text())
        stage("loop", t0)

        t0 = time.perf_counter()
        console.rule("[bold]9. re-evaluation of what the loop promoted, against every baseline")
        meta, round_dir = _serving_round(loop_dir)
        if round_dir is not None:
            cfg_after, train_a, cal_a, test_a, router_a, thresholds_a, promoted = _round_inputs(cfg, round_dir)
            with progress() as bar:
                res = evaluate(
                    cfg_after, test_a, router=router_a, thresholds=thresholds_a,
                    policy=promoted, baselines="all",
                    train_rows=train_a, cal_rows=cal_a, seed=seed, bootstrap=200,
                    matrix_name="built-in workload (local CPU ensemble), after the loop",
                    progress=progress_callback(bar),
                )
            after = results_with_intervals(res, seed)
            change = res.change_against(res_before, "routenlp", seed=seed)
            by_round = [{"strategy": meta["strategy"], "round": meta["round"], "promoted": True,
                         "metrics": change}]
            by_round += _ablation_changes(cfg, loop_dir, loop_doc, meta["strategy"], res_before, seed)
            after["loop_change"] = {"system": "routenlp", "n_test": res.n_test, "paired_resamples": 1000,
                                    "metrics": change, "rounds": by_round}
            console.print(_change_table(by_round, res.n_test))
            cert = promoted.certificate
        else:
            console.print("no round was accepted: serving stays at the baseline")
        stage("re-evaluate", t0)
    else:
        write_json_file(out / "rounds.json", [])
    write_json_file(out / "results.json", after)
    res.write_per_query(out / "per_query.jsonl")

    console.print(_main_table(after, before if after is not before else None,
                              f"Main table: test split, ratios against always-{top_label}"))
    cert_json = cert.model_dump(mode="json")
    text = plain_summary(before, after, loop_doc, cert_json, top_label, change,
                         ablations=[r for r in by_round if not r["promoted"]])
    clusters, gains = _first_round_clusters(loop_dir, loop_doc)
    write_html(after, out / "report.html", title="RouteNLP demo: built-in workload, local CPU ensemble",
               summary=text, loop=loop_doc if loop_doc.get("rounds") else None, clusters=clusters, gains=gains)
    return {
        "preset": p.name, "n_per_task": p.n_per_task, "rounds_per_strategy": p.rounds,
        "n_rows": {"train": len(train), "cal": len(cal), "test": len(test)},
        "labels": {"cached": stats.cached, "generated": stats.generated},
        "meets_tau": meets, "certificate": cert_json,
        "before": _system_row(before, "routenlp"), "after": _system_row(after, "routenlp"),
        "systems": {n: _system_row(after, n) for n in after["systems"]},
        "rounds": table_rows(loop_doc.get("rounds", [])), "loop_change": change,
        "loop_change_by_round": by_round, "summary": text,
    }


def _label_workload(cfg: EnsembleConfig, data_dir: Path, split: str, per_task: int, path: Path,
                    tier_names: list[str] | None, what: str, progress: Any) -> tuple[list[MatrixRow], Any]:
    """The first `per_task` rows of each task's workload `split` labelled into `path` (resumable,
    through the label cache) by `tier_names` (None: every tier); returns those rows of the
    matrix file (a re-run with a smaller count ignores the extra rows already there) and
    the labelling stats."""
    from routenlp.labeling import label_rows
    from routenlp.workloads.io import load_task_rows

    rows = []
    for task in cfg.task_names:
        rows += load_task_rows(data_dir / task / f"{split}.jsonl")[:per_task]
    with progress() as bar:
        tid = bar.add_task(what, total=len(rows))
        stats = label_rows(cfg, rows, path, tier_names=tier_names, on_progress=lambda n: bar.advance(tid, n))
    wanted = {str(r["id"]) for r in rows}
    return [r for r in read_matrix(path) if r.id in wanted], stats


def _traffic_pool(cfg: EnsembleConfig, data_dir: Path, path: Path, per_task: int, console: Any,
                  progress: Any) -> list[MatrixRow]:
    """The closed loop's pool: workload rows outside the matrix (its train files) answered
    by each task's top tier only, as a gateway's log holds the answers it served from the top.
    The cheap tiers never see these rows, so the pool costs no cheap-tier generation."""
    console.rule("[bold]4b. traffic pool for the closed loop (answered by the top tier only)")
    tops = list(dict.fromkeys(cfg.tiers_for(t)[-1].name for t in cfg.task_names))
    pool, _ = _label_workload(cfg, data_dir, "train", per_task, path, tops,
                              f"answering the pool with {', '.join(tops)}", progress)
    console.print(f"pool: {len(pool)} logged requests ({per_task} per task) with the top tier's answer")
    return pool


def _fail_on_dead_tiers(cfg: EnsembleConfig, matrix: list[MatrixRow]) -> None:
    """A tier that failed on every query it serves would make every later table a story
    about a broken install: stop, naming the tier and its error."""
    from routenlp.errors import TierError

    for tier in cfg.tier_names:
        outs = [r.outcomes[tier] for r in matrix if tier in r.outcomes]
        if outs and all(o.error for o in outs):
            raise TierError(f"tier {tier} failed on all {len(outs)} queries: {outs[0].error}",
                            hint="fix the tier (for a local model: `routenlp models pull --force "
                                 "<model>`), then re-run; labels already written are kept")


def _pull_one(name: str) -> float:
    """Convert one registry model (in a worker process); returns the seconds it took."""
    from routenlp.models.registry import pull

    t0 = time.perf_counter()
    pull(name)
    return time.perf_counter() - t0


def _pull_side_by_side(models: list[str], console: Any, progress: Any,
                       meanwhile: Callable[[], None] = lambda: None) -> None:
    """Convert the local models in parallel processes (one model's tokenizer conversion
    overlaps the other's de-quantisation; transformers' lazy imports are not safe to
    run from two threads of one process), running `meanwhile` in this process while they
    convert (the smaller model finishes first and leaves a core idle). Models already
    converted are verified in this process by `pull` (a broken cache entry is rebuilt); a
    conversion error in a worker comes back as the worker's own exception."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from routenlp.models.registry import is_converted, pull

    todo = [m for m in models if not is_converted(m)]
    parallel = todo if len(todo) > 1 else []
    for m in models:  # in process: pull verifies a cached model (and rebuilds a broken one)
        if m not in parallel:
            with progress() as bar:
                pull(m, progress=bar)
    if not parallel:
        meanwhile()
        return
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {m: pool.submit(_pull_one, m) for m in parallel}
        meanwhile()
        with progress() as bar:
            task = bar.add_task(f"converting {', '.join(parallel)} (side by side)", total=len(parallel))
            for m, f in futures.items():
                secs = f.result()
                bar.advance(task)
                console.print(f"{m}: converted in {secs:.0f} s")


def _cheap_tiers(cfg: EnsembleConfig) -> tuple[str, ...]:
    """The tiers the demo's loop distils into: classifier heads (refitted in seconds) and
    the cheapest generative tier. Distilling the mid tier as well doubles the loop's
    re-labelling time on 2 cores for little gain (`routenlp optimize --tiers` can)."""
    gen = [t.name for t in cfg.tiers if t.kind == "local"]
    return tuple([t.name for t in cfg.tiers if t.kind == "classifier"] + gen[:1])


def _first_round_clusters(loop_dir: Path, loop: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """The targeted strategy's first round: its failure clusters and per-cluster gains."""
    rec = next((r for r in loop.get("rounds", []) if r.get("strategy") == "targeted" and r.get("round") == 1), None)
    path = loop_dir / "rounds" / "targeted" / "round-1" / "clusters.json"
    if rec is None or not path.is_file():
        return None, None
    return json.loads(path.read_text()), rec.get("gains")


def write_json_file(path: Path, payload: Any) -> None:
    from routenlp.paths import write_json_atomic

    write_json_atomic(path, payload)
