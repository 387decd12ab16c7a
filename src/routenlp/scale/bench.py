"""`routenlp bench gateway --ray --replicas 1,2`: the same gateway on Ray Serve with N
replicas, measured with the same load generator and upstream as the single-process run
(server/bench.py), plus the store's group-commit write rate that bounds many replicas.

Output (merged into the gateway bench JSON): `peers["ray-N"]` with the gateway keys
`added_p50_ms, added_p99_ms, rps` (added = via Ray Serve minus direct upstream calls), and
`store_write` = {backend, batch: rows/s} for the store URL in use.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from routenlp.config import load_config
from routenlp.errors import ConfigError
from routenlp.scale import connect, require_ray


def parse_replicas(text: str) -> list[int]:
    """`--replicas 1,2` -> [1, 2] (a clear error naming the option otherwise)."""
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--replicas: expected integers like 1,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--replicas: expected positive integers like 1,2, got {text!r}")
    return values


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ConfigError(f"Ray Serve gateway on :{port} not ready in {timeout:.0f}s")


def measure_ray(
    config_path: Path,
    replicas: list[int],
    measure: Callable[[int], dict[int, Any]],
    summary: Callable[[dict[int, Any]], dict[str, Any]],
    *,
    address: str | None = None,
    num_cpus_per_replica: float = 0.5,
) -> dict[str, Any]:
    """Deploy the bench gateway config with each replica count, run `measure(port)` and
    return {"ray-N": summary(result)}; the app is removed after each count."""
    import os

    ray = connect(address, **({} if address else {"num_cpus": os.cpu_count() or 2}))
    require_ray("serve")
    from ray import serve

    from routenlp.scale.serve import APP_NAME, deploy

    base = load_config(config_path)
    out: dict[str, Any] = {}
    try:
        for n in replicas:
            scale = base.scale.model_copy(update={"gateway": base.scale.gateway.model_copy(
                update={"replicas": n, "num_cpus": num_cpus_per_replica,
                        "max_ongoing_requests": 256})})
            cfg = base.model_copy(update={"scale": scale})
            port = _free_port()
            deploy(cfg, port=port)
            _wait_ready(port)
            res = summary(measure(port))
            res["replicas"] = n
            res["cpus"] = float(ray.cluster_resources().get("CPU", 0.0))
            out[f"ray-{n}"] = res
            serve.delete(APP_NAME)
            serve.shutdown()
    finally:
        if ray.is_initialized() and not address:
            ray.shutdown()
    return out


def measure_store_writes(url: str, batches: tuple[int, ...] = (1, 32, 256),
                         rows: int = 2000) -> dict[str, Any]:
    """Request rows/s that one writer commits at each group-commit batch size (the
    gateway's LogWriter batches), on a fresh table set in the store at `url`."""
    import uuid

    from routenlp.store import Store

    def rec(i: int) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "task": "bench", "query": f"q{i}", "response": "a",
                "final_tier": "T1", "accepted": True,
                "path": [{"tier": "T1", "accepted": True, "latency_ms": 1.0, "cost": 0.0}]}

    result: dict[str, Any] = {}
    with Store(url) as store:
        result["backend"] = store.backend
        for b in batches:
            n = max(b, rows if b > 1 else rows // 4)
            recs = [rec(i) for i in range(n)]
            t0 = time.perf_counter()
            for i in range(0, n, b):
                store.log_requests(recs[i : i + b])
            result[str(b)] = n / (time.perf_counter() - t0)
    return result
