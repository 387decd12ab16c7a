"""Router inference benchmark: batch-1 decision latency (cache misses) and batched
throughput, on queries of 10-60 tokens. Without a router, a tiny one is trained on a
synthetic matrix first so the numbers measure the real inference path (encoder + head).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from routenlp.config import EnsembleConfig, parse_config
from routenlp.matrix import MatrixRow, Outcome

_WORDS = (
    "refund card payment declined account transfer balance contract clause liability "
    "termination revenue quarter guidance earnings customer order delivery shipping invoice "
    "please help why was my the a to of and for on with is it can you how what when"
).split()


def synthetic_queries(n: int, seed: int = 0, *, min_words: int = 8, max_words: int = 45) -> list[str]:
    """Distinct queries of roughly 10-60 MiniLM tokens (each text is new: cache misses)."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))) + f" #{seed}-{i}"
        for i in range(n)
    ]


def synthetic_setup(n_rows: int = 240, seed: int = 0) -> tuple[EnsembleConfig, list[MatrixRow]]:
    """A 3-tier, 2-task ensemble and a matrix where longer queries need stronger tiers."""
    cfg = parse_config(
        {
            "name": "synthetic",
            "tiers": [
                {"name": "small", "kind": "replay", "price_in": 0.1, "price_out": 0.1},
                {"name": "medium", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
                {"name": "large", "kind": "replay", "price_in": 10.0, "price_out": 10.0},
            ],
            "tasks": [{"name": "alpha", "tau": 0.5}, {"name": "beta", "tau": 0.5}],
            "router": {"epochs": 15, "patience": 3},
        },
        "<synthetic>",
    )
    rows = []
    for i, text in enumerate(synthetic_queries(n_rows, seed)):
        words = len(text.split())
        need = 0 if words < 20 else (1 if words < 35 else 2)
        outcomes = {
            t: Outcome(quality=1.0 if k >= need else 0.0, cost=None) for k, t in enumerate(("small", "medium", "large"))
        }
        rows.append(MatrixRow(id=f"s{i}", task="alpha" if i % 2 else "beta", prompt=text, outcomes=outcomes))
    return cfg, rows


def bench_router(
    router_path: str | Path | None = None,
    *,
    n: int = 200,
    batch: int = 32,
    backend: str | None = None,
    threads: int = 2,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure a router: {"p50_ms", "p99_ms", "batched_per_s", ...extras}."""
    from routenlp.router.inference import Router
    from routenlp.router.train import train_router

    tmp = None
    if router_path is None:
        cfg, rows = synthetic_setup()
        tmp = tempfile.TemporaryDirectory(prefix="routenlp-bench-router-")
        router_path = Path(tmp.name) / "router"
        train_router(cfg, rows, router_path, backend=backend, progress=progress)
    router = Router.load(router_path, backend=backend, threads=threads)
    task = router.tasks[0]
    emb = router.embedder
    warm = synthetic_queries(20, seed=101)
    for q in warm:  # load, export, first-call allocations
        router.decide(task, q)
    singles = synthetic_queries(n, seed=202)
    lat = []
    bar = progress.add_task("router batch-1 decisions", total=n) if progress is not None else None
    load_before = os.getloadavg()[0]
    cpu0 = time.process_time()
    for q in singles:
        t0 = time.perf_counter()
        router.decide(task, q)
        lat.append((time.perf_counter() - t0) * 1000.0)
        if progress is not None:
            progress.update(bar, advance=1)
    cpu_ms = (time.process_time() - cpu0) * 1000.0 / max(1, len(singles))
    hit = []
    for q in singles[:50]:  # now cached
        t0 = time.perf_counter()
        router.decide(task, q)
        hit.append((time.perf_counter() - t0) * 1000.0)
    n_batched = max(batch * 8, n)
    batched = synthetic_queries(n_batched, seed=303)
    t0 = time.perf_counter()
    for s in range(0, n_batched, batch):
        chunk = batched[s : s + batch]
        router.decide_batch([task] * len(chunk), chunk)
    per_s = n_batched / (time.perf_counter() - t0)
    tok = getattr(emb, "tokenizer", None)
    lengths = [len(tok(q)["input_ids"]) for q in singles] if tok is not None else []
    result = {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "batched_per_s": float(per_s),
        "cache_hit_p50_ms": float(np.percentile(hit, 50)),
        # CPU time per batch-1 decision (all threads): what a decision costs when the cores
        # are not shared; wall-clock numbers above include waiting for other processes
        "cpu_ms_per_decision": float(cpu_ms),
        "load_avg_1m": [float(load_before), float(os.getloadavg()[0])],
        "cpu_count": os.cpu_count(),
        "n": n,
        "batch": batch,
        "threads": threads,
        "backend": getattr(emb, "backend", "unknown"),
        "tokens_min": int(min(lengths)) if lengths else None,
        "tokens_max": int(max(lengths)) if lengths else None,
        "goal": {"p50_ms": 5.0, "p99_ms": 15.0, "batched_per_s": 500.0},
    }
    if tmp is not None:
        tmp.cleanup()
    return result
