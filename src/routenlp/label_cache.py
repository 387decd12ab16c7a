"""Content-addressed cache of tier generations for labelling.

Why: labelling every tier on every query dominates `routenlp demo` and closed-loop
re-labelling, yet a deterministic local tier (greedy decoding, a fixed classifier head,
the seeded simulated frontier) gives the same answer to the same request whatever the
output directory. So a generation is cached under sha256(tier fingerprint + the request the
tier sees), in one SQLite file under `cache_dir()/labels.sqlite` (WAL + busy timeout: two
labelling processes may share it).

What is cached is the generation (text, token counts, risk signal, latency, cost), never
the quality: quality is re-scored from the cached text against the row's reference, so a
changed reference or metric cannot serve a stale score. The cost is re-priced from the
cached token counts at the tier's current prices. Remote tiers (`openai_compat`) and
`replay` tiers are never cached, and neither are error outcomes (a timeout or a missing
head must be retried next time). Greedy output is taken as a function of the request
alone; batch composition and library versions are not part of the key. How a local tier
computes is: its resolved CTranslate2 compute type and, for int8, whether the CPU runs it on
a dot-product instruction (greedy int8 answers differ without one).

Switch it off with ROUTENLP_LABEL_CACHE=0 (or `routenlp label --no-cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import DataError
from routenlp.tiers.base import Generation, Request, Tier, Usage

ENV_SWITCH = "ROUTENLP_LABEL_CACHE"
FILE_NAME = "labels.sqlite"
# Bump when what a key covers or what a value holds changes: old entries are never read.
CACHE_VERSION = 2  # 2: local and classifier tiers record an answer's share of its batch's time as latency
CACHEABLE_KINDS = frozenset({"local", "classifier", "reference"})
# Tier options that change how fast a tier answers, not what it answers.
SPEED_OPTIONS = frozenset({"threads"})
BUSY_TIMEOUT_S = 30.0


def enabled() -> bool:
    """False when ROUTENLP_LABEL_CACHE is 0/false/no/off."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def default_path() -> Path:
    from routenlp.paths import cache_dir

    return cache_dir() / FILE_NAME


