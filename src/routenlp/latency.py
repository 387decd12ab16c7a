"""Per-tier expected latency (p50) for the Cascade's SLA rules, most specific source first.

Sources: the `latency` mapping given to the Cascade, the tier config's `latency_p50_ms`,
the Cascade's own observed running median (after `MIN_OBSERVED` calls), the store's profile
(`store.latency_profile(tier, task)`, cached `STORE_PROFILE_TTL_S`); unknown -> None (the
tier is never skipped for latency).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol

from routenlp.config import EnsembleConfig
from routenlp.errors import RouteNLPError

MIN_OBSERVED = 5
OBSERVED_WINDOW = 256
STORE_PROFILE_TTL_S = 60.0


class LatencyStore(Protocol):
    def latency_profile(self, tier: str, task: str | None = None) -> tuple[float, float] | None: ...


class LatencyProfiles:
    """Thread-safe expected-latency lookup with a running window of observed calls."""

    def __init__(
        self,
        config: EnsembleConfig,
        latency: Mapping[str, float | tuple[float, float]] | None = None,
        store: LatencyStore | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._given = {
            n: float(p[0] if isinstance(p, tuple | list) else p) for n, p in (latency or {}).items()
        }
        self._lock = threading.Lock()
        self._observed: dict[str, deque[float]] = {}
        self._store_cache: dict[tuple[str, str], tuple[float, float | None]] = {}

    def expected_ms(self, tier: str, task: str | None = None) -> float | None:
        """Expected (p50) latency of a tier in ms, or None if unknown."""
        if tier in self._given:
            return self._given[tier]
        cfg = self.config.tier(tier)
        if cfg.latency_p50_ms is not None:
            return float(cfg.latency_p50_ms)
        with self._lock:
            obs = self._observed.get(tier)
            if obs is not None and len(obs) >= MIN_OBSERVED:
                return float(statistics.median(obs))
        return None if self.store is None else self._store_p50(tier, task)

    def _store_p50(self, tier: str, task: str | None) -> float | None:
        key, now = (tier, task or ""), time.monotonic()
        with self._lock:
            hit = self._store_cache.get(key)
            if hit is not None and now - hit[0] < STORE_PROFILE_TTL_S:
                return hit[1]
        assert self.store is not None
        try:
            prof = self.store.latency_profile(tier, task)
        except RouteNLPError:
            prof = None
        p50 = None if prof is None else float(prof[0])
        with self._lock:
            self._store_cache[key] = (now, p50)
        return p50

    def observe(self, tier: str, ms: float) -> None:
        with self._lock:
            self._observed.setdefault(tier, deque(maxlen=OBSERVED_WINDOW)).append(ms)
