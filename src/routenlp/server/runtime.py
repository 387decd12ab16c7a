"""What the gateway serves: the Cascade built from the config plus its artifacts.

ALL artifact loading is here, in `ServingState.load(config, router=..., thresholds=...)`:
the router directory and the accept rule: a certified policy JSON (served by default) or
per-tier thresholds JSON, in one slot, told apart by content. A
state is immutable once built; `Runtime.reload` builds a new one and swaps it in with one
assignment, so a request runs start to finish on one consistent set of artifacts, and a
bad artifact raises before anything is swapped (the old state keeps serving).

Without thresholds the gateway starts from the config alone with `server.fallback`:
`cheapest` accepts the cheapest serving tier's answer (a failure there still escalates),
`top` sends everything to the task's top tier. Both go through `Cascade.run` (the one
code path): the fallback is expressed as a thresholds object, not as separate routing.

Tier objects are built once and shared by every state; each is wrapped in a `GuardedTier`
(circuit breaker, client-disconnect cancellation, per-call usage accounting).
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp.cascade import Cascade, default_request_builder
from routenlp.config import EnsembleConfig, TaskConfig
from routenlp.conformal.thresholds import ThresholdEntry, Thresholds
from routenlp.errors import ConfigError, RouteNLPError
from routenlp.server.breaker import CircuitBreaker
from routenlp.tiers.base import Generation, Request, Tier, build_tier

log = logging.getLogger("routenlp.gateway")


@dataclass
class CallContext:
    """Per-request data the cascade's tier calls need (carried in a ContextVar, which the
    thread pool copies into the worker thread that runs `Cascade.run`)."""

    params: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens_in(self) -> int:
        return sum(int(c["tokens_in"]) for c in self.calls)

    @property
    def tokens_out(self) -> int:
        return sum(int(c["tokens_out"]) for c in self.calls)


CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("routenlp_call",
                                                                          default=None)


class GuardedTier:
    """A tier behind a circuit breaker; stops calling once the client has gone."""

    def __init__(self, tier: Tier, breaker: CircuitBreaker) -> None:
        self.inner = tier
        self.breaker = breaker
        self.config = tier.config

    @property
    def name(self) -> str:
        return self.inner.name

    def generate(self, request: Request) -> Generation:
        ctx = CALL.get()
        if ctx is not None and ctx.cancelled.is_set():
            return Generation(text="", error=f"{self.name}: not called: the request was cancelled")
        if not self.breaker.allow():
            return Generation(
                text="",
                error=f"{self.name}: circuit open after repeated failures "
                f"(last: {self.breaker.last_error}); next probe in "
                f"{self.breaker.retry_after_s():.1f}s",
            )
        t0 = time.perf_counter()
        try:
            gen = self.inner.generate(request)
        except Exception as err:  # noqa: BLE001 - a tier must not raise; escalate instead
            gen = Generation(text="", error=f"{self.name}: {type(err).__name__}: {err}")
        if not gen.latency_s:
            gen.latency_s = time.perf_counter() - t0
        if gen.ok:
            self.breaker.success()
        else:
            self.breaker.failure(gen.error)
        if ctx is not None:
            ctx.calls.append({"tier": self.name, "tokens_in": gen.usage.tokens_in,
                              "tokens_out": gen.usage.tokens_out, "error": gen.error})
        return gen

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        self.inner.close()


def gateway_request_builder():  # noqa: ANN201 - RequestBuilder
    """The task registry's prompt (what was calibrated) plus the client's sampling
    parameters and max_tokens from the current CallContext."""
    base = default_request_builder()

    def build(task_cfg: TaskConfig, query: str, id: str | None) -> Request:
        req = base(task_cfg, query, id)
        ctx = CALL.get()
        if ctx is not None:
            req.params = dict(ctx.params)
            if ctx.max_tokens is not None:
                req.max_tokens = ctx.max_tokens
        return req

    return build


def fallback_thresholds(config: EnsembleConfig) -> Thresholds:
    """The config-only rule as thresholds: `cheapest` accepts any answer of each task's
    cheapest serving tier (only a failure escalates); `top` accepts nothing below the top."""
    table: dict[str, dict[str, ThresholdEntry]] = {}
    if config.server.fallback == "cheapest":
        for task in config.tasks:
            serving = config.tiers_for(task.name)
            if len(serving) > 1:
                table[task.name] = {serving[0].name: ThresholdEntry(
                    delta=math.inf, n=0, reason="server.fallback=cheapest (no thresholds)")}
    return Thresholds(alpha=0.5, method="fallback", thresholds=table)


def build_tiers(config: EnsembleConfig) -> dict[str, GuardedTier]:
    """Every configured tier, each behind its own breaker."""
    s = config.server
    out: dict[str, GuardedTier] = {}
    for tc in config.tiers:
        out[tc.name] = GuardedTier(build_tier(tc, config),
                                   CircuitBreaker(s.breaker_failures, s.breaker_reset_s))
    return out


@dataclass(frozen=True)
class ServingState:
    """One consistent set of artifacts and the Cascade over them."""

    config: EnsembleConfig
    cascade: Cascade
    tiers: Mapping[str, GuardedTier]
    router_path: str | None
    thresholds_path: str | None
    mode: str  # "routed" (artifacts loaded) or "fallback:<rule>"
    missing: tuple[str, ...]
    loaded_at: float

    @classmethod
    def load(
        cls,
        config: EnsembleConfig,
        *,
        router: str | Path | None = None,
        thresholds: str | Path | None = None,
        tiers: Mapping[str, GuardedTier] | None = None,
        store: Any = None,
    ) -> ServingState:
        """Load the artifacts (router dir, thresholds JSON) and build the Cascade.

        Raises RouteNLPError (naming the file) for a missing or corrupt artifact."""
        router_path = str(router) if router else config.router.path
        thr_path = str(thresholds) if thresholds else config.cascade.thresholds
        missing: list[str] = []
        router_obj = None
        if router_path:
            from routenlp.router.inference import Router

            try:
                router_obj = Router.load(router_path, config)
                if router_obj.tasks:  # load the encoder now, once, not in racing request threads
                    router_obj.decide(router_obj.tasks[0], "warm-up")
            except RouteNLPError:
                raise
            except Exception as err:  # noqa: BLE001 - a corrupt artifact must not crash
                raise ConfigError(f"router artifact {router_path}: cannot load "
                                  f"({type(err).__name__}: {err})") from None
        else:
            missing.append("router")
        policy = None
        if not thr_path and config.cascade.policy:
            thr_path = config.cascade.policy
        if thr_path and is_policy_file(thr_path):
            from routenlp.conformal.certify import PolicyArtifact

            policy = PolicyArtifact.load(thr_path)
            unknown = sorted(set(policy.maps) - set(config.task_names))
            if unknown:
                raise ConfigError(f"policy file {thr_path}: unknown task(s) {unknown}; "
                                  f"known tasks: {config.task_names}")
            thr = None
            mode = "routed:certified" if policy.certificate.certified else "routed:certified-fallback"
        elif thr_path:
            thr = Thresholds.load(thr_path)
            unknown = sorted({t for t, _, _ in thr.pairs() if t not in config.task_names})
            if unknown:
                raise ConfigError(f"thresholds file {thr_path}: unknown task(s) {unknown}; "
                                  f"known tasks: {config.task_names}")
            mode = "routed"
        else:
            thr = fallback_thresholds(config)
            missing.append("thresholds")
            mode = f"fallback:{config.server.fallback}"
        guarded = dict(tiers) if tiers is not None else build_tiers(config)
        cascade = Cascade(
            config,
            guarded,  # type: ignore[arg-type]
            router=router_obj,
            thresholds=thr,
            policy=policy,
            sla_aware=config.cascade.sla_aware,
            store=store,
            request_builder=gateway_request_builder(),
        )
        return cls(config=config, cascade=cascade, tiers=guarded, router_path=router_path,
                   thresholds_path=thr_path, mode=mode, missing=tuple(missing),
                   loaded_at=time.time())

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "router": self.router_path, "thresholds": self.thresholds_path,
                "missing": list(self.missing)}


def is_policy_file(path: str | Path) -> bool:
    """Whether an accept-rule file is a certified policy artifact (`routenlp calibrate
    --policy certified`) rather than per-tier thresholds: both go in the same slot."""
    from routenlp.paths import read_json_file

    raw = read_json_file(path, "accept-rule file (thresholds or policy JSON)",
                         hint="create it with `routenlp calibrate ... --out FILE`")
    return isinstance(raw, dict) and raw.get("kind") == "certified"


class Runtime:
    """Holds the current ServingState; `reload` swaps it atomically or not at all."""

    def __init__(self, state: ServingState, *, store: Any = None) -> None:
        self.state = state
        self.store = store
        self._lock = threading.Lock()

    def reload(self, *, router: str | None = None, thresholds: str | None = None
               ) -> ServingState:
        with self._lock:
            old = self.state
            new = ServingState.load(
                old.config,
                router=router if router is not None else old.router_path,
                thresholds=thresholds if thresholds is not None else old.thresholds_path,
                tiers=old.tiers,
                store=self.store,
            )
            self.state = new  # one reference assignment: requests see old or new, never a mix
            log.warning("reloaded artifacts: %s", new.describe())
            return new
