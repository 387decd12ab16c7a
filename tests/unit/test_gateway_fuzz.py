"""Hostile and malformed requests against the gateway (hypothesis): every one gets a 4xx
in OpenAI's error shape (or a 200 when it happens to be valid), never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_gateway_app import Env
from routenlp.server.gateway import with_limits

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot", ""]) | JSON},
    optional={"content": st.text(max_size=50) | JSON, "name": JSON},
)
BODY = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["routenlp", "T1", "T2", "gpt-4", ""]) | JSON,
    "messages": st.lists(MESSAGE, max_size=5) | JSON,
    "max_tokens": st.integers(-5, 10**7) | JSON,
    "temperature": st.floats(-1, 3) | JSON,
    "stream": st.booleans() | JSON,
    "metadata": st.dictionaries(st.sampled_from(["task", "request_id", "x"]),
                                st.sampled_from(["chat", "faq", "zzz", "a" * 80]) | JSON,
                                max_size=3) | JSON,
    "n": st.integers(-1, 3),
    "stop": JSON,
    "unknown_field": JSON,
})
HEADERS = st.dictionaries(
    st.sampled_from(["X-RouteNLP-Task", "Authorization", "Content-Type", "X-Forwarded-For"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    max_size=3,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("fuzz")
    e = Env(tmp, max_body_bytes=4096)
    with TestClient(with_limits(e.app, e.config)) as c:
        yield c
    e.store.close()


def _check(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["message"] and err["type"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, headers=HEADERS)
def test_structured_garbage_is_4xx(client: TestClient, body: dict[str, Any],
                                   headers: dict[str, str]) -> None:
    _check(client.post("/v1/chat/completions", content=json.dumps(body).encode(),
                       headers=headers))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       path=st.sampled_from(["/v1/chat/completions", "/v1/feedback", "/admin/reload"]))
def test_raw_bytes_are_4xx(client: TestClient, raw: bytes, path: str) -> None:
    _check(client.post(path, content=raw))


def test_huge_and_deep_bodies(client: TestClient) -> None:
    _check(client.post("/v1/chat/completions", content=b"[" * 3000 + b"]" * 3000))
    r = client.post("/v1/chat/completions", content=b"x" * 50_000)
    assert r.status_code == 413
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user",
                                                                 "content": "hi"}] * 300})
    assert r.status_code in (400, 413)
    _check(client.post("/v1/chat/completions", headers={"Content-Length": "abc"}, content=b"{}"))
