"""The `openai_compat` tier: any server that speaks the OpenAI chat-completions API.

vLLM, Ollama, llama.cpp's server, TGI, OpenAI itself and `routenlp serve-tier` all answer
the same request, but differ in what they send back: some omit `usage`, some reject or
ignore `logprobs`, some return `content: null`. This tier asks for per-token log-probs
(the cascade's uncertainty signal), falls back once (and for good) when a server rejects
them, and turns every failure into a `Generation` with `error` set so the cascade can
escalate instead of crashing.

Tier `options`: `logprobs` (default true), `extra_body` (extra JSON fields for the
server), `max_tokens_param` (`max_completion_tokens` for newer OpenAI models), `input`
(`query` sends the raw query instead of the rendered prompt, for a remote classifier).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from openai import OpenAI

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError
from routenlp.tiers.base import BaseTier, Generation, Request, Usage, register_tier

TASK_HEADER = "X-RouteNLP-Task"
_MAX_REASON = 300


def env_prefix(tier_name: str) -> str:
    """`T4` -> `ROUTENLP_T4`: the variables the example configs read endpoints from."""
    return "ROUTENLP_" + re.sub(r"[^A-Za-z0-9]+", "_", tier_name).upper().strip("_")


def rough_token_count(text: str) -> int:
    """~4 characters per token: the usage fallback for servers that report none."""
    return max(1, len(text) // 4) if text else 0


def _get(obj: Any, key: str) -> Any:
    """Attribute or mapping access: responses arrive as pydantic models or plain dicts."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    value = getattr(obj, key, None)
    if value is None:
        extra = getattr(obj, "model_extra", None)
        if extra:
            value = extra.get(key)
    return value


def parse_logprobs(logprobs: Any) -> tuple[list[str], list[float] | None]:
    """choices[0].logprobs -> (tokens, logprobs); logprobs is None when absent or unusable.

    A missing or non-numeric logprob on any token makes the whole sequence unusable (a
    partial sequence would understate the uncertainty), but tokens are still kept.
    """
    content = _get(logprobs, "content")
    if not content:
        return [], None
    tokens: list[str] = []
    values: list[float] = []
    complete = True
    for entry in content:
        token = _get(entry, "token")
        lp = _get(entry, "logprob")
        tokens.append("" if token is None else str(token))
        try:
            value = float(lp)
        except (TypeError, ValueError):
            complete = False
            continue
        if math.isnan(value):
            complete = False
            continue
        values.append(min(0.0, value))
    return tokens, (values if complete else None)


