"""The Tier protocol and the Generation result every tier returns.

A tier turns a prompt into a `Generation`: text plus what the cascade needs to judge it
(per-token log-probs or class probabilities), what it cost and how long it took. A failed
call is a Generation with `error` set, never an exception, so the cascade can escalate
and labelling can record the failure and go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass
class Generation:
    """One tier's answer to one request."""

    text: str
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] | None = None
    class_probs: dict[str, float] | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    cost: float = 0.0
    error: str | None = None
    confidence: float | None = None
    uncertainty: float | None = None
    quality: float | None = None  # known only for replay tiers
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def token_uncertainty(self) -> float | None:
        """u = mean(1 - p(token)) over generated tokens; None without log-probs."""
        return token_uncertainty(self.logprobs)


def token_uncertainty(logprobs: Sequence[float] | None) -> float | None:
    """u = 1/L * sum_i (1 - exp(logprob_i)); larger = riskier. Empty -> 1.0 (no evidence)."""
    if logprobs is None:
        return None
    if len(logprobs) == 0:
        return 1.0
    return sum(1.0 - math.exp(min(0.0, lp)) for lp in logprobs) / len(logprobs)


def failed(error: str, latency_s: float = 0.0) -> Generation:
    return Generation(text="", error=error, latency_s=latency_s)


@dataclass
class Request:
    """What a tier is asked: the rendered prompt (or chat messages) for one query."""

    task: str
    prompt: str
    query: str = ""
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    id: str | None = None
    # sampling parameters a client asked for (temperature, top_p, stop, seed, ...); only
    # tiers listed in SAMPLING_PARAMS receive them, the gateway refuses the rest
    params: dict[str, Any] = field(default_factory=dict)


# Sampling parameters each tier kind can honour. Deterministic tiers (classifier, replay,
# greedy local decoding) answer the same whatever the seed, and greedy is temperature 0 /
# top_p 1, so only those values are accepted for them.
SAMPLING_PARAMS: dict[str, frozenset[str]] = {
    "openai_compat": frozenset(
        {"temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty"}
    ),
}
GREEDY_VALUES: dict[str, Any] = {"temperature": 0, "top_p": 1, "seed": None}


def unsupported_params(kind: str, params: dict[str, Any]) -> list[str]:
    """Names of the sampling parameters in `params` a tier of `kind` cannot honour."""
    allowed = SAMPLING_PARAMS.get(kind, frozenset())
    bad = []
    for name, value in params.items():
        if name in allowed or value is None:
            continue
        if name == "seed":
            continue  # deterministic tiers give the same answer for every seed
        if name in GREEDY_VALUES and value == GREEDY_VALUES[name]:
            continue
        bad.append(name)
    return bad


@runtime_checkable
class Tier(Protocol):
    """A model endpoint. `generate` never raises for model/endpoint failures."""

    config: TierConfig

    @property
    def name(self) -> str: ...

    def generate(self, request: Request) -> Generation: ...

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]: ...

    def close(self) -> None: ...


class BaseTier:
    """Shared plumbing: name, cost accounting, a sequential batch fallback."""

    def __init__(self, config: TierConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def price(self, gen: Generation) -> Generation:
        gen.cost = self.config.cost(gen.usage.tokens_in, gen.usage.tokens_out)
        return gen

    def generate(self, request: Request) -> Generation:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        return None


TierFactory = Callable[[TierConfig, EnsembleConfig], Tier]
_REGISTRY: dict[str, TierFactory] = {}
# Built-in kinds and the module that registers each (imported on first use).
KIND_MODULES = {
    "classifier": "routenlp.tiers.classifier",
    "local": "routenlp.tiers.hf_local",
    "openai_compat": "routenlp.tiers.openai_compat",
    "replay": "routenlp.tiers.replay",
}


def register_tier(kind: str) -> Callable[[TierFactory], TierFactory]:
    def deco(factory: TierFactory) -> TierFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


def build_tier(config: TierConfig, ensemble: EnsembleConfig) -> Tier:
    """Instantiate a tier from its config via the registry keyed by `kind`."""
    import importlib

    if config.kind not in _REGISTRY and config.kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[config.kind])
    factory = _REGISTRY.get(config.kind)
    if factory is None:
        raise ConfigError(
            f"tier {config.name!r}: unknown kind {config.kind!r}; known: {sorted(_REGISTRY)}"
        )
    return factory(config, ensemble)
