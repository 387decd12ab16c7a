"""A small, fast OpenAI-compatible upstream for benchmarks and tests
(`python -m routenlp.server.upstream --port P`).

Raw ASGI on uvicorn (no framework), so it adds as little as possible to what is measured.
It answers every chat completion with a fixed text naming itself, per-token log-probs of
a chosen value (so a test controls the uncertainty the cascade sees), and real-looking
usage. `--fail` makes it misbehave the ways a tier can: HTTP 500, malformed JSON, or a
hang past the client's timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_app(name: str = "upstream", *, logprob: float = -0.01, delay_ms: float = 0.0,
             fail: str = "none") -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    tokens = [name, " says", " ok"]
    text = "".join(tokens)
    counter = {"n": 0}

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path = scope["path"]
        if path.endswith("/models"):
            await _send(send, 200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            return
        if not path.endswith("/chat/completions"):
            await _send(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        counter["n"] += 1
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000.0)
        if fail == "500":
            await _send(send, 500, {"error": {"message": "upstream exploded", "type": "server"}})
            return
        if fail == "malformed":
            await _raw(send, 200, b"{not json")
            return
        if fail == "hang":
            await asyncio.sleep(3600)
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            await _send(send, 400, {"error": {"message": "bad json", "type": "invalid_request"}})
            return
        prompt_chars = sum(len(str(m.get("content") or "")) for m in req.get("messages") or [])
        lp = req.get("logprobs")
        payload = {
            "id": f"up-{counter['n']}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model") or name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop",
                         "logprobs": {"content": [{"token": t, "logprob": logprob, "bytes": None,
                                                   "top_logprobs": []} for t in tokens]}
                         if lp else None}],
            "usage": {"prompt_tokens": max(1, prompt_chars // 4), "completion_tokens": len(tokens),
                      "total_tokens": max(1, prompt_chars // 4) + len(tokens)},
            "echo_params": {k: req[k] for k in ("temperature", "top_p", "stop", "seed") if k in req},
        }
        await _send(send, 200, payload)

    return app


async def _raw(send: Send, status: int, data: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _send(send: Send, status: int, obj: Any) -> None:
    await _raw(send, status, json.dumps(obj).encode())


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default="upstream")
    ap.add_argument("--logprob", type=float, default=-0.01)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--fail", choices=["none", "500", "malformed", "hang"], default="none")
    a = ap.parse_args(argv)
    app = make_app(a.name, logprob=a.logprob, delay_ms=a.delay_ms, fail=a.fail)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", loop="uvloop",
                http="httptools", backlog=2048, access_log=False, timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