def _sha(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- fingerprints ------------------------------------------------------------------------
def dir_digest(path: str | Path | None) -> str | None:
    """Content hash of a directory (names + file hashes, not timestamps); None if absent.

    The same digest keys the local tier's merged-adapter -> CTranslate2 conversion."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        return None
    from routenlp.models.manifest import sha256_tree, tree_digest

    return tree_digest(sha256_tree(p))


def head_digest(root: str | Path) -> str | None:
    """Content identity of a classifier tier's heads: per task, the arrays, labels and
    encoder the tier reads. Not the file bytes: `meta.json` holds the fit time and the
    .npz zip entries hold timestamps, so a refit with identical weights would never hit."""
    import numpy as np

    base = Path(root)
    if not base.is_dir():
        return None
    h = hashlib.sha256()
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        meta_p, arrays_p = d / "meta.json", d / "head.npz"
        if not (meta_p.is_file() and arrays_p.is_file()):
            continue
        try:
            meta = json.loads(meta_p.read_text())
            with np.load(arrays_p, allow_pickle=False) as arrays:
                parts = {k: np.ascontiguousarray(arrays[k]) for k in sorted(arrays.files)}
        except (OSError, ValueError, KeyError):
            h.update(f"{d.name}:unreadable\n".encode())  # the tier will answer with errors
            continue
        ident = {k: meta.get(k) for k in ("format", "labels", "encoder", "dim")}
        h.update(f"{d.name}\0{json.dumps(ident, sort_keys=True)}\0".encode())
        for k, a in parts.items():
            h.update(f"{k}:{a.dtype.str}:{a.shape}\0".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def model_identity(model: str | None) -> str | None:
    """What a local tier's `model` names: a registry model's source sha (from its
    manifest), or a local directory's cheap fingerprint (paths, sizes, mtimes)."""
    if not model:
        return None
    from routenlp.models.registry import MODELS, model_dir

    if model in MODELS:
        from routenlp.models.manifest import read_manifest

        m = read_manifest(model_dir(model))
        return f"registry:{model}:{m.source_sha256 if m else 'unconverted'}"
    p = Path(model).expanduser()
    if p.is_dir():
        from routenlp.models.registry import _fingerprint

        return f"dir:{_fingerprint(p.resolve())}"
    return f"name:{model}"


def compute_identity(t: TierConfig) -> dict[str, Any] | None:
    """How a CTranslate2 tier computes on this machine: the compute type `auto` resolves to
    and, for int8, whether a dot-product instruction runs it (int8 answers differ without)."""
    from routenlp.models.engine import int8_dot_product
    from routenlp.tiers.hf_local import planned_compute

    planned = planned_compute(t)
    if planned is None:
        return None
    compute_type = planned[0]
    return {"type": compute_type, "int8_dot_product": int8_dot_product() if "int8" in compute_type else None}


def tier_fingerprint(
    config: EnsembleConfig, name: str, tier: Tier | None = None, *, _seen: frozenset[str] = frozenset()
) -> str | None:
    """sha256 of everything that decides a tier's answers, or None if it is not cacheable.

    `tier` (the object that will answer) adds its class, so a test double or a custom
    implementation under a built-in kind never shares entries with the real one."""
    t: TierConfig = config.tier(name)
    if t.kind not in CACHEABLE_KINDS or name in _seen:
        return None
    parts: dict[str, Any] = {
        "v": CACHE_VERSION,
        "kind": t.kind,
        "impl": f"{type(tier).__module__}.{type(tier).__qualname__}" if tier is not None else None,
        "model": t.model,
        "chat_format": t.chat_format,
        "max_tokens": t.max_tokens,
        "options": {k: v for k, v in sorted(t.options.items()) if k not in SPEED_OPTIONS},
    }
    if t.kind == "local":
        parts["model_identity"] = model_identity(t.model)
        parts["compute"] = compute_identity(t)
        if parts["compute"] is not None:  # the resolved type replaces the option ("auto" or not)
            parts["options"].pop("compute_type", None)
        parts["adapter"] = dir_digest(t.adapter) if t.adapter else None
        from routenlp.tiers.hf_local import COMPLETION_STOPS, END_TOKENS

        parts["decoding"] = {"completion_stops": list(COMPLETION_STOPS), "end_tokens": list(END_TOKENS)}
        if t.adapter and parts["adapter"] is None:
            return None  # a missing adapter: the tier fails, nothing to cache
    elif t.kind == "classifier":
        from routenlp.tiers.classifier import head_root

        parts["head"] = head_digest(head_root(t))
    elif t.kind == "reference":
        opts = t.reference_options
        parts["latency"] = [t.latency_p50_ms, t.latency_p99_ms]
        parts["options"] = opts.model_dump(exclude={"sleep"})
        if opts.fallback_tier is not None:
            fb = getattr(tier, "_fallback", None)
            fp = tier_fingerprint(config, opts.fallback_tier, fb, _seen=_seen | {name})
            if fp is None:
                return None  # a remote fallback makes the frontier's errors non-deterministic
            parts["fallback"] = fp
    return _sha(parts)


def request_key(fingerprint: str, kind: str, request: Request) -> str:
    """sha256 of the tier fingerprint and the full request the tier sees.

    The simulated frontier also sees the query id (its seeded draws) and the reference
    (its answer); the other kinds answer from the text alone, so equal prompts share."""
    body: dict[str, Any] = {
        "tier": fingerprint,
        "task": request.task,
        "prompt": request.prompt,
        "query": request.query,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
    }
    if kind == "reference":
        body["id"] = request.id
        body["reference"] = request.reference
    return _sha(body)


# -- values ------------------------------------------------------------------------------
def _encode(gen: Generation, uncertainty: float | None) -> str:
    return json.dumps(
        {
            "text": gen.text,
            "tokens_in": gen.usage.tokens_in,
            "tokens_out": gen.usage.tokens_out,
            "uncertainty": uncertainty,
            "confidence": gen.confidence,
            "latency_s": gen.latency_s,
            "cost": gen.cost,
        },
        allow_nan=False,
    )


def _decode(value: str, tier: TierConfig) -> Generation:
    d = json.loads(value)
    usage = Usage(tokens_in=int(d["tokens_in"]), tokens_out=int(d["tokens_out"]))
    return Generation(
        text=d["text"],
        usage=usage,
        latency_s=float(d["latency_s"]),
        cost=tier.cost(usage.tokens_in, usage.tokens_out),  # today's prices, not the old ones
        confidence=d.get("confidence"),
        uncertainty=d.get("uncertainty"),
        meta={"cached": True, "cached_cost": d.get("cost")},
    )


# -- the store ---------------------------------------------------------------------------
class LabelCache:
    """One SQLite file of key -> generation; safe to share between processes (WAL)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self.path = Path(path) if path is not None else Path("<cache dir>") / FILE_NAME
        try:
            self.path = Path(path) if path is not None else default_path()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # a lost entry is only recomputed
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS generations ("
                "key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL, "
                "created REAL NOT NULL)"
            )
        except (sqlite3.Error, OSError) as err:
            raise DataError(
                f"label cache {self.path} cannot be opened: {err}",
                hint=f"delete it, or set {ENV_SWITCH}=0 to label without the cache",
            ) from None

    def get_many(self, keys: Sequence[str], tier: TierConfig) -> dict[str, Generation]:
        """The cached generations among `keys` (fresh objects: callers may mutate them)."""
        if not keys:
            return {}
        out: dict[str, Generation] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # stay under SQLite's variable limit
                part = list(keys[start : start + 500])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, value FROM generations WHERE key IN ({marks})", part
                ).fetchall()
                for key, value in rows:
                    try:
                        out[key] = _decode(value, tier)
                    except (ValueError, KeyError, TypeError):
                        continue  # a damaged entry is a miss; the put replaces it
        return out

    def put_many(self, items: Mapping[str, tuple[Generation, float | None]], kind: str) -> int:
        """Store successful generations (key -> (generation, uncertainty)); errors are
        skipped. Returns how many were written."""
        rows = []
        now = time.time()
        for key, (gen, u) in items.items():
            if not gen.ok:
                continue
            try:
                rows.append((key, kind, _encode(gen, u), now))
            except ValueError:
                continue  # NaN/inf signal: not worth caching
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO generations (key, kind, value, created) "
                    "VALUES (?, ?, ?, ?)", rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TierCache:
    """One tier's view of the cache: the store, the tier's fingerprint and config."""

    store: LabelCache
    fingerprint: str
    tier: TierConfig

    def key(self, request: Request) -> str:
        return request_key(self.fingerprint, self.tier.kind, request)

    def cacheable(self, request: Request) -> bool:
        """The simulated frontier without a reference on the request looks one up in the
        task's dataset, which the key does not cover: such requests are not cached."""
        return self.tier.kind != "reference" or request.reference is not None


def open_tier_caches(
    config: EnsembleConfig, built: Mapping[str, Tier], *, use_cache: bool = True,
    path: str | Path | None = None,
) -> tuple[LabelCache | None, dict[str, TierCache]]:
    """The store and a TierCache per cacheable tier ({} when disabled or none is)."""
    if not use_cache or not enabled():
        return None, {}
    fps = {n: tier_fingerprint(config, n, t) for n, t in built.items()}
    fps = {n: fp for n, fp in fps.items() if fp is not None}
    if not fps:
        return None, {}
    store = LabelCache(path)
    return store, {n: TierCache(store, fp, config.tier(n)) for n, fp in fps.items()}
