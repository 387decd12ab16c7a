"""`routenlp serve` as a real process in front of real HTTP upstreams
(`python -m routenlp.server.upstream`), used through the official `openai` client (sync,
async, streaming); a tier killed mid-run; two gateways sharing one PostgreSQL store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import AsyncOpenAI, OpenAI

from routenlp.store import Store

MSGS = [{"role": "user", "content": "where is my card?"}]
TASK = {"X-RouteNLP-Task": "cs_chat"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            pytest.fail(f"{url} not up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def upstream(tmp: Path, name: str, **opts: Any) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["-m", "routenlp.server.upstream", "--port", str(port), "--name", name]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    log = tmp / f"up-{name}-{port}.log"
    proc = spawn(args, log)
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc, log)
    return proc, port


def write_config(tmp: Path, ports: dict[str, int], store_url: str, **server: Any) -> Path:
    tiers = [{"name": n, "kind": "openai_compat", "base_url": f"http://127.0.0.1:{p}/v1",
              "model": n, "price_in": price, "price_out": price, "timeout_s": 2,
              "max_retries": 0} for (n, p), price in zip(ports.items(), (0.1, 1.0, 5.0))]
    cfg = {"tiers": tiers,
           "tasks": [{"name": "cs_chat", "kind": "generic", "metric": "score", "tau": 0.5},
                     {"name": "faq", "kind": "generic", "metric": "score", "tau": 0.5}],
           "store": {"url": store_url},
           "server": {"breaker_failures": 3, "breaker_reset_s": 30, **server}}
    path = tmp / f"gateway-{len(list(tmp.glob('gateway-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def gateway(tmp: Path, config: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = tmp / f"gw-{port}.log"
    proc = spawn(["-m", "routenlp.cli", "serve", "--config", str(config), "--port", str(port),
                  *extra], log)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("gateway")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t1, p1 = upstream(tmp, "T1")
        t2, p2 = upstream(tmp, "T2")
        procs += [t1, t2]
        url = f"sqlite:///{tmp / 'gw.db'}"
        cfg = write_config(tmp, {"T1": p1, "T2": p2}, url, api_keys=["sk-test"])
        gw, base = gateway(tmp, cfg)
        procs.append(gw)
        wait_http(base + "/healthz", gw, tmp / f"gw-{base.rsplit(':', 1)[1]}.log")
        yield {"base": base, "t1": t1, "store_url": url, "tmp": tmp}
    finally:
        for p in procs:
            stop(p)


def client(stack: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=stack["base"] + "/v1", api_key="sk-test", max_retries=0)


def test_sync_client_routes_with_record(stack: dict[str, Any]) -> None:
    c = client(stack)
    raw = c.chat.completions.with_raw_response.create(
        model="routenlp", messages=MSGS, extra_headers=TASK)  # type: ignore[arg-type]
    resp = raw.parse()
    assert resp.choices[0].message.content == "T1 says ok"
    rec = resp.model_extra["routenlp"]
    assert rec["task"] == "cs_chat" and rec["tier"] == "T1" and rec["sla_met"] is True
    assert raw.headers["x-routenlp-tier"] == "T1" and resp.usage.total_tokens > 0
    pinned = c.chat.completions.create(model="T2", messages=MSGS, temperature=0.3)  # type: ignore[arg-type]
    assert pinned.choices[0].message.content == "T2 says ok"
    with pytest.raises(Exception) as err:
        c.chat.completions.create(model="gpt-4o", messages=MSGS)  # type: ignore[arg-type]
    assert getattr(err.value, "status_code", None) == 404
    bad = OpenAI(base_url=stack["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(Exception) as err:
        bad.chat.completions.create(model="routenlp", messages=MSGS)  # type: ignore[arg-type]
    assert getattr(err.value, "status_code", None) == 401
    ids = {m.id for m in c.models.list().data}
    assert ids == {"routenlp", "T1", "T2"}


def test_async_client_concurrent(stack: dict[str, Any]) -> None:
    async def go() -> list[Any]:
        ac = AsyncOpenAI(base_url=stack["base"] + "/v1", api_key="sk-test", max_retries=0)
        try:
            return await asyncio.gather(*[
                ac.chat.completions.create(model="routenlp", messages=MSGS,  # type: ignore[arg-type]
                                           metadata={"task": "faq"})
                for _ in range(16)])
        finally:
            await ac.close()

    out = asyncio.run(go())
    assert len({r.id for r in out}) == 16
    assert all(r.model_extra["routenlp"]["task"] == "faq" for r in out)


def test_streaming(stack: dict[str, Any]) -> None:
    stream = client(stack).chat.completions.create(
        model="routenlp", messages=MSGS, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_headers=TASK)
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "T1 says ok"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert any((ch.model_extra or {}).get("routenlp", {}).get("tier") == "T1" for ch in chunks)


def test_tier_killed_mid_run_escalates_and_logs_everything(stack: dict[str, Any]) -> None:
    c = client(stack)
    sent: list[str] = []

    def one(i: int) -> tuple[int, str, str]:
        raw = c.chat.completions.with_raw_response.create(
            model="routenlp", messages=MSGS, extra_headers=TASK)  # type: ignore[arg-type]
        return raw.status_code, raw.headers["x-routenlp-request-id"], raw.parse().model_extra[
            "routenlp"]["tier"]

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(one, range(16)))
        stack["t1"].kill()  # T1 dies while requests keep coming
        stack["t1"].wait()
        rest = list(pool.map(one, range(40)))
    results = first + rest
    assert all(code == 200 for code, _, _ in results)
    assert {tier for _, _, tier in first} == {"T1"}
    assert {tier for _, _, tier in rest[-10:]} == {"T2"}  # escalated past the dead tier
    sent = [rid for _, rid, _ in results]
    with Store(stack["store_url"]) as store:
        logged = {r.id: r for r in store.requests(limit=10_000)}
    assert set(sent) <= set(logged)  # no acknowledged request is missing from the store
    failed_t1 = [logged[r] for r in sent[16:] if logged[r].final_tier == "T2"]
    assert failed_t1 and all(rec.path[0].tier == "T1" and rec.path[0].error for rec in failed_t1)
    ready = httpx.get(stack["base"] + "/readyz").json()
    assert ready["unreachable_tiers"] == ["T1"]


@pytest.mark.postgres
def test_two_gateways_share_postgres_store(pg_url: str, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t1, p1 = upstream(tmp_path, "T1")
        procs.append(t1)
        bases = []
        for _ in range(2):
            cfg = write_config(tmp_path, {"T1": p1}, pg_url)
            gw, base = gateway(tmp_path, cfg)
            procs.append(gw)
            bases.append((gw, base))
        for gw, base in bases:
            wait_http(base + "/healthz", gw, tmp_path / f"gw-{base.rsplit(':', 1)[1]}.log")

        def one(i: int) -> str:
            base = bases[i % 2][1]
            r = httpx.post(base + "/v1/chat/completions", timeout=30,
                           json={"model": "routenlp", "messages": MSGS})
            assert r.status_code == 200, r.text
            return r.headers["x-routenlp-request-id"]

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(one, range(60)))
        assert len(set(ids)) == 60
        with Store(pg_url) as store:
            rows = store.requests(limit=1000)
        assert sorted(r.id for r in rows) == sorted(ids)  # each logged exactly once
    finally:
        for p in procs:
            stop(p)
