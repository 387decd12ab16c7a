"""The `reference` tier: a simulated frontier model that answers with the task's reference.

On a laptop there is no frontier API, yet the paper's story needs a top tier that is
right almost always, expensive (the paper's T4: 8.00 USD per 1K tokens) and slow. This
tier plays that part honestly labelled: it serves the gold output of the query (from the
request, or looked up in the task's dataset by input text), except on a configurable
share of queries (`options.error_rate`, default 5%) where it serves the answer of the
next tier down (`options.fallback_tier`) or, with none, a degraded reference. Every
draw is seeded and depends only on (seed, tier, query id), so runs are reproducible.
Latency is drawn from a lognormal with the configured p50/p99 and recorded (really
waited only with `options.sleep: true`). Everything it returns says
"simulated frontier (reference answers)" in `Generation.meta["label"]`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

from routenlp.config import REFERENCE_LABEL, EnsembleConfig, TaskConfig, TierConfig
from routenlp.errors import RouteNLPError
from routenlp.tiers.base import BaseTier, Generation, Request, Tier, Usage, register_tier

log = logging.getLogger(__name__)
DEFAULT_P50_MS = 900.0  # a frontier chat completion of ~100 tokens
DEFAULT_P99_MS = 4000.0
_Z99 = NormalDist().inv_cdf(0.99)


def estimate_tokens(text: str) -> int:
    """~4 characters per token (what tokenizers give on English prose), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def uniforms(seed: int, tier: str, key: str, n: int = 3) -> list[float]:
    """n independent U(0, 1) draws from SHA-256 of (seed, tier, key): same key, same draws."""
    digest = hashlib.sha256(f"{seed}\x1f{tier}\x1f{key}".encode()).digest()
    return [(int.from_bytes(digest[8 * i : 8 * i + 8], "big") + 0.5) / 2**64 for i in range(n)]


def lognormal_ms(u: float, p50_ms: float, p99_ms: float) -> float:
    """The u-quantile of the lognormal whose median is p50 and 99th percentile p99."""
    if p50_ms <= 0:
        return 0.0
    sigma = math.log(max(p99_ms, p50_ms) / p50_ms) / _Z99
    return p50_ms * math.exp(sigma * NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12)))


