"""The OpenAI-compatible RouteNLP gateway (`routenlp serve`).

`create_app(config, runtime)` builds the FastAPI app. Every routed request goes through
`Cascade.run` of the runtime's current ServingState (runtime.py), in a worker thread; the
answer is buffered, checked and only then returned or streamed (a tier's answer is never
streamed before it is accepted, so time to first token = the whole cascade). The routing
record travels in the `routenlp` extension field and `X-RouteNLP-*` headers; `usage` is
summed over every tier tried. Each request is logged to the store by the group-commit
writer before the response goes out (logwriter.py).

Errors always use OpenAI's shape `{"error": {...}}`: 400 bad input, 401/403 auth, 404
unknown model, 413 body too large, 429 rate / concurrency / log back-pressure (with
Retry-After), 502 when every eligible tier failed (naming each failure), 504 timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from routenlp.config import EnsembleConfig, load_config
from routenlp.errors import RouteNLPError, TierError
from routenlp.server.logwriter import LogWriter, QueueFull
from routenlp.server.metrics import Metrics
from routenlp.server.openai_schema import ChatCompletionRequest
from routenlp.server.runtime import (
    CALL,
    CallContext,
    Runtime,
    ServingState,
    gateway_request_builder,
)
from routenlp.server.security import BodyLimit, KeyRing, RateLimiter, bearer, key_id
from routenlp.tiers.base import Generation, unsupported_params

log = logging.getLogger("routenlp.gateway")
ROUTED_MODEL = "routenlp"
SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
ENV_CONFIG = "ROUTENLP_GATEWAY_CONFIG"
ENV_ROUTER = "ROUTENLP_GATEWAY_ROUTER"
ENV_THRESHOLDS = "ROUTENLP_GATEWAY_THRESHOLDS"


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    quality: float | None = Field(None, ge=0, le=1)
    verdict: str | None = Field(None, pattern="^(accept|reject)$")
    reference: Any = None
    source: str = Field("api", min_length=1, max_length=64)


class ReloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    router: str | None = None
    thresholds: str | None = None
    policy: str | None = None  # a certified policy JSON; same slot as thresholds


def _retry(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


def _hash_text(text: str) -> str:
    return "[redacted sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16] + "]"


def _failure_message(task: str, steps: list[dict[str, Any]], fallback: str) -> str:
    parts = []
    for s in steps:
        if s.get("error"):
            e = str(s["error"])
            parts.append(e if e.startswith(f"{s['tier']}:") else f"{s['tier']}: {e}")
        elif s.get("skipped_reason"):
            parts.append(f"{s['tier']}: skipped ({s['skipped_reason']})")
        else:
            parts.append(f"{s['tier']}: rejected (u={s.get('u')})")
    tried = "; ".join(parts) or fallback
    return f"every eligible tier failed for task {task!r}: {tried}"


def create_app(config: EnsembleConfig, state: ServingState | Runtime, *,
               store: Any = None) -> FastAPI:
    """The gateway app over `state` (a ServingState, or a Runtime holding one).

    `store`: a routenlp Store (default: opened from `config.store.url` at startup)."""
    runtime = state if isinstance(state, Runtime) else Runtime(state, store=store)
    srv = config.server
    keys = KeyRing.api_keys(srv)
    admin = KeyRing.admin_keys(srv)
    limiter = RateLimiter(srv.rate_limit_per_min)
    metrics = Metrics()
    default_task = srv.default_task or config.task_names[0]
    slots = asyncio.Semaphore(srv.max_concurrency)
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from routenlp.store import Store

        st = store if store is not None else runtime.store
        if st is None:
            st = await run_in_threadpool(
                lambda: Store(config.store.url, sqlite_synchronous=srv.log_sqlite_synchronous))
            holder["own_store"] = st
        runtime.store = st
        writer = LogWriter(st, max_pending=srv.log_queue_size, batch_size=srv.log_batch_size)
        writer.start()
        holder["writer"] = writer
        if not keys.enabled:
            log.warning("auth is OFF: no server.api_keys and no ROUTENLP_API_KEYS; anyone who "
                        "can reach this port can use it")
        current = runtime.state
        if current.missing:
            log.warning("serving without %s: %s", " and ".join(current.missing),
                        "fallback rule " + config.server.fallback + " (see /readyz)")
        try:
            yield
        finally:
            await run_in_threadpool(writer.close)
            if "own_store" in holder:
                holder["own_store"].close()

    app = FastAPI(title="RouteNLP gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.holder = holder

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        metrics.rejected.labels(str(exc.status)).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected gateway error")
        return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    # ------------------------------------------------------------------ auth helpers
    def _auth(request: Request) -> str:
        token = bearer(request.headers.get("authorization"))
        if keys.enabled and not keys.check(token):
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                           "authentication_error", code="invalid_api_key")
        who = key_id(token) if keys.enabled else "anon"
        wait = limiter.take(who)
        if wait > 0:
            raise ApiError(429, f"rate limit of {srv.rate_limit_per_min:g} requests/min "
                           "exceeded for this key", "rate_limit_error",
                           code="rate_limit_exceeded", headers=_retry(wait))
        return who

    def _admin(request: Request) -> None:
        token = bearer(request.headers.get("authorization"))
        if admin.enabled:
            if not admin.check(token):
                raise ApiError(403, "admin endpoints need the admin key", "permission_error")
        elif keys.enabled:
            raise ApiError(403, "admin endpoints are disabled: no server.admin_key / "
                           "ROUTENLP_ADMIN_KEY is set", "permission_error")

    # ------------------------------------------------------------------ plain endpoints
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        st = runtime.state
        breakers = {n: t.breaker.state for n, t in st.tiers.items()}
        unreachable = sorted(n for n, s in breakers.items() if s != "closed")
        writer = holder.get("writer")
        ready = writer is not None and len(unreachable) < len(breakers)
        body = {"ready": ready, **st.describe(), "unreachable_tiers": unreachable,
                "tiers": breakers, "fallback": config.server.fallback,
                "log_pending": writer.pending if writer else None}
        if st.missing:
            body["note"] = (f"no {' and no '.join(st.missing)} loaded: "
                            + ("each task starts at its cheapest serving tier and accepts its "
                               "answer (failures escalate)" if config.server.fallback ==
                               "cheapest" else "every request is served by the task's top tier"))
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prom() -> Response:
        writer = holder.get("writer")
        if writer is not None:
            metrics.log_pending.set(writer.pending)
        for n, t in runtime.state.tiers.items():
            metrics.breaker_open.labels(n).set(0 if t.breaker.state == "closed" else 1)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _auth(request)
        now = int(time.time())
        ids = [ROUTED_MODEL, *config.tier_names]
        return {"object": "list",
                "data": [{"id": i, "object": "model", "created": now, "owned_by": "routenlp"}
                         for i in ids]}

    @app.get("/v1/routenlp/tasks")
    async def tasks(request: Request) -> dict[str, Any]:
        _auth(request)
        return {"default": default_task, "data": [
            {"name": t.name, "kind": t.kind, "metric": t.metric, "tau": t.tau,
             "sla_ms": t.sla_ms, "tiers": [x.name for x in config.tiers_for(t.name)]}
            for t in config.tasks]}

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        _auth(request)
        body = _parse_model(await request.body(), FeedbackBody)
        if (body.quality is None) == (body.verdict is None):
            raise ApiError(400, "give exactly one of 'quality' (a number in [0, 1]) or "
                           "'verdict' ('accept' or 'reject')", param="quality")
        quality = body.quality if body.quality is not None else (
            1.0 if body.verdict == "accept" else 0.0)
        st = runtime.store
        try:
            fid = await run_in_threadpool(st.add_feedback, body.request_id, quality,
                                          body.reference, body.source)
        except RouteNLPError as err:
            status = 404 if "unknown request id" in err.message else 400
            raise ApiError(status, err.message, param="request_id") from None
        rec = await run_in_threadpool(st.get_request, body.request_id)
        updates = 0
        if rec is not None:
            meta = rec.metadata or {}
            record = {"task": rec.task, "ladder": meta.get("ladder"),
                      "steps": [s.model_dump() for s in rec.path]}
            try:
                updates = runtime.state.cascade.feedback(record, quality)
            except RouteNLPError as err:
                log.warning("feedback for %s not applied online: %s", body.request_id, err)
        return {"id": fid, "request_id": body.request_id, "quality": quality,
                "online_updates": updates}

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        _admin(request)
        raw = await request.body()
        body = _parse_model(raw, ReloadBody) if raw.strip() else ReloadBody()
        try:
            if body.policy is not None and body.thresholds is not None:
                raise ApiError(400, "give policy or thresholds, not both", code="bad_request")
            new = await run_in_threadpool(runtime.reload, router=body.router,
                                          thresholds=body.policy or body.thresholds)
        except RouteNLPError as err:
            raise ApiError(409, f"reload refused, still serving the previous artifacts: "
                           f"{err.message}", code="bad_artifact") from None
        return {"reloaded": True, **new.describe()}

    # ------------------------------------------------------------------ chat completions
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        t0 = time.perf_counter()
        who = _auth(request)
        body = _parse_model(await request.body(), ChatCompletionRequest)
        st = runtime.state
        model = body.model or ROUTED_MODEL
        if model != ROUTED_MODEL and model not in config.tier_names:
            raise ApiError(404, f"model {model!r} does not exist; models: "
                           f"{[ROUTED_MODEL, *config.tier_names]}", param="model",
                           code="model_not_found")
        if len(body.messages) > srv.max_messages:
            raise ApiError(400, f"{len(body.messages)} messages exceed the limit of "
                           f"{srv.max_messages}", param="messages")
        max_tokens = body.requested_max_tokens()
        if max_tokens is not None and max_tokens > srv.max_tokens_cap:
            raise ApiError(400, f"max_tokens {max_tokens} exceeds the cap of "
                           f"{srv.max_tokens_cap}", param="max_tokens")
        meta = body.metadata or {}
        task = request.headers.get(srv.task_header) or meta.get("task") or default_task
        if not isinstance(task, str) or task not in config.task_names:
            raise ApiError(400, f"unknown task {task!r}; known tasks: {config.task_names}",
                           param="task", code="unknown_task")
        serving = [t.name for t in config.tiers_for(task)]
        if model != ROUTED_MODEL and model not in serving:
            raise ApiError(400, f"tier {model!r} does not serve task {task!r}; serving tiers: "
                           f"{serving}", param="model")
        params = {k: getattr(body, k, None) for k in SAMPLING}
        params = {k: v for k, v in params.items() if v is not None}
        candidates = [model] if model != ROUTED_MODEL else serving
        for name in candidates:
            bad = unsupported_params(config.tier(name).kind, params)
            if bad:
                raise ApiError(400, f"tier {name!r} ({config.tier(name).kind}) does not support "
                               f"{bad}; drop them, or pin a tier that does (model=<tier>)",
                               param=bad[0], code="unsupported_parameter")
        writer: LogWriter = holder["writer"]
        try:
            writer.reserve()
        except QueueFull as err:
            raise ApiError(429, f"request log is full ({err}); retry shortly", "rate_limit_error",
                           code="log_backpressure", headers=_retry(1)) from None
        if slots.locked():
            writer.release()
            raise ApiError(429, f"server busy: {srv.max_concurrency} requests in flight",
                           "rate_limit_error", code="concurrency_limit", headers=_retry(1))
        rid = str(meta.get("request_id") or "") or uuid.uuid4().hex
        if len(rid) > 64:
            writer.release()
            raise ApiError(400, "metadata.request_id is longer than 64 characters",
                           param="metadata.request_id")
        query = body.last_user_text()
        ctx = CallContext(params=params, max_tokens=max_tokens)
        async with slots:
            record, status, err_msg = await _run(request, st, ctx, task, query, rid, model)
        record.update(id=rid, task=task, query=_hash_text(query) if srv.redact_prompts else query,
                      status=status, error=err_msg)
        record["metadata"] = {"model": model, "key": who, "stream": body.stream,
                              "ladder": record.get("ladder"), "mode": st.mode,
                              "tokens_in": ctx.tokens_in, "tokens_out": ctx.tokens_out}
        try:
            await writer.submit(_store_record(record))
        except RouteNLPError as err:
            if "already logged" in err.message:
                raise ApiError(409, f"metadata.request_id {rid!r} was already used by another "
                               "request", param="metadata.request_id") from None
            raise ApiError(503, f"could not log the request, so it is not acknowledged: "
                           f"{err.message}", "server_error", code="store_error") from None
        seconds = time.perf_counter() - t0
        metrics.observe_result(task, record, status, seconds)
        if status != "ok":
            code = {"timeout": 504, "cancelled": 499, "error": 500}.get(status, 502)
            if status == "failed" and all("circuit open" in (s.get("error") or "") or
                                          s.get("skipped_reason") for s in record["steps"]):
                code = 503
            raise ApiError(code, err_msg or status, "server_error" if code != 499 else
                           "invalid_request_error", code=f"tiers_{status}",
                           headers={"X-RouteNLP-Request-Id": rid})
        return _respond(body, record, ctx, rid, model, seconds)

    async def _run(request: Request, st: ServingState, ctx: CallContext, task: str, query: str,
                   rid: str, model: str) -> tuple[dict[str, Any], str, str | None]:
        """Run the cascade (or the pinned tier) in a thread; watch for disconnect/timeout."""

        def work() -> dict[str, Any]:
            CALL.set(ctx)
            if model == ROUTED_MODEL:
                return st.cascade.run(task, query, id=rid).to_record()
            return _pinned(st, task, query, rid, model)

        job = asyncio.ensure_future(run_in_threadpool(work))
        watcher = asyncio.ensure_future(_watch_disconnect(request, ctx))
        try:
            record = await asyncio.wait_for(asyncio.shield(job), srv.request_timeout_s)
            status, err = "ok", None
        except asyncio.TimeoutError:
            ctx.cancelled.set()
            record = _empty_record(st, task)
            status, err = "timeout", (f"request timed out after {srv.request_timeout_s:g}s "
                                      f"(tiers called: {[c['tier'] for c in ctx.calls]})")
        except TierError as exc:
            steps = list(getattr(exc, "steps", []) or [])
            record = _empty_record(st, task) | {"steps": steps}
            status = "cancelled" if ctx.cancelled.is_set() else "failed"
            err = _failure_message(task, steps, exc.message)
        except RouteNLPError as exc:
            record = _empty_record(st, task)
            status, err = "failed", f"task {task!r}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - a bug, not a tier failure: log it, answer 500
            log.exception("cascade error on request %s", rid)
            record = _empty_record(st, task)
            status, err = "error", f"internal routing error: {type(exc).__name__}: {exc}"
        finally:
            watcher.cancel()
        if status == "ok" and ctx.cancelled.is_set():
            status, err = "cancelled", "client disconnected"
        return record, status, err

    return app


async def _watch_disconnect(request: Request, ctx: CallContext) -> None:
    """Flag the call cancelled when the client goes away (no further tier is called)."""
    try:
        while not ctx.cancelled.is_set():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                ctx.cancelled.set()
                return
    except asyncio.CancelledError:
        return
    except Exception:  # noqa: BLE001 - receive after the body may be unsupported
        return


def _empty_record(st: ServingState, task: str) -> dict[str, Any]:
    return {"tier": None, "steps": [], "total_cost": 0.0, "latency_ms": 0.0, "sla_ms":
            st.config.task(task).sla_ms, "sla_met": False, "escalated": False,
            "ladder": [t.name for t in st.config.tiers_for(task)], "output": None}


_PIN: list[Any] = []


def _pin_builder() -> Any:
    if not _PIN:
        _PIN.append(gateway_request_builder())
    return _PIN[0]


def _pinned(st: ServingState, task: str, query: str, rid: str, model: str) -> dict[str, Any]:
    """A pinned tier: one call, no routing decision and no escalation."""
    tier = st.tiers[model]
    req = _pin_builder()(st.config.task(task), query, rid)  # the same prompt as routed
    t0 = time.perf_counter()
    gen: Generation = tier.generate(req)
    ms = gen.latency_s * 1000 if gen.latency_s else (time.perf_counter() - t0) * 1000
    step = {"tier": model, "u": gen.uncertainty, "threshold": None, "accepted": gen.ok,
            "latency_ms": ms, "cost": gen.cost, "error": gen.error, "skipped_reason": None}
    if not gen.ok:
        err = TierError(f"pinned tier {model!r} failed: {gen.error}")
        err.steps = [step]  # type: ignore[attr-defined]
        raise err
    sla = st.config.task(task).sla_ms
    return {"tier": model, "start_tier": model, "router_tier": None, "steps": [step],
            "tiers_tried": [model], "total_cost": gen.cost, "latency_ms": ms, "sla_ms": sla,
            "sla_met": ms <= sla, "escalated": False, "ladder": [model], "ladder_mode": "pinned",
            "output": gen.text, "quality": None, "pinned": True,
            "_gen_logprobs": (gen.tokens, gen.logprobs)}


def _store_record(record: dict[str, Any]) -> dict[str, Any]:
    """The store's RequestRecord fields from a routing record."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    out["response"] = out.pop("output", None)
    out["accepted"] = record.get("status") == "ok"
    degraded = bool((out.get("meta") or {}).get("degraded") or out.get("degraded"))
    for k in ("tiers_tried", "usage", "quality", "pinned", "meta", "degraded"):
        out.pop(k, None)
    out["router"] = {"start_tier": out.pop("start_tier", None),
                     "router_tier": out.pop("router_tier", None),
                     "p_escalate": out.pop("p_escalate", None)}
    meta = out.setdefault("metadata", {})
    for k in ("ladder_mode", "overhead_ms"):
        if k in out:
            meta[k] = out.pop(k)
    meta["ladder"] = out.pop("ladder", meta.get("ladder"))
    meta["degraded"] = degraded
    return out


