"""Persistence for RouteNLP: requests, quality-matrix labels, feedback and artifacts.

`Store(url)` opens SQLite (default, WAL) or PostgreSQL and upgrades the schema on open.
"""

from routenlp.store.store import (
    DEFAULT_URL,
    ArtifactRecord,
    FeedbackRecord,
    PoolSettings,
    RequestRecord,
    Store,
    StoreError,
    TierStep,
    is_transient,
    make_engine,
    migrations_dir,
    percentile,
    redact_url,
    tree_sha256,
)

__all__ = [
    "DEFAULT_URL",
    "ArtifactRecord",
    "FeedbackRecord",
    "PoolSettings",
    "RequestRecord",
    "Store",
    "StoreError",
    "TierStep",
    "is_transient",
    "make_engine",
    "migrations_dir",
    "percentile",
    "redact_url",
    "tree_sha256",
]