class ReferenceTier(BaseTier):
    """Serves reference answers with a seeded error rate; priced and timed like a frontier."""

    def __init__(
        self, config: TierConfig, ensemble: EnsembleConfig, fallback: Tier | None = None
    ) -> None:
        super().__init__(config)
        self.ensemble = ensemble
        self.options = config.reference_options
        self.label = config.label or REFERENCE_LABEL
        self._fallback = fallback
        self._index: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- references ----------------------------------------------------------------------
    def _task_index(self, task: TaskConfig) -> dict[str, Any]:
        """input text -> reference over every split of the task's dataset (built once)."""
        with self._lock:
            hit = self._index.get(task.name)
        if hit is not None:
            return hit
        from routenlp.workloads import task_rows

        index: dict[str, Any] = {}
        for split in ("train", "cal", "test"):
            try:
                rows = task_rows(task, split)
            except (RouteNLPError, OSError):
                continue  # a split the dataset does not have
            for r in rows:
                index.setdefault(str(r["input"]), r.get("reference"))
        with self._lock:
            self._index[task.name] = index
        return index

    def add_references(self, task: str, rows: Sequence[dict[str, Any]]) -> int:
        """Make dataset rows (`input`, `reference`) answerable by query text, e.g. a
        workload written with other sizes than the built-in defaults. Returns the count."""
        task_cfg = self.ensemble.task(task)
        index = self._task_index(task_cfg)
        with self._lock:
            for r in rows:
                index[str(r["input"])] = r.get("reference")
        return len(rows)

    def reference_for(self, request: Request) -> tuple[bool, Any]:
        """(found, reference): from the request, else looked up by the query text.

        A reference carried by a request is remembered, so the same query served later
        without one (e.g. by the cascade) gets the same answer."""
        if request.reference is not None:
            try:
                index = self._task_index(self.ensemble.task(request.task))
                with self._lock:
                    index.setdefault(request.query or "", request.reference)
            except RouteNLPError:
                pass
            return True, request.reference
        try:
            task = self.ensemble.task(request.task)
        except RouteNLPError:
            return False, None
        index = self._task_index(task)
        key = request.query or ""
        return (key in index), index.get(key)

    # -- answers ---------------------------------------------------------------------------
    def _spec(self, task: str) -> Any:
        from routenlp.tasks import get_task_spec

        return get_task_spec(self.ensemble.task(task))

    def degraded(self, request: Request, reference: Any, u: float) -> str:
        """A plausible wrong answer when no fallback tier serves the task.

        Classification: another label; extraction: the last entity dropped (or a spurious
        one added to an empty list); text: the first third of the reference."""
        spec = self._spec(request.task)
        if spec.family == "classification" and spec.labels:
            gold = spec.reference_text(reference)
            others = [x for x in spec.labels if x != gold] or list(spec.labels)
            return others[int(u * len(others)) % len(others)]
        if spec.family == "extraction":
            ents = list(reference or [])
            if ents:
                return spec.reference_text(ents[:-1])
            words = [w.strip(".,;:") for w in (request.query or "").split()]
            caps = [w for w in words[1:] if w[:1].isupper()] or ["Unknown"]
            return spec.reference_text([{"text": caps[0], "type": "ORG"}])
        words = spec.reference_text(reference).split()
        return " ".join(words[: max(1, len(words) // 3)])

    def attach_fallback(self, tier: Tier) -> None:
        """Use an already built fallback tier (shares its loaded model with the cascade)."""
        with self._lock:
            self._fallback = tier

    def _fallback_tier(self, task: str) -> Tier | None:
        name = self.options.fallback_tier
        if name is None or not self.ensemble.tier(name).serves(task):
            return None
        with self._lock:
            if self._fallback is None:
                from routenlp.tiers.base import build_tier

                self._fallback = build_tier(self.ensemble.tier(name), self.ensemble)
            return self._fallback

    def _key(self, request: Request) -> str:
        if request.id is not None:
            return str(request.id)
        return hashlib.sha256(f"{request.task}\x1f{request.query}".encode()).hexdigest()

    def generate(self, request: Request) -> Generation:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        """Reference answers; simulated errors go to the fallback tier in one batch."""
        opts = self.options
        plans: list[tuple[list[float], bool, Any, bool]] = []
        wrong_by_task: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            draws = uniforms(opts.seed, self.name, self._key(req))
            found, ref = self.reference_for(req)
            wrong = found and draws[0] < opts.error_rate
            plans.append((draws, found, ref, wrong))
            if wrong:
                wrong_by_task.setdefault(req.task, []).append(i)

        served: dict[int, tuple[str, str]] = {}  # index -> (text, how)
        for task, idx in wrong_by_task.items():
            fb = self._fallback_tier(task)
            gens = fb.generate_batch([requests[i] for i in idx]) if fb is not None else []
            for k, i in enumerate(idx):
                if fb is not None and gens[k].ok:
                    served[i] = (gens[k].text, f"fallback:{fb.name}")
                else:
                    served[i] = (self.degraded(requests[i], plans[i][2], plans[i][0][2]), "degraded")

        out: list[Generation] = []
        for i, (req, (draws, found, ref, wrong)) in enumerate(zip(requests, plans)):
            latency_ms = lognormal_ms(
                draws[1],
                self.config.latency_p50_ms or DEFAULT_P50_MS,
                self.config.latency_p99_ms or DEFAULT_P99_MS,
            )
            meta: dict[str, Any] = {"label": self.label, "simulated": True}
            if not found:
                out.append(
                    Generation(
                        text="",
                        error=f"{self.name} ({self.label}): no reference answer for this "
                        f"query of task {req.task!r} (it answers only queries of the "
                        "task's dataset)",
                        meta=meta,
                    )
                )
                continue
            if wrong:
                text, how = served[i]
            else:
                text, how = self._spec(req.task).reference_text(ref), "reference"
            meta["served"] = how
            if opts.sleep:
                time.sleep(latency_ms / 1000.0)
            # A simulated risk signal: low on reference answers, higher on errors, with
            # overlap (a real frontier's confidence does not separate them perfectly).
            u = 0.05 + 0.25 * draws[2] if how == "reference" else 0.15 + 0.35 * draws[2]
            gen = Generation(
                text=text,
                usage=Usage(
                    tokens_in=estimate_tokens(req.prompt or req.query),
                    tokens_out=estimate_tokens(text),
                ),
                latency_s=latency_ms / 1000.0,
                uncertainty=u,
                meta=meta,
            )
            out.append(self.price(gen))
        return out

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()


@register_tier("reference")
def _build(config: TierConfig, ensemble: EnsembleConfig) -> ReferenceTier:
    tier = ReferenceTier(config, ensemble)
    opts = tier.options
    log.info(
        "tier %s: %s; error rate %.3g served by %s; latency p50 %s ms, p99 %s ms (%s)",
        config.name, tier.label, opts.error_rate, opts.fallback_tier or "a degraded answer",
        config.latency_p50_ms or DEFAULT_P50_MS, config.latency_p99_ms or DEFAULT_P99_MS,
        "waited" if opts.sleep else "recorded, not waited",
    )
    return tier
