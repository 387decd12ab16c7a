"""Auth and limits shared by the gateway and `serve-tier`.

API keys come from `server.api_keys` and `ROUTENLP_API_KEYS` (comma-separated); only their
SHA-256 digests are kept, and a presented key is compared against every digest with
`hmac.compare_digest` (constant time, no early exit on the first match). No key configured
= auth off (the server warns at start). The admin key (`server.admin_key` or
`ROUTENLP_ADMIN_KEY`) guards /admin/*. Limits: request body size (checked on the raw ASGI
stream, before anything is parsed), a per-key token-bucket rate limit and a concurrency
limit that answers 429 instead of queueing without bound.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from routenlp.config import ServerConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str | None) -> str:
    """A short, non-reversible name for a key, safe to log ("anon" without one)."""
    return "anon" if not key else "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyRing:
    """Hashed bearer keys; `check` compares in constant time against all of them."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in dict.fromkeys(k.strip() for k in keys) if k]

    @classmethod
    def api_keys(cls, server: ServerConfig) -> KeyRing:
        env = [k for k in os.environ.get("ROUTENLP_API_KEYS", "").split(",") if k.strip()]
        return cls(list(server.api_keys) + env)

    @classmethod
    def admin_keys(cls, server: ServerConfig) -> KeyRing:
        env = os.environ.get("ROUTENLP_ADMIN_KEY", "").strip()
        return cls([k for k in (server.admin_key, env) if k])

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str | None) -> bool:
        if presented is None:
            return False
        got = _digest(presented)
        ok = False
        for d in self._digests:
            ok |= hmac.compare_digest(got, d)
        return ok


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class RateLimiter:
    """Token bucket per key: `per_min` requests a minute, bursts up to the same number."""

    def __init__(self, per_min: float | None, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.per_min = per_min
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0.0 if the request may go, else the seconds to wait before the next one."""
        if self.per_min is None:
            return 0.0
        rate = self.per_min / 60.0
        cap = max(1.0, self.per_min)
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (cap, now))
            tokens = min(cap, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None
               ) -> bytes:
    """OpenAI's error shape as JSON bytes."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes` (by Content-Length or by counting
    the stream), before the app reads or parses any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(send, 400, "invalid Content-Length header", "content-length")
                    return
                if declared > self.max_bytes:
                    await _reply(send, 413, self._too_big(declared), "body")
                    return
        seen = 0
        too_big = False

        async def counted() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _reply(send, 413, self._too_big(seen), "body")

    def _too_big(self, n: int) -> str:
        return f"request body of {n} bytes exceeds the limit of {self.max_bytes} bytes"


class _BodyTooLarge(Exception):
    pass


async def _reply(send: Send, status: int, message: str, param: str | None) -> None:
    body = error_body(message, "invalid_request_error", param)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