def _headers(record: dict[str, Any], rid: str, degraded: bool) -> dict[str, str]:
    tried = [s["tier"] for s in record["steps"] if s.get("skipped_reason") is None]
    return {
        "X-RouteNLP-Request-Id": rid,
        "X-RouteNLP-Task": str(record["task"]),
        "X-RouteNLP-Tier": str(record["tier"]),
        "X-RouteNLP-Tiers-Tried": ",".join(tried),
        "X-RouteNLP-Cost": f"{float(record.get('total_cost') or 0.0):.8f}",
        "X-RouteNLP-Latency-Ms": f"{float(record.get('latency_ms') or 0.0):.2f}",
        "X-RouteNLP-SLA-Met": str(bool(record.get("sla_met"))).lower(),
        "X-RouteNLP-Escalated": str(bool(record.get("escalated"))).lower(),
        "X-RouteNLP-Degraded": str(degraded).lower(),
    }


def _finite(value: Any) -> Any:
    """JSON has no Infinity/NaN: an unbounded threshold (fallback rule) is sent as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _routing_record(record: dict[str, Any], degraded: bool) -> dict[str, Any]:
    tried = [s for s in record["steps"] if s.get("skipped_reason") is None]
    return {
        "request_id": record["id"], "task": record["task"], "tier": record["tier"],
        "tiers_tried": [s["tier"] for s in tried],
        "steps": [{k: _finite(s.get(k)) for k in ("tier", "u", "threshold", "accepted",
                                                    "latency_ms", "cost", "error",
                                                    "skipped_reason")}
                  for s in record["steps"]],
        "start_tier": record.get("start_tier"), "router_tier": record.get("router_tier"),
        "cost": record.get("total_cost"), "latency_ms": record.get("latency_ms"),
        "sla_ms": record.get("sla_ms"), "sla_met": record.get("sla_met"),
        "escalated": record.get("escalated"), "degraded": degraded,
        "mode": record["metadata"].get("mode"),
    }


def _respond(body: ChatCompletionRequest, record: dict[str, Any], ctx: CallContext, rid: str,
             model: str, seconds: float) -> Response:
    degraded = bool((record.get("meta") or {}).get("degraded") or record.get("degraded"))
    usage = {"prompt_tokens": ctx.tokens_in, "completion_tokens": ctx.tokens_out,
             "total_tokens": ctx.tokens_in + ctx.tokens_out}
    ext = _routing_record(record, degraded)
    headers = _headers(record, rid, degraded)
    text = record.get("output") or ""
    cid = "chatcmpl-" + rid[:32]
    created = int(time.time())
    served_model = model if model != ROUTED_MODEL else f"{ROUTED_MODEL}/{record['tier']}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(cid, created, served_model, text, ext, usage if include_usage else None),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    payload = {"id": cid, "object": "chat.completion", "created": created, "model": served_model,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": "stop"}],
               "usage": usage, "routenlp": ext}
    return Response(json.dumps(payload), media_type="application/json", headers=headers)


async def _sse(cid: str, created: int, model: str, text: str, ext: dict[str, Any],
               usage: dict[str, int] | None) -> AsyncIterator[str]:
    """The accepted answer as SSE chunks: role, content pieces, finish (+ routing), usage."""
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk",
                                      "created": created, "model": model, "choices": choices,
                                      **extra}) + "\n\n"

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                  "finish_reason": None}])
    step = 64
    for i in range(0, len(text), step):
        yield chunk([{"index": 0, "delta": {"content": text[i:i + step]}, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], routenlp=ext)
    if usage is not None:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


def _validation_error(errors: list[Any]) -> ApiError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        msg = "request body is not valid JSON"
    return ApiError(400, f"invalid request: {param}: {msg}" if param else
                    f"invalid request: {msg}", param=param)


def _parse_model(raw: bytes, model: type[Any]) -> Any:
    """Parse a JSON body into `model`; any problem is a 400 naming the field."""
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err.errors()) from None
    except (RecursionError, ValueError, TypeError) as err:
        raise ApiError(400, f"invalid request: {type(err).__name__}") from None


def with_limits(app: FastAPI, config: EnsembleConfig) -> Any:
    """The ASGI app uvicorn serves: the body-size limit in front of the gateway."""
    return BodyLimit(app, config.server.max_body_bytes)


def create_app_from_env() -> Any:
    """uvicorn factory for several workers: the config and artifact paths come from the
    ROUTENLP_GATEWAY_* variables that `routenlp serve` sets for its worker processes."""
    config = load_config(os.environ[ENV_CONFIG])
    state = ServingState.load(config, router=os.environ.get(ENV_ROUTER) or None,
                              thresholds=os.environ.get(ENV_THRESHOLDS) or None)
    return with_limits(create_app(config, state), config)
