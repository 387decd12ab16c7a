"""The openai_compat tier against a fake OpenAI-compatible upstream (FastAPI + uvicorn in a
thread on a free port): log-prob parsing, usage fallbacks, and every failure mapped to a
Generation error (never an exception)."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from routenlp.config import TierConfig, parse_config
from routenlp.errors import ConfigError
from routenlp.tiers.base import Request, build_tier
from routenlp.tiers.openai_compat import OpenAICompatTier, env_prefix, parse_logprobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _completion(content: Any, *, logprobs: bool = True, usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
    }
    if logprobs:
        body["choices"][0]["logprobs"] = {
            "content": [
                {"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108], "top_logprobs": []},
                {"token": "lo", "logprob": -0.5, "bytes": [108, 111], "top_logprobs": []},
            ]
        }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    return body


class Upstream:
    """Behaviour is chosen by the request's `model`; every request body is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(req: HTTPRequest) -> Response:
            body = await req.json()
            self.requests.append(body)
            self.headers.append(dict(req.headers))
            model = body.get("model")
            if model == "ok":
                return JSONResponse(_completion("Hello"))
            if model == "no-logprobs":
                return JSONResponse(_completion("Hello there", logprobs=False, usage=False))
            if model == "rejects-logprobs":
                if "logprobs" in body:
                    return JSONResponse(
                        {"error": {"message": "logprobs is not supported by this model",
                                   "type": "invalid_request_error"}},
                        status_code=400,
                    )
                return JSONResponse(_completion("Hi", logprobs=False))
            if model == "bad-request":
                return JSONResponse({"error": {"message": "messages too long"}}, status_code=400)
            if model == "error500":
                return JSONResponse({"error": {"message": "engine crashed"}}, status_code=500)
            if model == "garbage":
                return Response("{not json", media_type="application/json")
            if model == "html":
                return PlainTextResponse("<html>gateway</html>")
            if model == "empty":
                return JSONResponse({"id": "x", "object": "chat.completion", "created": 1,
                                     "model": "empty", "choices": []})
            if model == "null-content":
                return JSONResponse(_completion(None, logprobs=False))
            if model == "slow":
                await asyncio.sleep(1.2)
                return JSONResponse(_completion("late"))
            if model == "classifier":
                body_ = _completion("card_arrival", logprobs=False)
                body_["routenlp"] = {"class_probs": {"card_arrival": 0.9, "other": 0.1},
                                     "uncertainty": 0.1, "confidence": 0.9}
                return JSONResponse(body_)
            return JSONResponse({"error": {"message": f"unknown model {model}"}}, status_code=404)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Upstream]]:
    fake = Upstream()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
                      timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "fake upstream did not start"
    yield f"http://127.0.0.1:{port}/v1", fake
    server.should_exit = True
    thread.join(timeout=5)


def make_tier(base_url: str, model: str, **kw: Any) -> OpenAICompatTier:
    cfg = TierConfig(name="T4", kind="openai_compat", base_url=base_url, model=model,
                     price_in=1.0, price_out=2.0, timeout_s=kw.pop("timeout_s", 5.0),
                     max_retries=0, **kw)
    return OpenAICompatTier(cfg)


REQ = Request(task="cs_intent", prompt="Where is my card?", id="q1")


def test_parse_logprobs_handles_models_dicts_and_gaps() -> None:
    toks, lps = parse_logprobs({"content": [{"token": "a", "logprob": -0.2},
                                            {"token": "b", "logprob": 0.0}]})
    assert toks == ["a", "b"] and lps == [-0.2, 0.0]
    assert parse_logprobs(None) == ([], None)
    assert parse_logprobs({"content": None}) == ([], None)
    # a token without a usable logprob makes the sequence unusable, tokens are kept
    toks, lps = parse_logprobs({"content": [{"token": "a", "logprob": None}, {"token": "b"}]})
    assert toks == ["a", "b"] and lps is None
    # positive rounding noise is clamped to log(1)
    assert parse_logprobs({"content": [{"token": "a", "logprob": 1e-7}]})[1] == [0.0]


def test_success_parses_tokens_logprobs_usage_cost(upstream: tuple[str, Upstream]) -> None:
    url, fake = upstream
    gen = make_tier(url, "ok").generate(REQ)
    assert gen.ok, gen.error
    assert gen.text == "Hello"
    assert gen.tokens == ["Hel", "lo"]
    assert gen.logprobs == pytest.approx([-0.1, -0.5])
    assert gen.usage.tokens_in == 11 and gen.usage.tokens_out == 2
    assert gen.cost == pytest.approx(11 / 1000 * 1.0 + 2 / 1000 * 2.0)
    assert gen.latency_s > 0
    expected_u = ((1 - math.exp(-0.1)) + (1 - math.exp(-0.5))) / 2
    assert gen.uncertainty == pytest.approx(expected_u)
    sent = fake.requests[-1]
    assert sent["logprobs"] is True and sent["temperature"] == 0 and sent["max_tokens"] == 128
    assert sent["messages"] == [{"role": "user", "content": "Where is my card?"}]
    assert fake.headers[-1]["x-routenlp-task"] == "cs_intent"


def test_messages_and_max_tokens_are_forwarded(upstream: tuple[str, Upstream]) -> None:
    url, fake = upstream
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    gen = make_tier(url, "ok").generate(
        Request(task="t", prompt="ignored", messages=msgs, max_tokens=7)
    )
    assert gen.ok
    assert fake.requests[-1]["messages"] == msgs and fake.requests[-1]["max_tokens"] == 7


