"""Each way a real HTTP tier can fail (refused connection, HTTP 500, malformed JSON, a hang
past the timeout) is escalated past by the gateway's serving state, never raised; the
breaker then stops calling the tier until its half-open probe."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from routenlp.config import parse_config
from routenlp.server.runtime import CALL, CallContext, ServingState
from tests.integration.test_gateway import free_port, spawn, stop, wait_http

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
