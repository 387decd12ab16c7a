"""`routenlp bench tiers`: decode throughput of every local tier, single and batched.

For each `local` tier: load (pull/convert if needed), warm up, then time `n` requests one
at a time (`single_tok_s`) and the same `n` requests through `generate_batch` in batches of
the tier's `batch_size` (`batched_tok_s`). Tokens/s = generated tokens / wall time,
prefill included. Each request is forced to generate `max_tokens` tokens (minimum length)
so numbers compare across models and engines instead of depending on where each model
happens to stop. With `baseline=True` the same prompts run through transformers fp32
(KV cache, batched `generate`) on the tier's HF weights, for comparison.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError
from routenlp.tiers.base import Request

BENCH_TIMEOUT_S = 3600.0

# Varied prompts asking for open-ended text, so every request can run to max_tokens.
BENCH_QUERIES = (
    "Explain to a customer why their card payment was declined and what they can do next.",
    "Summarise the quarterly results: revenue rose 5% to $3.2bn on cloud demand, margins fell.",
    "Write a polite reply to a customer whose parcel has been delayed by a week.",
    "List the main risks in a contract clause that allows termination without notice.",
    "Describe how interest rates affect the price of government bonds.",
    "Give three tips for keeping a small business's cash flow healthy.",
    "What should a tenant check before signing a residential lease?",
    "Explain the difference between a debit card and a credit card.",
)


def bench_requests(tier: TierConfig, n: int, max_tokens: int) -> list[Request]:
    """`n` requests for a tier, formatted for its prompt style (chat or few-shot)."""
    out = []
    for i in range(n):
        q = BENCH_QUERIES[i % len(BENCH_QUERIES)]
        if i >= len(BENCH_QUERIES):
            q = f"{q} (case {i // len(BENCH_QUERIES) + 1})"
        prompt = f"Input: {q}\nOutput:" if tier.chat_format == "completion" else q
        out.append(
            Request(
                task="bench",
                prompt=prompt,
                query=q,
                messages=[{"role": "user", "content": q}],
                max_tokens=max_tokens,
                id=f"bench-{i}",
            )
        )
    return out


def _tok_s(gens: Sequence[Any], seconds: float) -> tuple[float, int]:
    toks = sum(g.usage.tokens_out for g in gens)
    return (toks / seconds if seconds > 0 else 0.0), toks


def bench_local_tier(
    tier_cfg: TierConfig,
    ensemble: EnsembleConfig,
    *,
    n: int = 8,
    max_tokens: int = 64,
    baseline: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Single-stream and batched tokens/s of one local tier (plus an optional baseline)."""
    from routenlp.tiers.hf_local import LocalTier

    # A throughput run must not be cut by the serving timeout (slow baselines, busy CPUs).
    tier_cfg = tier_cfg.model_copy(update={"timeout_s": max(tier_cfg.timeout_s, BENCH_TIMEOUT_S)})
    tier = LocalTier(tier_cfg, ensemble)
    t0 = time.perf_counter()
    tier.load(progress=progress)
    load_s = time.perf_counter() - t0
    reqs = bench_requests(tier_cfg, n, max_tokens)
    warm = tier.generate_batch(reqs[:1], min_tokens=4)
    if warm[0].error:
        raise ConfigError(f"tier {tier_cfg.name!r} failed to generate: {warm[0].error}")

    t0 = time.perf_counter()
    singles = [tier.generate_batch([r], min_tokens=max_tokens)[0] for r in reqs]
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = tier.generate_batch(reqs, min_tokens=max_tokens)
    batched_s = time.perf_counter() - t0
    errors = [g.error for g in singles + batched if g.error]
    single_tok_s, single_tokens = _tok_s(singles, single_s)
    batched_tok_s, batched_tokens = _tok_s(batched, batched_s)
    engine = tier._engine
    out: dict[str, Any] = {
        "single_tok_s": round(single_tok_s, 2),
        "batched_tok_s": round(batched_tok_s, 2),
        "engine": engine.name if engine else tier.engine_name,
        "model": tier_cfg.model,
        "adapter": tier_cfg.adapter,
        "chat_format": tier.chat_format,
        "batch_size": tier_cfg.batch_size,
        "n": n,
        "max_tokens": max_tokens,
        "single_tokens": single_tokens,
        "batched_tokens": batched_tokens,
        "single_latency_ms_mean": round(1000 * single_s / max(1, n), 1),
        "load_s": round(load_s, 2),
        "threads": getattr(engine, "threads", None),
        "errors": len(errors),
    }
    if errors:
        out["first_error"] = errors[0]
    resolved = tier.resolved
    tier.close()
    if baseline:
        hf_dir = getattr(resolved, "hf_dir", None)
        if hf_dir is None:
            out["baseline"] = {"skipped": "no HF weights for this tier"}
        else:
            out["baseline"] = _bench_transformers(
                tier_cfg, ensemble, str(hf_dir), out["chat_format"], n, max_tokens
            )
            for key in ("single_tok_s", "batched_tok_s"):
                base = out["baseline"].get(key) or 0.0
                out[f"speedup_{key.split('_')[0]}"] = round(out[key] / base, 2) if base else None
    out["env"] = environment()
    return out