def test_missing_logprobs_and_usage_are_tolerated(upstream: tuple[str, Upstream]) -> None:
    url, _ = upstream
    gen = make_tier(url, "no-logprobs").generate(REQ)
    assert gen.ok and gen.text == "Hello there"
    assert gen.logprobs is None and gen.uncertainty is None
    assert gen.meta["estimated_usage"] is True
    assert gen.usage.tokens_in == len("Where is my card?") // 4
    assert gen.usage.tokens_out == len("Hello there") // 4
    assert gen.cost > 0


def test_logprobs_rejected_once_then_remembered(upstream: tuple[str, Upstream]) -> None:
    url, fake = upstream
    tier = make_tier(url, "rejects-logprobs")
    n0 = len(fake.requests)
    gen = tier.generate(REQ)
    assert gen.ok and gen.text == "Hi" and gen.logprobs is None
    assert not tier.logprobs_supported
    assert len(fake.requests) - n0 == 2  # rejected, then retried without
    gen2 = tier.generate(REQ)
    assert gen2.ok and "logprobs" not in fake.requests[-1]
    assert len(fake.requests) - n0 == 3  # no second rejection


def test_other_400_is_not_retried(upstream: tuple[str, Upstream]) -> None:
    url, fake = upstream
    tier = make_tier(url, "bad-request")
    n0 = len(fake.requests)
    gen = tier.generate(REQ)
    assert gen.error == f"T4: HTTP 400 from {url}: messages too long"
    assert len(fake.requests) - n0 == 1 and tier.logprobs_supported


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("error500", "HTTP 500"),
        ("garbage", "malformed response"),
        ("html", "malformed response"),
        ("empty", "empty 'choices'"),
        ("missing-model", "HTTP 404"),
    ],
)
def test_failures_become_generation_errors(
    upstream: tuple[str, Upstream], model: str, expected: str
) -> None:
    url, _ = upstream
    gen = make_tier(url, model).generate(REQ)
    assert not gen.ok and gen.text == ""
    assert gen.error is not None and gen.error.startswith("T4: ") and expected in gen.error


def test_null_content_is_empty_text(upstream: tuple[str, Upstream]) -> None:
    url, _ = upstream
    gen = make_tier(url, "null-content").generate(REQ)
    assert gen.ok and gen.text == ""


def test_timeout_is_an_error_not_an_exception(upstream: tuple[str, Upstream]) -> None:
    url, _ = upstream
    started = time.perf_counter()
    gen = make_tier(url, "slow", timeout_s=0.3).generate(REQ)
    assert gen.error is not None and "timed out after 0.3s" in gen.error
    assert time.perf_counter() - started < 2.5


def test_connection_refused_is_an_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = make_tier(url, "ok").generate(REQ)
    assert gen.error is not None and gen.error.startswith(f"T4: cannot connect to {url}")


def test_routenlp_extension_gives_class_probs(upstream: tuple[str, Upstream]) -> None:
    url, _ = upstream
    gen = make_tier(url, "classifier").generate(REQ)
    assert gen.ok and gen.class_probs == {"card_arrival": 0.9, "other": 0.1}
    assert gen.uncertainty == pytest.approx(0.1) and gen.confidence == pytest.approx(0.9)


def test_generate_batch_is_concurrent_and_ordered(upstream: tuple[str, Upstream]) -> None:
    url, _ = upstream
    tier = make_tier(url, "ok", batch_size=4)
    reqs = [Request(task="t", prompt=f"q{i}", id=str(i)) for i in range(6)]
    gens = tier.generate_batch(reqs)
    assert len(gens) == 6 and all(g.ok and g.text == "Hello" for g in gens)
    # a mixed batch: failures stay in their slot
    bad = make_tier(url, "error500", batch_size=4)
    assert [g.ok for g in bad.generate_batch(reqs[:2])] == [False, False]


def test_missing_base_url_or_model_is_a_config_error() -> None:
    assert env_prefix("T4") == "ROUTENLP_T4" and env_prefix("gpt-4o mini") == "ROUTENLP_GPT_4O_MINI"
    with pytest.raises(ConfigError) as err:
        OpenAICompatTier(TierConfig(name="T4", kind="openai_compat", model="m",
                                    price_in=1, price_out=1))
    assert "'T4'" in err.value.message and "base_url" in err.value.message
    assert err.value.hint is not None and "ROUTENLP_T4_BASE_URL" in err.value.hint
    with pytest.raises(ConfigError) as err:
        OpenAICompatTier(TierConfig(name="T4", kind="openai_compat", base_url="http://x/v1",
                                    price_in=1, price_out=1))
    assert err.value.hint is not None and "ROUTENLP_T4_MODEL" in err.value.hint


def test_registered_kind_builds_from_config() -> None:
    cfg = parse_config({
        "tiers": [{"name": "T4", "kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1",
                   "model": "m", "price_in": 1, "price_out": 1}],
        "tasks": [{"name": "t"}],
    })
    tier = build_tier(cfg.tiers[0], cfg)
    assert isinstance(tier, OpenAICompatTier) and tier.name == "T4"
    tier.close()


def test_options_input_query_and_max_tokens_param(upstream: tuple[str, Upstream]) -> None:
    url, fake = upstream
    tier = make_tier(url, "ok", options={"input": "query", "max_tokens_param":
                                         "max_completion_tokens", "logprobs": False})
    gen = tier.generate(
        Request(task="t", prompt="Classify: where is my card", query="where is my card")
    )
    assert gen.ok and "logprobs_unsupported" not in gen.meta
    sent = fake.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "where is my card"}]
    assert sent["max_completion_tokens"] == 128 and "max_tokens" not in sent
    assert "logprobs" not in sent
    with pytest.raises(ConfigError, match="options.input"):
        make_tier(url, "ok", options={"input": "nope"})