def _reason(err: BaseException) -> str:
    """A one-line reason from an API error: the server's message, trimmed."""
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    body = getattr(err, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            message = str(inner["message"])
        elif isinstance(inner, str):
            message = inner
    message = " ".join(str(message).split())
    return message if len(message) <= _MAX_REASON else message[:_MAX_REASON] + "..."


def _mentions_logprobs(err: openai.APIStatusError) -> bool:
    text = f"{_reason(err)} {getattr(err, 'body', '')}".lower()
    return "logprob" in text


class OpenAICompatTier(BaseTier):
    """A tier backed by an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: TierConfig) -> None:
        super().__init__(config)
        prefix = env_prefix(config.name)
        for field, var in (("base_url", "BASE_URL"), ("model", "MODEL")):
            if not getattr(config, field):
                raise ConfigError(
                    f"tier {config.name!r} (openai_compat): {field} is not set",
                    hint=f"set `{field}:` in the tier config, e.g. {field}: ${{{prefix}_{var}}}, "
                    f"and export {prefix}_{var}"
                    + ("=http://localhost:8000/v1" if field == "base_url" else "=<model id>"),
                )
        opts = config.options
        self._input = str(opts.get("input", "prompt"))
        self._max_tokens_param = str(opts.get("max_tokens_param", "max_tokens"))
        for key, value, allowed in (
            ("input", self._input, ("prompt", "query")),
            ("max_tokens_param", self._max_tokens_param, ("max_tokens", "max_completion_tokens")),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"tier {config.name!r}: options.{key} must be one of {list(allowed)}, "
                    f"not {value!r}"
                )
        self._want_logprobs = bool(opts.get("logprobs", True))
        self._logprobs_ok = True  # flips to False (for good) once a server rejects them
        self._lock = threading.Lock()
        self._extra_body: dict[str, Any] = dict(opts.get("extra_body") or {})
        self.base_url = str(config.base_url)
        self.model = str(config.model)
        self._client = OpenAI(
            base_url=self.base_url,
            api_key=config.api_key or "none",
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    @property
    def logprobs_supported(self) -> bool:
        """False once the server has rejected `logprobs` (then none are requested)."""
        return self._want_logprobs and self._logprobs_ok

    def _messages(self, request: Request) -> list[dict[str, Any]]:
        """Chat messages as given, else the prompt as one user message; with
        `options.input: query` the raw query is sent instead (for a remote classifier tier,
        whose head was trained on raw inputs, not on rendered prompts)."""
        if self._input == "query" and request.query:
            return [{"role": "user", "content": request.query}]
        if request.messages:
            return list(request.messages)
        return [{"role": "user", "content": request.prompt}]

    def _fail(self, reason: str, started: float) -> Generation:
        return Generation(
            text="", error=f"{self.name}: {reason}", latency_s=time.perf_counter() - started
        )

    def _call(self, request: Request, messages: list[dict[str, Any]], logprobs: bool) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            self._max_tokens_param: request.max_tokens or self.config.max_tokens,
            "temperature": 0,
            "extra_headers": {TASK_HEADER: request.task},
        }
        if request.params:  # client sampling parameters (the gateway checked them)
            kwargs.update({k: v for k, v in request.params.items() if v is not None})
        if logprobs:
            kwargs["logprobs"] = True
        if self._extra_body:
            kwargs["extra_body"] = self._extra_body
        return self._client.chat.completions.create(**kwargs)

    def generate(self, request: Request) -> Generation:
        """One chat completion; never raises for endpoint failures."""
        started = time.perf_counter()
        messages = self._messages(request)
        use_logprobs = self.logprobs_supported
        try:
            try:
                response = self._call(request, messages, use_logprobs)
            except openai.APIStatusError as err:
                rejected = err.status_code in (400, 422) and _mentions_logprobs(err)
                if not (use_logprobs and rejected):
                    raise
                with self._lock:
                    self._logprobs_ok = False
                response = self._call(request, messages, False)
        except openai.APITimeoutError:
            return self._fail(
                f"timed out after {self.config.timeout_s:g}s waiting for {self.base_url}", started
            )
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            return self._fail(
                f"cannot connect to {self.base_url} ({type(cause).__name__}: {_reason(cause)})",
                started,
            )
        except openai.APIStatusError as err:
            return self._fail(
                f"HTTP {err.status_code} from {self.base_url}: {_reason(err)}", started
            )
        except openai.APIResponseValidationError as err:
            return self._fail(f"malformed response from {self.base_url}: {_reason(err)}", started)
        except ValueError as err:  # JSONDecodeError: a body that is not JSON
            return self._fail(
                f"malformed response from {self.base_url}: not valid JSON ({_reason(err)})",
                started,
            )
        except Exception as err:  # noqa: BLE001 - any client failure must become an error
            return self._fail(f"request failed: {type(err).__name__}: {_reason(err)}", started)
        latency = time.perf_counter() - started
        return self._parse(response, request, messages, latency)

    def _parse(
        self, response: Any, request: Request, messages: list[dict[str, Any]], latency: float
    ) -> Generation:
        if isinstance(response, (str, bytes)) or _get(response, "choices") is None:
            return Generation(
                text="",
                error=f"{self.name}: malformed response from {self.base_url}: no 'choices' "
                "field (is base_url the API root, e.g. http://host:8000/v1?)",
                latency_s=latency,
            )
        choices = _get(response, "choices")
        if not choices:
            return Generation(
                text="",
                error=f"{self.name}: empty 'choices' in the response from {self.base_url}",
                latency_s=latency,
            )
        choice = choices[0]
        message = _get(choice, "message")
        content = _get(message, "content")
        text = content if isinstance(content, str) else ""
        tokens, logprobs = parse_logprobs(_get(choice, "logprobs"))
        meta: dict[str, Any] = {"finish_reason": _get(choice, "finish_reason")}
        usage = _get(response, "usage")
        tokens_in = _get(usage, "prompt_tokens")
        tokens_out = _get(usage, "completion_tokens")
        if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
            prompt_text = "\n".join(str(m.get("content") or "") for m in messages)
            tokens_in = tokens_in if isinstance(tokens_in, int) else rough_token_count(prompt_text)
            if not isinstance(tokens_out, int):
                tokens_out = len(tokens) if tokens else rough_token_count(text)
            meta["estimated_usage"] = True
        if not self._logprobs_ok:
            meta["logprobs_unsupported"] = True
        gen = Generation(
            text=text,
            tokens=tokens,
            logprobs=logprobs,
            usage=Usage(tokens_in=tokens_in, tokens_out=tokens_out),
            latency_s=latency,
            meta=meta,
        )
        extension = _get(response, "routenlp")  # from `routenlp serve-tier`: class probs etc.
        if isinstance(extension, Mapping):
            probs = extension.get("class_probs")
            if isinstance(probs, Mapping) and probs:
                gen.class_probs = {str(k): float(v) for k, v in probs.items()}
            for key in ("uncertainty", "confidence"):
                if isinstance(extension.get(key), (int, float)):
                    setattr(gen, key, float(extension[key]))
        if gen.uncertainty is None and logprobs is not None:
            gen.uncertainty = gen.token_uncertainty()
        return self.price(gen)

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        """Concurrent requests (at most `batch_size` in flight); order is preserved."""
        if len(requests) <= 1:
            return [self.generate(r) for r in requests]
        workers = min(self.config.batch_size, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.name) as pool:
            return list(pool.map(self.generate, requests))

    def close(self) -> None:
        self._client.close()


@register_tier("openai_compat")
def _build(config: TierConfig, ensemble: EnsembleConfig) -> OpenAICompatTier:
    return OpenAICompatTier(config)
