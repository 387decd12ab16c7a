"""The `replay` tier: answers with the outcome recorded in a quality matrix.

Offline evaluation runs the same Cascade as the server with every tier replaced by a
replay tier, so "what is measured is what is served". Public routing matrices are
incomplete (no tokens, no cost, no latency for some models), so missing numbers are
filled from the tier's config (prices, latency profile) or estimated from the text, and
each fill is flagged in `Generation.meta` so reports can say what was modelled.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError, DataError
from routenlp.matrix import MatrixRow, Outcome, read_matrix
from routenlp.tiers.base import BaseTier, Generation, Request, Usage, register_tier


def _num(value: float | int | None) -> float | None:
    """A usable number, or None for missing/NaN (public matrices use both)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def response_text(response: Any) -> str:
    """A recorded response as text (structured outputs, e.g. entity lists, become JSON)."""
    if response is None:
        return ""
    if isinstance(response, str):
        return response
    return json.dumps(response, ensure_ascii=False, sort_keys=True)


class ReplayTier(BaseTier):
    """Looks a request up by id in recorded rows and returns that tier's outcome."""

    def __init__(self, config: TierConfig, rows: Mapping[str, MatrixRow]) -> None:
        super().__init__(config)
        self.rows = rows

    @classmethod
    def from_rows(cls, config: TierConfig, rows: Sequence[MatrixRow]) -> ReplayTier:
        return cls(config, {r.id: r for r in rows})

    def outcome(self, request_id: str) -> Outcome | None:
        row = self.rows.get(request_id)
        return None if row is None else row.outcomes.get(self.name)

    def generate(self, request: Request) -> Generation:
        if request.id is None:
            return Generation(
                text="",
                error=f"{self.name}: request has no id (replay tiers look answers up by id)",
            )
        row = self.rows.get(request.id)
        outcome = None if row is None else row.outcomes.get(self.name)
        if row is None or outcome is None:
            return Generation(
                text="", error=f"no recorded outcome for {request.id} at {self.name}"
            )
        return self._replay(row, outcome)

    def _replay(self, row: MatrixRow, outcome: Outcome) -> Generation:
        text = response_text(outcome.response)
        meta: dict[str, Any] = {}
        if outcome.response is not None and not isinstance(outcome.response, str):
            meta["response"] = outcome.response
        tokens_in, tokens_out = outcome.tokens_in, outcome.tokens_out
        if tokens_in is None or tokens_out is None:
            meta["estimated_tokens"] = True
            tokens_in = tokens_in if tokens_in is not None else len(row.prompt) // 4
            tokens_out = tokens_out if tokens_out is not None else len(text) // 4
        cost = _num(outcome.cost)
        if cost is None:
            cost = self.config.cost(tokens_in, tokens_out)
            if meta.get("estimated_tokens"):
                meta["estimated_cost"] = True
        latency = _num(outcome.latency_s)
        if latency is None:
            latency = (self.config.latency_p50_ms or 0.0) / 1000.0
            meta["modelled_latency"] = True
        return Generation(
            text=text,
            usage=Usage(tokens_in=int(tokens_in), tokens_out=int(tokens_out)),
            latency_s=latency,
            cost=cost,
            error=outcome.error,
            confidence=_num(outcome.confidence),
            uncertainty=outcome.risk(),
            quality=_num(outcome.quality),
            meta=meta,
        )


_CACHE: dict[tuple[str, float, int], dict[str, MatrixRow]] = {}
_CACHE_LOCK = threading.Lock()


def load_rows(path: str | Path) -> dict[str, MatrixRow]:
    """Matrix rows by id, read once per file version (several replay tiers share a file)."""
    p = Path(path).resolve()
    if not p.exists():
        raise DataError(f"quality matrix not found: {p}")
    stat = p.stat()
    key = (str(p), stat.st_mtime, stat.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    rows = {r.id: r for r in read_matrix(p)}
    with _CACHE_LOCK:
        for old in [k for k in _CACHE if k[0] == key[0]]:
            del _CACHE[old]  # an older version of the same file
        while len(_CACHE) >= 4:  # matrices can be large: keep a few files only
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = rows
    return rows


def build_replay_tiers(
    ensemble: EnsembleConfig, rows: Mapping[str, MatrixRow] | Sequence[MatrixRow]
) -> dict[str, ReplayTier]:
    """One replay tier per ensemble tier over the same recorded rows (offline evaluation)."""
    by_id = rows if isinstance(rows, Mapping) else {r.id: r for r in rows}
    return {t.name: ReplayTier(t, by_id) for t in ensemble.tiers}


@register_tier("replay")
def _build(config: TierConfig, ensemble: EnsembleConfig) -> ReplayTier:
    path = config.options.get("matrix")
    if not path:
        raise ConfigError(
            f"tier {config.name!r} (replay): options.matrix is not set",
            hint="point it at a quality matrix JSONL, "
            "e.g. options: {matrix: runs/matrix/test.jsonl}",
        )
    return ReplayTier(config, load_rows(path))