def _bench_transformers(
    tier_cfg: TierConfig,
    ensemble: EnsembleConfig,
    hf_dir: str,
    chat_format: str,
    n: int,
    max_tokens: int,
) -> dict[str, Any]:
    """The same measurement through transformers fp32 (the engine we did not choose)."""
    from routenlp.tiers.hf_local import LocalTier

    cfg = tier_cfg.model_copy(
        update={
            "model": hf_dir,
            "adapter": None,
            "options": {**tier_cfg.options, "engine": "transformers"},
            "chat_format": chat_format,
        }
    )
    tier = LocalTier(cfg, ensemble)
    tier.load()
    reqs = bench_requests(tier_cfg, n, max_tokens)
    tier.generate_batch(reqs[:1], min_tokens=4)
    t0 = time.perf_counter()
    singles = [tier.generate_batch([r], min_tokens=max_tokens)[0] for r in reqs]
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = tier.generate_batch(reqs, min_tokens=max_tokens)
    batched_s = time.perf_counter() - t0
    tier.close()
    return {
        "engine": "transformers-fp32",
        "single_tok_s": round(_tok_s(singles, single_s)[0], 2),
        "batched_tok_s": round(_tok_s(batched, batched_s)[0], 2),
        "errors": sum(1 for g in singles + batched if g.error),
    }


def bench_tiers(
    config: EnsembleConfig,
    tiers: Sequence[str] | None = None,
    n: int = 8,
    max_tokens: int = 64,
    baseline: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Benchmark the config's local tiers (or the named ones): {tier: {single_tok_s, ...}}."""
    if n < 1 or max_tokens < 1:
        raise ConfigError("bench tiers: --n and --max-tokens must be >= 1")
    if tiers:
        selected = [config.tier(t) for t in tiers]  # raises ConfigError naming unknown tiers
        bad = [t.name for t in selected if t.kind != "local"]
        if bad:
            raise ConfigError(
                f"bench tiers measures local tiers only; not local: {bad}",
                hint=f"local tiers in this config: {[t.name for t in config.tiers if t.kind == 'local']}",
            )
    else:
        selected = [t for t in config.tiers if t.kind == "local"]
    if not selected:
        raise ConfigError("bench tiers: the config has no `local` tiers to benchmark")
    results: dict[str, Any] = {}
    for t in selected:
        results[t.name] = bench_local_tier(
            t, config, n=n, max_tokens=max_tokens, baseline=baseline, progress=progress
        )
    return results


def environment() -> dict[str, Any]:
    """Machine facts stored next to benchmark numbers (cores, load) to read them fairly."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu_cores": cores, "load_avg_1m": load1, "machine": platform.machine()}
