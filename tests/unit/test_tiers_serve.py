"""The single-tier OpenAI-compatible app (`serve-tier`) with in-process fake tiers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient

from routenlp.config import TierConfig, parse_config
from routenlp.tiers.base import BaseTier, Generation, Request, Usage
from routenlp.server.tier_server import create_tier_app


class FakeLM(BaseTier):
    """Answers 'Hello' as two tokens with log-probs; records what it was asked."""

    def __init__(self, error: str | None = None) -> None:
        super().__init__(TierConfig(name="T2", kind="local", price_in=1, price_out=1,
                                    tasks=["cs_reply", "fin_summ"]))
        self.seen: list[Request] = []
        self.error = error

    def generate(self, request: Request) -> Generation:
        self.seen.append(request)
        if self.error:
            return Generation(text="", error=self.error)
        return Generation(text="Hello", tokens=["Hel", "lo"], logprobs=[-0.1, -0.2],
                          usage=Usage(5, 2), cost=0.007, uncertainty=0.15)


class FakeClassifier(BaseTier):
    def __init__(self) -> None:
        super().__init__(TierConfig(name="T1", kind="classifier", price_in=1, price_out=1,
                                    tasks=["cs_intent"]))

    def generate(self, request: Request) -> Generation:
        probs = {"card_arrival": 0.7, "pin": 0.2, "transfer": 0.1}
        return Generation(text="card_arrival", tokens=["card_arrival"], class_probs=probs,
                          usage=Usage(8, 1), confidence=0.7, uncertainty=0.3)

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        return [self.generate(r) for r in requests]


MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def test_non_stream_with_logprobs_and_task_header() -> None:
    tier = FakeLM()
    client = TestClient(create_tier_app(tier))
    r = client.post("/v1/chat/completions", headers={"X-RouteNLP-Task": "fin_summ"},
                    json={"model": "T2", "messages": MSGS, "logprobs": True, "max_tokens": 9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "T2"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello"}
    assert choice["logprobs"]["content"] == [
        {"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108], "top_logprobs": []},
        {"token": "lo", "logprob": -0.2, "bytes": [108, 111], "top_logprobs": []},
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert body["routenlp"]["task"] == "fin_summ" and body["routenlp"]["uncertainty"] == 0.15
    req = tier.seen[-1]
    assert req.task == "fin_summ" and req.max_tokens == 9 and req.query == "hi there"
    assert req.messages == MSGS and req.prompt == "system: be brief\nuser: hi there"


def test_task_from_metadata_default_and_unknown() -> None:
    tier = FakeLM()
    client = TestClient(create_tier_app(tier))
    one = [{"role": "user", "content": "x"}]
    assert client.post("/v1/chat/completions",
                       json={"messages": one, "metadata": {"task": "fin_summ"}}).status_code == 200
    assert tier.seen[-1].task == "fin_summ" and tier.seen[-1].prompt == "x"
    assert client.post("/v1/chat/completions", json={"messages": one}).status_code == 200
    assert tier.seen[-1].task == "cs_reply"  # the tier's first task
    r = client.post("/v1/chat/completions", headers={"X-RouteNLP-Task": "nope"},
                    json={"messages": one})
    assert r.status_code == 400 and r.json()["error"]["param"] == "task"


def test_task_config_supplies_max_tokens() -> None:
    ens = parse_config({
        "tiers": [{"name": "T2", "kind": "replay", "price_in": 1, "price_out": 1}],
        "tasks": [{"name": "cs_reply", "max_tokens": 33}, {"name": "fin_summ"}],
    })
    tier = FakeLM()
    client = TestClient(create_tier_app(tier, ens.task, tasks=["cs_reply", "fin_summ"]))
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert tier.seen[-1].max_tokens == 33


def test_logprobs_not_requested_means_null() -> None:
    client = TestClient(create_tier_app(FakeLM()))
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.json()["choices"][0]["logprobs"] is None


def test_classifier_probs_in_extension_and_label_logprob() -> None:
    client = TestClient(create_tier_app(FakeClassifier()))
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "where is my card"}],
        "logprobs": True, "top_logprobs": 2,
    })
    body = r.json()
    entry = body["choices"][0]["logprobs"]["content"]
    assert len(entry) == 1 and entry[0]["token"] == "card_arrival"
    assert entry[0]["logprob"] == pytest.approx(math.log(0.7))
    assert [t["token"] for t in entry[0]["top_logprobs"]] == ["card_arrival", "pin"]
    assert body["routenlp"]["class_probs"]["pin"] == 0.2
    assert body["choices"][0]["finish_reason"] == "stop"


def sse_events(text: str) -> list[str]:
    assert text.endswith("data: [DONE]\n\n")
    return [block[len("data: "):] for block in text.strip().split("\n\n")]


def test_stream_chunks_carry_logprobs_and_usage() -> None:
    client = TestClient(create_tier_app(FakeLM()))
    with client.stream("POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "stream": True, "logprobs": True,
        "stream_options": {"include_usage": True},
    }) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "Hello"
    assert [c["choices"][0]["logprobs"]["content"][0]["logprob"] for c in content] == [-0.1, -0.2]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7


def test_errors_use_openai_shape() -> None:
    client = TestClient(create_tier_app(FakeLM(error="T2: model crashed")))
    ok_msgs = [{"role": "user", "content": "x"}]
    r = client.post("/v1/chat/completions", json={"messages": ok_msgs})
    assert r.status_code == 502
    assert r.json()["error"] == {"message": "T2: model crashed", "type": "tier_error",
                                 "param": None, "code": "tier_error"}
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/v1/chat/completions", json={"messages": ok_msgs, "n": 3})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/chat/completions", content=b"{bad json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and "messages" in r.json()["error"]["param"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_models_and_health() -> None:
    client = TestClient(create_tier_app(FakeClassifier()))
    assert client.get("/v1/models").json()["data"][0]["id"] == "T1"
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "tier": "T1", "kind": "classifier", "tasks": ["cs_intent"]}
