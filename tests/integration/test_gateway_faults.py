"""Each way a real HTTP tier can fail (refused connection, HTTP 500, malformed JSON, a hang
past the timeout) is escalated past by the gateway's serving state, never raised; the
breaker then stops calling the tier until its half-open probe."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from routenlp.config import parse_config
from routenlp.server.runtime import CALL, CallContext, ServingState
from tests.integration.test_gateway_process import free_port, spawn, stop, wait_http

pytestmark = pytest.mark.timeout(120)


def test_every_failure_kind_escalates(tmp_path: Path) -> None:
    procs = []
    try:
        ports: dict[str, int] = {}
        started = []
        for fail in ("500", "malformed", "hang", "none"):  # start all, then wait for all
            port = free_port()
            log = tmp_path / f"up-{fail}.log"
            proc = spawn(["-m", "routenlp.server.upstream", "--port", str(port), "--name",
                          "TOP" if fail == "none" else f"F{fail}", "--fail", fail], log)
            procs.append(proc)
            started.append((proc, port, log))
            ports[fail] = port
        for proc, port, log in started:
            wait_http(f"http://127.0.0.1:{port}/v1/models", proc, log)
        gport = ports.pop("none")
        ports["refused"] = free_port()  # nothing listens there
        tiers = [{"name": f"T_{k}", "kind": "openai_compat", "model": "m",
                  "base_url": f"http://127.0.0.1:{p}/v1", "price_in": 0.1, "price_out": 0.1,
                  "timeout_s": 1, "max_retries": 0, "tasks": [f"task_{k}"]}
                 for k, p in ports.items()]
        tiers.append({"name": "TOP", "kind": "openai_compat", "model": "m",
                      "base_url": f"http://127.0.0.1:{gport}/v1", "price_in": 1, "price_out": 1,
                      "timeout_s": 5, "max_retries": 0})
        cfg = parse_config({"tier_order": "given", "tiers": tiers,
                            "tasks": [{"name": f"task_{k}", "kind": "generic", "metric": "score"}
                                      for k in ports],
                            "server": {"breaker_failures": 2, "breaker_reset_s": 0.5}})
        state = ServingState.load(cfg)
        expect = {"500": "HTTP 500", "malformed": "malformed response", "hang": "timed out",
                  "refused": "cannot connect"}
        for kind, needle in expect.items():
            CALL.set(CallContext())
            res = state.cascade.run(f"task_{kind}", "hello")
            assert res.tier == "TOP" and res.generation.text == "TOP says ok"
            first = res.steps[0]
            assert first["tier"] == f"T_{kind}" and needle in (first["error"] or ""), first
        # the refused tier: a second failure opens its breaker; calls then fail at once
        breaker = state.tiers["T_refused"].breaker
        CALL.set(CallContext())
        state.cascade.run("task_refused", "again")
        assert breaker.state == "open"
        res = state.cascade.run("task_refused", "while open")
        assert "circuit open" in res.steps[0]["error"] and res.steps[0]["latency_ms"] < 50
        time.sleep(0.6)
        assert breaker.state == "half_open"
        state.cascade.run("task_refused", "probe")  # the probe fails: open again
        assert breaker.state == "open"
    finally:
        for p in procs:
            stop(p)


def test_cancelled_request_calls_no_further_tier(tmp_path: Path) -> None:
    """After the client has gone (CallContext.cancelled, set by the gateway's disconnect
    watcher or its timeout), no tier is called and the cascade ends with a TierError."""
    from routenlp.errors import TierError

    cfg = parse_config({"tiers": [
        {"name": n, "kind": "openai_compat", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1",
         "price_in": p, "price_out": p, "timeout_s": 1, "max_retries": 0}
        for n, p in (("A", 0.1), ("B", 1.0))],
        "tasks": [{"name": "c", "kind": "generic", "metric": "score"}]})
    state = ServingState.load(cfg)
    ctx = CallContext()
    ctx.cancelled.set()
    CALL.set(ctx)
    with pytest.raises(TierError) as err:
        state.cascade.run("c", "hello")
    steps = err.value.steps  # type: ignore[attr-defined]
    assert [s["tier"] for s in steps] == ["A", "B"]
    assert all("not called" in s["error"] for s in steps) and ctx.calls == []
    assert all(t.breaker.state == "closed" for t in state.tiers.values())
