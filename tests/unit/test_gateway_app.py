"""The gateway app in process (TestClient) over fake tiers and a real SQLite store:
routing record, usage over tiers tried, task/model/param rules, auth, limits, reload,
feedback, metrics, and the all-tiers-failed error."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from routenlp.config import EnsembleConfig, parse_config
from routenlp.server.breaker import CircuitBreaker
from routenlp.server.gateway import create_app, with_limits
from routenlp.server.runtime import GuardedTier, Runtime, ServingState
from routenlp.store import Store
from routenlp.tiers.base import BaseTier, Generation, Request, Usage

MSGS = [{"role": "user", "content": "where is my card?"}]


class FakeTier(BaseTier):
    """Answers with log-probs of a settable value, or fails; records requests."""

    def __init__(self, cfg: Any, logprob: float = -0.01, error: str | None = None) -> None:
        super().__init__(cfg)
        self.logprob, self.error = logprob, error
        self.seen: list[Request] = []
        self.lock = threading.Lock()

    def generate(self, request: Request) -> Generation:
        with self.lock:
            self.seen.append(request)
        if self.error:
            return Generation(text="", error=f"{self.name}: {self.error}")
        gen = Generation(text=f"{self.name} answer", tokens=["a", "b"],
                         logprobs=[self.logprob, self.logprob], usage=Usage(10, 2))
        return self.price(gen)


def make_config(tmp: Path, **server: Any) -> EnsembleConfig:
    return parse_config({
        "tiers": [
            {"name": "T1", "kind": "openai_compat", "base_url": "http://x/v1", "model": "m",
             "price_in": 0.1, "price_out": 0.1},
            {"name": "T2", "kind": "replay", "price_in": 1, "price_out": 1},
        ],
        "tasks": [{"name": "chat", "kind": "generic", "metric": "score", "tau": 0.5},
                  {"name": "faq", "kind": "generic", "metric": "score", "tau": 0.5}],
        "store": {"url": f"sqlite:///{tmp / 'gw.db'}"},
        "server": {"breaker_failures": 2, "breaker_reset_s": 60, **server},
    })


def thresholds_file(tmp: Path, delta: float = 0.05, name: str = "thr.json") -> Path:
    p = tmp / name
    p.write_text(json.dumps({"alpha": 0.1, "method": "crc", "thresholds": {
        t: {"T1": {"delta": delta, "n": 100}} for t in ("chat", "faq")}}))
    return p


class Env:
    def __init__(self, tmp: Path, *, t1: dict[str, Any] | None = None, thresholds: Path | None
                 = None, **server: Any) -> None:
        self.config = make_config(tmp, **server)
        self.t1 = FakeTier(self.config.tier("T1"), **(t1 or {}))
        self.t2 = FakeTier(self.config.tier("T2"))
        tiers = {n: GuardedTier(t, CircuitBreaker(2, 60)) for n, t in
                 (("T1", self.t1), ("T2", self.t2))}
        self.state = ServingState.load(self.config, thresholds=thresholds, tiers=tiers)
        self.store = Store(self.config.store.url)
        self.runtime = Runtime(self.state, store=self.store)
        self.app = create_app(self.config, self.runtime, store=self.store)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Env, TestClient]]:
    e = Env(tmp_path)
    with TestClient(with_limits(e.app, e.config)) as client:
        yield e, client
    e.store.close()


def test_config_only_serves_cheapest_tier_and_logs(env: tuple[Env, TestClient]) -> None:
    e, c = env
    r = c.post("/v1/chat/completions", json={"model": "routenlp", "messages": MSGS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "T1 answer"
    rec = body["routenlp"]
    assert rec["tier"] == "T1" and rec["tiers_tried"] == ["T1"] and rec["mode"] == "fallback:cheapest"
    assert rec["steps"][0]["threshold"] is None  # unbounded fallback, JSON-safe
    assert r.headers["X-RouteNLP-Tier"] == "T1" and r.headers["X-RouteNLP-Task"] == "chat"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    logged = e.store.get_request(r.headers["X-RouteNLP-Request-Id"])
    assert logged is not None and logged.final_tier == "T1" and logged.query == MSGS[0]["content"]
    ready = c.get("/readyz").json()
    assert ready["missing"] == ["router", "thresholds"] and "cheapest" in ready["note"]


def test_escalation_sums_usage_over_tiers_tried(tmp_path: Path) -> None:
    e = Env(tmp_path, t1={"logprob": -2.0}, thresholds=thresholds_file(tmp_path))
    with TestClient(e.app) as c:
        r = c.post("/v1/chat/completions", json={"messages": MSGS},
                   headers={"X-RouteNLP-Task": "faq"})
    assert r.status_code == 200, r.text
    rec = r.json()["routenlp"]
    assert rec["task"] == "faq" and rec["tier"] == "T2" and rec["tiers_tried"] == ["T1", "T2"]
    assert rec["escalated"] is True and rec["steps"][0]["accepted"] is False
    assert rec["steps"][0]["threshold"] == 0.05 and rec["steps"][0]["u"] > 0.05
    assert r.json()["usage"]["total_tokens"] == 24  # both tiers' tokens
    assert rec["cost"] == pytest.approx(0.1 * 12 / 1000 + 1 * 12 / 1000)
    e.store.close()


def test_task_model_and_param_rules(env: tuple[Env, TestClient]) -> None:
    e, c = env
    r = c.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSGS})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "routenlp" in r.json()["error"]["message"] and "T2" in r.json()["error"]["message"]
    r = c.post("/v1/chat/completions", json={"messages": MSGS, "metadata": {"task": "nope"}})
    assert r.status_code == 400 and "known tasks" in r.json()["error"]["message"]
    r = c.post("/v1/chat/completions", json={"messages": MSGS, "metadata": {"task": "faq"}})
    assert r.json()["routenlp"]["task"] == "faq"
    # pin T1 (openai_compat): temperature is passed through to the tier
    r = c.post("/v1/chat/completions", json={"model": "T1", "messages": MSGS,
                                             "temperature": 0.7, "seed": 3, "stop": ["x"]})
    assert r.status_code == 200 and r.json()["routenlp"]["tiers_tried"] == ["T1"]
    assert e.t1.seen[-1].params == {"temperature": 0.7, "seed": 3, "stop": ["x"]}
    # routed: T2 (replay) cannot sample, so the request is refused, not silently changed
    r = c.post("/v1/chat/completions", json={"messages": MSGS, "temperature": 0.7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    assert "T2" in r.json()["error"]["message"]
    r = c.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 10**6})
    assert r.status_code == 400 and "cap" in r.json()["error"]["message"]


def test_all_tiers_failed_is_502_naming_each(tmp_path: Path) -> None:
    e = Env(tmp_path, t1={"error": "HTTP 500 from up"})
    e.t2.error = "timed out after 1s"
    with TestClient(e.app) as c:
        r = c.post("/v1/chat/completions", json={"messages": MSGS})
        assert r.status_code == 502, r.text
        msg = r.json()["error"]["message"]
        assert "T1: HTTP 500 from up" in msg and "T2: timed out" in msg
        rid = r.headers["X-RouteNLP-Request-Id"]
        logged = e.store.get_request(rid)
        assert logged is not None and logged.status == "failed" and len(logged.path) == 2
        c.post("/v1/chat/completions", json={"messages": MSGS})
        # both breakers are open now: no tier is called, the client gets 503
        n1, n2 = len(e.t1.seen), len(e.t2.seen)
        r = c.post("/v1/chat/completions", json={"messages": MSGS})
        assert r.status_code == 503 and "circuit open" in r.json()["error"]["message"]
        assert (len(e.t1.seen), len(e.t2.seen)) == (n1, n2)
        assert c.get("/readyz").status_code == 503
    e.store.close()


def test_auth_rate_limit_and_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTENLP_API_KEYS", "env-key")
    e = Env(tmp_path, api_keys=["cfg-key"], admin_key="adm", rate_limit_per_min=2)
    with TestClient(e.app) as c:
        assert c.post("/v1/chat/completions", json={"messages": MSGS}).status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert c.get("/v1/models", headers=bad).status_code == 401
        ok = {"Authorization": "Bearer cfg-key"}
        assert c.post("/v1/chat/completions", json={"messages": MSGS}, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        r = c.get("/v1/models", headers=ok)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        env_ok = {"Authorization": "Bearer env-key"}  # a separate bucket per key
        assert c.get("/v1/routenlp/tasks", headers=env_ok).status_code == 200
        assert c.post("/admin/reload", headers=env_ok).status_code == 403
        assert c.post("/admin/reload", headers={"Authorization": "Bearer adm"}).status_code == 200
        logged = e.store.requests(limit=5)
        assert logged and all("cfg-key" not in json.dumps(r.model_dump(mode="json"))
                              for r in logged)
    e.store.close()


def test_reload_refuses_corrupt_artifact_and_keeps_serving(tmp_path: Path) -> None:
    e = Env(tmp_path, t1={"logprob": -2.0})
    with TestClient(e.app) as c:
        assert c.post("/v1/chat/completions", json={"messages": MSGS}).json()["routenlp"]["tier"] == "T1"
        bad = tmp_path / "bad.json"
        bad.write_text('{"alpha": 0.1, "thresholds": {')
        r = c.post("/admin/reload", json={"thresholds": str(bad)})
        assert r.status_code == 409 and "bad.json" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json={"messages": MSGS}).json()["routenlp"]["tier"] == "T1"
        r = c.post("/admin/reload", json={"thresholds": str(thresholds_file(tmp_path))})
        assert r.status_code == 200 and r.json()["mode"] == "routed"
        rec = c.post("/v1/chat/completions", json={"messages": MSGS}).json()["routenlp"]
        assert rec["tier"] == "T2" and rec["mode"] == "routed"  # the new thresholds reject T1
        r = c.post("/admin/reload", json={"router": str(tmp_path / "no-router")})
        assert r.status_code == 409
        assert c.get("/readyz").json()["mode"] == "routed"
    e.store.close()


def test_limits_body_messages_and_log_backpressure(tmp_path: Path) -> None:
    e = Env(tmp_path, max_body_bytes=2048, max_messages=3)
    with TestClient(with_limits(e.app, e.config)) as c:
        r = c.post("/v1/chat/completions", content=b'{"messages": "' + b"x" * 5000 + b'"}')
        assert r.status_code == 413 and "2048" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={"messages": MSGS * 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        writer = e.app.state.holder["writer"]
        for _ in range(writer.max_pending):
            writer.reserve()
        r = c.post("/v1/chat/completions", json={"messages": MSGS})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert len(e.t1.seen) == 0  # refused before any tier was paid
        for _ in range(writer.max_pending):
            writer.release()
        assert c.post("/v1/chat/completions", json={"messages": MSGS}).status_code == 200
    e.store.close()


def test_feedback_stored_and_validated(env: tuple[Env, TestClient]) -> None:
    e, c = env
    rid = c.post("/v1/chat/completions", json={"messages": MSGS}).headers["X-RouteNLP-Request-Id"]
    r = c.post("/v1/feedback", json={"request_id": rid, "verdict": "reject"})
    assert r.status_code == 200 and r.json()["quality"] == 0.0
    r = c.post("/v1/feedback", json={"request_id": rid, "quality": 0.8, "source": "audit"})
    assert r.status_code == 200
    rows = e.store.feedback_since()
    assert [(f.request_id, f.quality) for f in rows] == [(rid, 0.0), (rid, 0.8)]
    assert c.post("/v1/feedback", json={"request_id": "nope", "quality": 1}).status_code == 404
    assert c.post("/v1/feedback", json={"request_id": rid, "quality": 2}).status_code == 400
    assert c.post("/v1/feedback", json={"request_id": rid}).status_code == 400


def test_stream_metrics_tasks_models(env: tuple[Env, TestClient]) -> None:
    e, c = env
    with c.stream("POST", "/v1/chat/completions", json={
            "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(x) for x in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert text == "T1 answer"
    assert any("routenlp" in ch for ch in chunks) and chunks[-1]["usage"]["total_tokens"] == 12
    assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {"routenlp", "T1", "T2"}
    tasks = c.get("/v1/routenlp/tasks").json()["data"]
    assert tasks[0] == {"name": "chat", "kind": "generic", "metric": "score", "tau": 0.5,
                        "sla_ms": 5000.0, "tiers": ["T1", "T2"]}
    prom = c.get("/metrics").text
    assert 'routenlp_requests_total{status="ok",task="chat",tier="T1"} 1.0' in prom
    assert "routenlp_request_latency_seconds_bucket" in prom


def test_breaker_half_open_probe() -> None:
    now = [0.0]
    b = CircuitBreaker(2, 5.0, clock=lambda: now[0])
    assert b.allow()
    b.failure("x")
    assert b.state == "closed" and b.allow()
    b.failure("y")
    assert b.state == "open" and not b.allow() and b.retry_after_s() == 5.0
    now[0] = 5.0
    assert b.state == "half_open" and b.allow() and not b.allow()  # one probe only
    b.failure("z")
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_duplicate_request_id_is_409_and_pinned_uses_task_prompt(env: tuple[Env, TestClient]
                                                                  ) -> None:
    e, c = env
    body = {"model": "T1", "messages": MSGS, "metadata": {"request_id": "fixed-1"}}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["X-RouteNLP-Request-Id"] == "fixed-1"
    assert e.t1.seen[-1].query == MSGS[0]["content"] and e.t1.seen[-1].id == "fixed-1"
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 409 and r.json()["error"]["param"] == "metadata.request_id"
    rec = e.store.get_request("fixed-1")
    assert rec is not None and rec.metadata["degraded"] is False and rec.final_tier == "T1"


def policy_file(tmp: Path, lam: float) -> Path:
    """A certified policy for the gateway's two tasks: T1 accepted iff p_hat(u) <= lam, with
    p_hat(u) = u (identity isotonic map)."""
    from routenlp.conformal.certify import Certificate, IsoMap, PolicyArtifact, Theta

    cert = Certificate(alpha=0.03, delta=0.1, guarantee="high-probability", n_A=200, n_B=200,
                       p_value=0.01, ucb=0.028, theta=Theta(lam=lam), certified=True,
                       population="marginal over the calibration task mix", shares={"chat": 0.5, "faq": 0.5})
    iso = IsoMap(thresholds=[0.0, 1.0], values=[0.0, 1.0], n=100)
    art = PolicyArtifact(theta=Theta(lam=lam), maps={t: {"T1": iso} for t in ("chat", "faq")},
                         certificate=cert, ladders={t: ["T1", "T2"] for t in ("chat", "faq")},
                         signals={t: {"T1": "recorded"} for t in ("chat", "faq")})
    return art.save(tmp / "policy.json")


@pytest.mark.parametrize(("lam", "served"), [(0.9, ["T1"]), (0.05, ["T1", "T2"])])
def test_gateway_serves_the_certified_policy(tmp_path: Path, lam: float, served: list[str]) -> None:
    # T1's log-prob -0.5 -> u = 1 - exp(-0.5) ~ 0.39: accepted at lambda 0.9, escalated at 0.05
    e = Env(tmp_path, t1={"logprob": -0.5}, thresholds=policy_file(tmp_path, lam))
    assert e.state.mode == "routed:certified"
    with TestClient(e.app) as c:
        r = c.post("/v1/chat/completions", json={"messages": MSGS}, headers={"X-RouteNLP-Task": "faq"})
    assert r.status_code == 200, r.text
    assert r.json()["routenlp"]["tiers_tried"] == served
