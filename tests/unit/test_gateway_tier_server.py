"""`serve-tier` gets the gateway's auth and limits: a wrong key is 401, oversize bodies 413,
too many messages / a huge max_tokens 400, unsupported sampling parameters and a foreign
`model` are refused instead of silently dropped. Also `bench gateway` option checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from routenlp.cli import app as cli_app
from routenlp.config import ServerConfig, TierConfig
from routenlp.server.security import BodyLimit, KeyRing, RateLimiter
from routenlp.server.tier_server import create_tier_app
from routenlp.tiers.base import BaseTier, Generation, Request, Usage

MSGS = [{"role": "user", "content": "hi"}]


class Greedy(BaseTier):
    def __init__(self) -> None:
        super().__init__(TierConfig(name="T2", kind="local", price_in=1, price_out=1))
        self.seen: list[Request] = []

    def generate(self, request: Request) -> Generation:
        self.seen.append(request)
        return Generation(text="ok", tokens=["ok"], logprobs=[-0.1], usage=Usage(3, 1))


def make(**server: object) -> tuple[Greedy, TestClient]:
    srv = ServerConfig(api_keys=["k1"], max_messages=4, max_tokens_cap=64, **server)  # type: ignore[arg-type]
    tier = Greedy()
    app = BodyLimit(create_tier_app(tier, tasks=["chat"], server=srv), 4096)
    return tier, TestClient(app)


def test_serve_tier_auth_and_limits() -> None:
    tier, c = make()
    url = "/v1/chat/completions"
    ok = {"Authorization": "Bearer k1"}
    assert c.post(url, json={"messages": MSGS}, headers={"Authorization": "Bearer no"}
                  ).status_code == 401
    assert c.post(url, json={"messages": MSGS}).status_code == 401
    assert c.get("/v1/models").status_code == 401
    assert c.post(url, json={"messages": MSGS}, headers=ok).status_code == 200
    r = c.post(url, content=json.dumps({"messages": [{"role": "user", "content": "x" * 9000}]}),
               headers=ok)
    assert r.status_code == 413
    r = c.post(url, json={"messages": MSGS * 5}, headers=ok)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert c.post(url, json={"messages": MSGS, "max_tokens": 65}, headers=ok).status_code == 400
    r = c.post(url, json={"messages": MSGS, "temperature": 0.9}, headers=ok)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = c.post(url, json={"messages": MSGS, "stop": ["\n"]}, headers=ok)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = c.post(url, json={"messages": MSGS, "temperature": 0, "seed": 7}, headers=ok)
    assert r.status_code == 200  # greedy values: the deterministic tier honours them
    r = c.post(url, json={"model": "gpt-4o", "messages": MSGS}, headers=ok)
    assert r.status_code == 404 and "T2" in r.json()["error"]["message"]
    assert len(tier.seen) == 2  # nothing refused ever reached the tier


def test_rate_limit_and_keyring() -> None:
    now = [0.0]
    rl = RateLimiter(60, clock=lambda: now[0])
    assert all(rl.take("a") == 0 for _ in range(60))
    assert rl.take("a") > 0 and rl.take("b") == 0
    now[0] = 1.0
    assert rl.take("a") == 0
    ring = KeyRing(["s1", "s2", ""])
    assert len(ring) == 2 and ring.check("s2") and not ring.check("s3") and not ring.check(None)
    assert "s1" not in repr(ring.__dict__)  # only digests are kept


def test_bench_gateway_bad_options_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli_app, ["bench", "gateway", "--concurrency", "1,x"])
    assert r.exit_code == 2 and "--concurrency" in r.output
    r = runner.invoke(cli_app, ["bench", "gateway", "--router", str(tmp_path)])
    assert r.exit_code == 2 and "meta.json" in r.output


def test_serve_and_serve_tier_refuse_bad_input_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "tiers": [{"name": "T1", "kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1",
                   "model": "m", "price_in": 1, "price_out": 1}],
        "tasks": [{"name": "chat", "kind": "generic", "metric": "score"}],
        "store": {"url": f"sqlite:///{tmp_path / 'x.db'}"}}))
    bad = tmp_path / "thr.json"
    bad.write_text("{nope")
    runner = CliRunner()
    for args, needle in ((["serve", "--config", str(cfg), "--thresholds", str(bad)], "thr.json"),
                         (["serve", "--config", str(cfg), "--router", str(tmp_path)], "router"),
                         (["serve", "--config", str(cfg), "--log-level", "bogus"], "bogus"),
                         (["serve-tier", "T1", "--config", str(cfg), "--log-level", "bogus"],
                          "--log-level")):
        r = runner.invoke(cli_app, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output
