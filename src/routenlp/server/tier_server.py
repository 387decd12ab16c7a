"""Serve ONE tier over the OpenAI chat-completions API (`routenlp serve-tier`).

This puts a local tier (e.g. the classifier or a local LM) behind the same protocol as a
remote endpoint, so another RouteNLP process (or any OpenAI client) can use it through an
`openai_compat` tier: that is how tiers are split across machines. The answer carries
per-token log-probs when asked; classifier tiers answer with their label as one token
(log-prob = log p(label)) and put all class probabilities in the `routenlp` extension.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator, Sequence

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from routenlp.config import ServerConfig, TaskConfig
from routenlp.errors import RouteNLPError
from routenlp.server.openai_schema import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
    Delta,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    RouteNLPExtension,
    TokenLogprob,
    TopLogprob,
    completion_id,
    now,
)
from routenlp.server.security import KeyRing, RateLimiter, bearer, key_id
from routenlp.tiers.base import Generation, Request, Tier, unsupported_params

TASK_HEADER = "X-RouteNLP-Task"
REQUEST_ID_HEADER = "X-RouteNLP-Request-Id"
TaskLookup = Callable[[str], TaskConfig]


def error_response(status: int, message: str, type_: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump())


def _token_logprob(token: str, logprob: float, top: list[TopLogprob] | None = None
                   ) -> TokenLogprob:
    return TokenLogprob(
        token=token, logprob=logprob, bytes=list(token.encode("utf-8")), top_logprobs=top or []
    )


def logprob_entries(gen: Generation, top_k: int = 0) -> list[TokenLogprob] | None:
    """OpenAI `logprobs.content` for a generation; None when the tier has no log-probs.

    A classifier answer is one token, its label, with log p(label); with `top_logprobs`
    the alternatives are the next most probable labels.
    """
    if gen.logprobs is not None and len(gen.logprobs) == len(gen.tokens):
        return [_token_logprob(t, float(lp)) for t, lp in zip(gen.tokens, gen.logprobs)]
    if gen.class_probs:
        ranked = sorted(gen.class_probs.items(), key=lambda kv: kv[1], reverse=True)
        label = gen.text
        p = gen.class_probs.get(label, ranked[0][1])
        top = [
            TopLogprob(token=lab, logprob=math.log(max(q, 1e-300)), bytes=list(lab.encode()))
            for lab, q in ranked[:top_k]
        ]
        return [_token_logprob(label, math.log(max(p, 1e-300)), top)]
    return None


def _finish_reason(gen: Generation, max_tokens: int | None) -> str:
    reason = gen.meta.get("finish_reason")
    if reason in ("stop", "length"):
        return str(reason)
    if max_tokens is not None and gen.usage.tokens_out >= max_tokens and not gen.class_probs:
        return "length"
    return "stop"


def create_tier_app(
    tier: Tier,
    task_config_lookup: TaskLookup | None = None,
    *,
    tasks: Sequence[str] | None = None,
    server: ServerConfig | None = None,
) -> FastAPI:
    """A FastAPI app serving `tier` at /v1/chat/completions, /v1/models and /healthz.

    `server` applies the gateway's auth and limits (bearer keys, message count, max_tokens
    cap, per-key rate limit, concurrency limit, request timeout; the body-size limit is
    the `security.BodyLimit` middleware `serve-tier` puts in front). Sampling parameters
    the tier cannot honour and a `model` other than the tier are refused (400 / 404).

    `tasks`: the task names accepted (the first is the default when a request names
    none); defaults to the tier's configured task list. `task_config_lookup` supplies a
    task's config (its `max_tokens` default); unknown tasks are rejected with 400.
    """
    served = list(tasks) if tasks is not None else (
        list(tier.config.tasks) if tier.config.tasks != "all" else []
    )
    default_task = served[0] if served else None
    app = FastAPI(title=f"RouteNLP tier {tier.name}", docs_url=None, redoc_url=None)
    app.state.tier = tier
    srv = server or ServerConfig()
    keys = KeyRing.api_keys(srv)
    limiter = RateLimiter(srv.rate_limit_per_min)
    slots = asyncio.Semaphore(srv.max_concurrency)
    model_names = {tier.name, *([tier.config.model] if tier.config.model else [])}

    def _guard(http: HTTPRequest) -> JSONResponse | None:
        token = bearer(http.headers.get("authorization"))
        if keys.enabled and not keys.check(token):
            return error_response(401, "invalid or missing API key (send Authorization: "
                                  "Bearer <key>)", "authentication_error", code="invalid_api_key")
        wait = limiter.take(key_id(token) if keys.enabled else "anon")
        if wait > 0:
            resp = error_response(429, f"rate limit of {srv.rate_limit_per_min:g} requests/min "
                                  "exceeded for this key", "rate_limit_error")
            resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
            return resp
        return None

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        message = f"invalid request: {param}: {msg}" if param else f"invalid request: {msg}"
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "tier": tier.name, "kind": tier.config.kind, "tasks": served}

    @app.get("/v1/models", response_model=None)
    async def models(http: HTTPRequest) -> ModelList | JSONResponse:
        refused = _guard(http)
        if refused is not None:
            return refused
        return ModelList(data=[ModelCard(id=tier.name)])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, http: HTTPRequest
                   ) -> JSONResponse | StreamingResponse:
        refused = _guard(http)
        if refused is not None:
            return refused
        if body.model is not None and body.model not in model_names:
            return error_response(404, f"model {body.model!r} does not exist; models: "
                                  f"{sorted(model_names)}", "invalid_request_error", "model",
                                  "model_not_found")
        if len(body.messages) > srv.max_messages:
            return error_response(400, f"{len(body.messages)} messages exceed the limit of "
                                  f"{srv.max_messages}", "invalid_request_error", "messages")
        asked = body.requested_max_tokens()
        if asked is not None and asked > srv.max_tokens_cap:
            return error_response(400, f"max_tokens {asked} exceeds the cap of "
                                  f"{srv.max_tokens_cap}", "invalid_request_error", "max_tokens")
        params = {k: getattr(body, k) for k in ("temperature", "top_p", "stop", "seed")
                  if getattr(body, k) is not None}
        bad = unsupported_params(tier.config.kind, params)
        if bad:
            return error_response(400, f"tier {tier.name!r} ({tier.config.kind}) does not "
                                  f"support {bad}", "invalid_request_error", bad[0],
                                  "unsupported_parameter")
        if slots.locked():
            resp = error_response(429, f"server busy: {srv.max_concurrency} requests in flight",
                                  "rate_limit_error")
            resp.headers["Retry-After"] = "1"
            return resp
        meta = body.metadata or {}
        task = http.headers.get(TASK_HEADER) or meta.get("task") or default_task
        if not task:
            return error_response(
                400, f"no task given: send the {TASK_HEADER} header or metadata.task",
                "invalid_request_error", "task",
            )
        task = str(task)
        if served and task not in served:
            return error_response(
                400, f"tier {tier.name} does not serve task {task!r}; it serves {served}",
                "invalid_request_error", "task",
            )
        task_cfg: TaskConfig | None = None
        if task_config_lookup is not None:
            try:
                task_cfg = task_config_lookup(task)
            except RouteNLPError as err:
                return error_response(400, err.message, "invalid_request_error", "task")
        max_tokens = body.requested_max_tokens() or (task_cfg.max_tokens if task_cfg else None)
        request_id = http.headers.get(REQUEST_ID_HEADER) or meta.get("request_id")
        req = Request(
            task=task,
            prompt=body.flattened_prompt(),
            query=body.last_user_text(),
            messages=[{"role": m.role, "content": m.text()} for m in body.messages],
            max_tokens=max_tokens,
            id=None if request_id is None else str(request_id),
        )
        req.params = params
        if await http.is_disconnected():
            return error_response(499, "client disconnected before generation started",
                                  "invalid_request_error")
        async with slots:
            try:
                gen = await asyncio.wait_for(run_in_threadpool(tier.generate, req),
                                             srv.request_timeout_s)
            except asyncio.TimeoutError:
                return error_response(504, f"generation timed out after "
                                      f"{srv.request_timeout_s:g}s", "server_error")
        if gen.error is not None:
            return error_response(502, gen.error, "tier_error", code="tier_error")
        model = tier.name
        extension = RouteNLPExtension(
            tier=tier.name, task=task, class_probs=gen.class_probs, uncertainty=gen.uncertainty,
            confidence=gen.confidence, cost=gen.cost, latency_s=gen.latency_s,
        )
        usage = CompletionUsage(
            prompt_tokens=gen.usage.tokens_in,
            completion_tokens=gen.usage.tokens_out,
            total_tokens=gen.usage.tokens_in + gen.usage.tokens_out,
        )
        entries = logprob_entries(gen, body.top_logprobs or 0) if body.logprobs else None
        finish = _finish_reason(gen, max_tokens)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(gen, model, entries, finish, extension, usage if include_usage else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        response = ChatCompletionResponse(
            model=model,
            choices=[
                Choice(
                    message=AssistantMessage(content=gen.text),
                    logprobs=ChoiceLogprobs(content=entries) if entries is not None else None,
                    finish_reason=finish,  # type: ignore[arg-type]
                )
            ],
            usage=usage,
            routenlp=extension,
        )
        return JSONResponse(response.model_dump(mode="json"))

    return app


def _sse(chunk: ChatCompletionChunk) -> str:
    return f"data: {json.dumps(chunk.model_dump(mode='json', exclude_none=True))}\n\n"


def _pieces(gen: Generation, entries: list[TokenLogprob] | None
            ) -> list[tuple[str, list[TokenLogprob] | None]]:
    """Split the answer into stream deltas: one per token when the tokens spell the text
    exactly (each delta then carries its own log-prob), else the whole text at once."""
    if gen.tokens and "".join(gen.tokens) == gen.text:
        if entries is not None and len(entries) == len(gen.tokens):
            return [(t, [e]) for t, e in zip(gen.tokens, entries)]
        return [(t, None) for t in gen.tokens]
    return [(gen.text, entries)]


def _stream(gen: Generation, model: str, entries: list[TokenLogprob] | None, finish: str,
            extension: RouteNLPExtension, usage: CompletionUsage | None) -> Iterator[str]:
    """SSE chunks: role, then content deltas (with log-probs), then finish (+ usage), [DONE]."""
    cid, created = completion_id(), now()

    def chunk(choices: list[ChunkChoice], **extra: object) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=cid, created=created, model=model, choices=choices,
                                   **extra)  # type: ignore[arg-type]

    yield _sse(chunk([ChunkChoice(delta=Delta(role="assistant", content=""))]))
    for text, lps in _pieces(gen, entries):
        logprobs = ChoiceLogprobs(content=lps) if lps is not None else None
        yield _sse(chunk([ChunkChoice(delta=Delta(content=text), logprobs=logprobs)]))
    yield _sse(chunk([ChunkChoice(delta=Delta(), finish_reason=finish)],  # type: ignore[arg-type]
                     routenlp=extension))
    if usage is not None:
        yield _sse(chunk([], usage=usage))
    yield "data: [DONE]\n\n"
