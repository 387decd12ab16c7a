"""`routenlp bench gateway`: what the gateway adds on top of a fast upstream.

Starts the fast upstream (`routenlp.server.upstream`) and the gateway (`routenlp serve`,
one worker, SQLite store, auth off) as real processes, then drives each with a small
keep-alive HTTP/1.1 load generator (raw asyncio streams, so the client costs little):
  * added latency: p50 / p99 of gateway calls minus those of direct upstream calls, at
    concurrency 1;
  * throughput: requests/s at concurrency 1, 8 and 64 (direct and through the gateway).
With `--router DIR` the same runs go through a gateway that loads that router (every tier
of the router pointed at the upstream), so the router's decision time is included. With
`--litellm BIN` (a `litellm` executable from a separate venv) LiteLLM's proxy is measured
on the same upstream and the ratio printed. Output JSON:
`{"added_p50_ms", "added_p99_ms", "rps", "peers": {name: {same keys}}, "upstream": {...}}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from routenlp.cli_groups import bench_app
from routenlp.cli_utils import console, err_console, friendly_errors, write_json
from routenlp.errors import ConfigError
from routenlp.store import percentile

BODY = json.dumps({"model": "routenlp", "messages": [
    {"role": "user", "content": "What is the status of my card delivery?"}]}).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one_conn(port: int, path: str, body: bytes, headers: dict[str, str], n: int,
                    lat: list[float]) -> int:
    """Send `n` requests over one keep-alive connection; returns how many were not 200."""
    done = 0
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return n
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body
    bad = 0
    try:
        for _ in range(n):
            done += 1
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            lat.append((time.perf_counter() - t0) * 1000.0)
            bad += status != 200
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        bad += n - done + 1  # a dropped connection: this and the unsent requests failed
    finally:
        writer.close()
    return bad


async def _load(port: int, path: str, concurrency: int, total: int,
                headers: dict[str, str]) -> dict[str, Any]:
    lat: list[float] = []
    per = max(1, total // concurrency)
    t0 = time.perf_counter()
    bad = await asyncio.gather(*[_one_conn(port, path, BODY, headers, per, lat)
                                 for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    lat.sort()
    return {"n": len(lat), "errors": int(sum(bad)), "rps": len(lat) / wall,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


def _measure(port: int, path: str, levels: list[int], total: int, headers: dict[str, str]
             ) -> dict[str, Any]:
    asyncio.run(_load(port, path, 4, 40, headers))  # warm-up (connections, caches)
    return {c: asyncio.run(_load(port, path, c, total if c > 1 else max(50, total // 4),
                                 headers)) for c in levels}


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=full,
                            start_new_session=True)


def _wait(port: int, path: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180
          ) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"benchmark process exited ({proc.returncode}): "
                              f"{log.read_text()[-1500:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise ConfigError(f"benchmark process on port {port} not up in {timeout:.0f}s; see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _gateway_config(tmp: Path, up_port: int, router: Path | None, sync: str) -> Path:
    if router is not None:
        meta = json.loads((router / "meta.json").read_text())
        tiers, tasks = list(meta["tiers"]), list(meta["tasks"])
    else:
        tiers, tasks = ["T1", "T2"], ["cs_chat"]
    cfg = {"name": "bench-gateway", "tier_order": "given",
           "tiers": [{"name": t, "kind": "openai_compat", "model": "bench",
                      "base_url": f"http://127.0.0.1:{up_port}/v1", "price_in": 0.1 * (i + 1),
                      "price_out": 0.1 * (i + 1), "timeout_s": 10, "max_retries": 0,
                      "options": {"logprobs": True}} for i, t in enumerate(tiers)],
           "tasks": [{"name": t, "kind": "generic", "metric": "score", "tau": 0.5,
                      "sla_ms": 60000} for t in tasks],
           "store": {"url": f"sqlite:///{tmp / ('gw-router.db' if router else 'gw.db')}"},
           "server": {"max_concurrency": 1024, "log_queue_size": 100000,
                      "log_sqlite_synchronous": sync}}
    path = tmp / ("router.yaml" if router else "plain.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _summary(direct: dict[int, Any], via: dict[int, Any]) -> dict[str, Any]:
    return {"added_p50_ms": via[1]["p50_ms"] - direct[1]["p50_ms"],
            "added_p99_ms": via[1]["p99_ms"] - direct[1]["p99_ms"],
            "rps": {str(c): via[c]["rps"] for c in via},
            "runs": {str(c): via[c] for c in via}}


def bench_gateway(
    json_out: Optional[Path] = typer.Option(None, "--json", help="write results JSON here"),
    requests: int = typer.Option(800, "--requests", min=50, help="requests per concurrency level"),
    concurrency: str = typer.Option("1,8,64", "--concurrency", help="comma-separated levels"),
    router: Optional[Path] = typer.Option(None, "--router", help="also measure with this router"),
    litellm: Optional[Path] = typer.Option(None, "--litellm",
                                           help="litellm executable (its own venv) to compare"),
    ray: bool = typer.Option(False, "--ray", help="also measure on Ray Serve (routenlp[ray])"),
    replicas: str = typer.Option("1,2", "--replicas", help="gateway replica counts with --ray"),
    store_url: Optional[str] = typer.Option(None, "--store-url",
                                            help="with --ray: also measure this store's write rate"),
    sqlite_sync: str = typer.Option("NORMAL", "--sqlite-sync",
                                    help="gateway store durability: FULL or NORMAL (WAL)"),
) -> None:
    """Gateway overhead over a fast local upstream: added p50/p99 and requests/s."""
    try:
        levels = sorted({int(x) for x in concurrency.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--concurrency: expected integers like 1,8,64, got {concurrency!r}"
                          ) from None
    sqlite_sync = sqlite_sync.upper()
    if sqlite_sync not in ("FULL", "NORMAL"):
        raise ConfigError(f"--sqlite-sync: expected FULL or NORMAL, got {sqlite_sync!r}")
    if 1 not in levels:
        levels = [1, *levels]
    if router is not None and not (router / "meta.json").exists():
        raise ConfigError(f"--router {router}: not a router artifact (no meta.json)")
    if litellm is not None and not litellm.exists():
        raise ConfigError(f"--litellm {litellm}: no such executable")
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="routenlp-bench-gw-"))
    out: dict[str, Any] = {"peers": {}, "concurrency": levels, "requests": requests,
                           "sqlite_synchronous": sqlite_sync}
    try:
        up = _free_port()
        procs.append(p := _spawn([sys.executable, "-m", "routenlp.server.upstream", "--port",
                                  str(up), "--name", "bench"], tmp / "upstream.log"))
        _wait(up, "/v1/models", p, tmp / "upstream.log")
        err_console.print(f"upstream on :{up}; measuring direct calls")
        direct = _measure(up, "/v1/chat/completions", levels, requests, {})
        out["upstream"] = {"p50_ms": direct[1]["p50_ms"], "p99_ms": direct[1]["p99_ms"],
                           "rps": {str(c): direct[c]["rps"] for c in direct}}
        variants: list[tuple[str, Path | None]] = [("routenlp", None)]
        if router is not None:
            variants.append(("routenlp+router", router))
        for name, rdir in variants:
            port = _free_port()
            cfg = _gateway_config(tmp, up, rdir, sqlite_sync)
            args = [sys.executable, "-m", "routenlp.cli", "serve", "--config", str(cfg),
                    "--port", str(port)] + (["--router", str(rdir)] if rdir else [])
            log = tmp / f"{name}.log"
            procs.append(gw := _spawn(args, log, {"HF_HUB_OFFLINE": "1"}))
            _wait(port, "/healthz", gw, log)
            err_console.print(f"measuring {name} on :{port}")
            via = _measure(port, "/v1/chat/completions", levels, requests, {})
            if name == "routenlp":
                out.update(_summary(direct, via))
            else:
                out["peers"][name] = _summary(direct, via)
            _stop(gw)
        if ray:  # hook: the same gateway on Ray Serve (routenlp.scale.bench)
            from routenlp.scale.bench import measure_ray, measure_store_writes, parse_replicas

            out["peers"].update(measure_ray(
                _gateway_config(tmp, up, None, sqlite_sync), parse_replicas(replicas),
                lambda port: _measure(port, "/v1/chat/completions", levels, requests, {}),
                lambda via: _summary(direct, via)))
            if store_url:
                out["store_write"] = measure_store_writes(store_url)
        if litellm is not None:
            port = _free_port()
            lcfg = tmp / "litellm.yaml"
            lcfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "routenlp",
                "litellm_params": {"model": "openai/bench", "api_base": f"http://127.0.0.1:{up}/v1",
                                   "api_key": "none"}}],
                "general_settings": {"master_key": "sk-bench"}}))
            log = tmp / "litellm.log"
            procs.append(lp := _spawn([str(litellm), "--config", str(lcfg), "--port", str(port),
                                       "--num_workers", "1"], log))
            _wait(port, "/health/liveliness", lp, log, timeout=300)
            err_console.print(f"measuring litellm on :{port}")
            via = _measure(port, "/v1/chat/completions", levels, requests,
                           {"Authorization": "Bearer sk-bench"})
            out["peers"]["litellm"] = _summary(direct, via)
            _stop(lp)
    finally:
        for proc in procs:
            _stop(proc)
    _print(out)
    if json_out is not None:
        write_json(json_out, out)
        console.print(f"wrote {json_out}")


def _print(out: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="gateway overhead over a fast upstream")
    table.add_column("system")
    table.add_column("added p50 ms", justify="right")
    table.add_column("added p99 ms", justify="right")
    for c in out["concurrency"]:
        table.add_column(f"req/s @{c}", justify="right")
    up = out["upstream"]
    table.add_row("upstream (direct)", "-", "-", *[f"{up['rps'][str(c)]:.0f}"
                                                    for c in out["concurrency"]])
    rows = [("routenlp", out)] + list(out["peers"].items())
    for name, r in rows:
        table.add_row(name, f"{r['added_p50_ms']:.2f}", f"{r['added_p99_ms']:.2f}",
                      *[f"{r['rps'][str(c)]:.0f}" for c in out["concurrency"]])
    console.print(table)
    lite = out["peers"].get("litellm")
    if lite:
        best = max(out["rps"].values()) / max(1e-9, max(lite["rps"].values()))
        console.print(f"routenlp vs litellm: added p50 {out['added_p50_ms']:.2f} vs "
                      f"{lite['added_p50_ms']:.2f} ms; peak req/s ratio {best:.1f}x")


def register(app: Any) -> None:
    """`bench gateway` on the shared bench group."""
    bench_app.command("gateway")(friendly_errors(bench_gateway))
