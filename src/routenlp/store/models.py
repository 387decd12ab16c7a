"""SQLAlchemy 2 ORM models of the RouteNLP store.

The Alembic migration `0001_initial` is the source of truth for the schema; these models
must describe exactly the same tables (a test runs Alembic's autogenerate comparison on a
freshly migrated database and expects no difference). Change both together: edit the
models, then add a new revision under `migrations/versions/`.

Why these shapes:
- `requests` keeps the whole routing record (per-tier path as JSON) so a request can be
  replayed and audited as served; `request_steps` repeats each attempted tier as an
  indexed row so the cascade's latency profile is one index range scan per tier instead
  of a JSON scan over many requests (a rarely used top tier still gets `window` samples).
- `labels` is the quality matrix flattened to one row per (source, query, tier), so
  relabelling one tier is an upsert of single rows.
- `artifacts` are versioned per kind with one active version, so the server can reload
  and roll back routers and thresholds by number.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere; None is SQL NULL.
JSONType = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are converted to
    UTC and stored naive (ISO strings sort chronologically) and get UTC attached on the way
    out. Naive inputs are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class RequestRow(Base):
    """One served (or failed) request with its routing record."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    task: Mapped[str] = mapped_column(sa.String(128))
    query: Mapped[str] = mapped_column(sa.Text())
    response: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    final_tier: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    accepted: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    escalated: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    path: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    total_cost: Mapped[float] = mapped_column(sa.Float(), default=0.0)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    sla_ms: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    sla_met: Mapped[bool | None] = mapped_column(sa.Boolean(), nullable=True)
    router: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    artifact_versions: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    status: Mapped[str] = mapped_column(sa.String(32), default="ok")
    error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType, nullable=True)

    __table_args__ = (
        sa.Index(None, "created_at"),
        sa.Index(None, "task", "created_at"),
        sa.Index(None, "escalated", "created_at"),
        sa.Index(None, "status", "created_at"),
    )


class RequestStepRow(Base):
    """One attempted tier of one request (mirrors an entry of `requests.path`)."""

    __tablename__ = "request_steps"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("requests.id", ondelete="CASCADE")
    )
    step: Mapped[int] = mapped_column(sa.Integer())
    task: Mapped[str] = mapped_column(sa.String(128))
    tier: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    latency_ms: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    accepted: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    skipped: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("request_id", "step"),
        sa.Index(None, "tier", "id"),
        sa.Index(None, "tier", "task", "id"),
    )


class LabelRow(Base):
    """One cell of the quality matrix: what `tier` did on query `query_id` of `source`."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(sa.String(256))
    query_id: Mapped[str] = mapped_column(sa.String(256))
    task: Mapped[str] = mapped_column(sa.String(128))
    tier: Mapped[str] = mapped_column(sa.String(128))
    prompt: Mapped[str] = mapped_column(sa.Text())
    reference: Mapped[Any] = mapped_column(JSONType, nullable=True)
    quality: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    cost: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    latency_s: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    uncertainty: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    confidence: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    response: Mapped[Any] = mapped_column(JSONType, nullable=True)
    tokens_in: Mapped[int | None] = mapped_column(sa.Integer(), nullable=True)
    tokens_out: Mapped[int | None] = mapped_column(sa.Integer(), nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    outcome_extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    row_extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("source", "query_id", "tier"),
        sa.Index(None, "source", "task"),
        sa.Index(None, "task"),
    )


class FeedbackRow(Base):
    """An audited quality judgement of a served request (drives online threshold updates)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("requests.id", ondelete="CASCADE")
    )
    quality: Mapped[float] = mapped_column(sa.Float())
    reference: Mapped[Any] = mapped_column(JSONType, nullable=True)
    source: Mapped[str] = mapped_column(sa.String(64), default="audit")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        sa.CheckConstraint("quality >= 0 AND quality <= 1", name="quality_range"),
        sa.Index(None, "request_id"),
        sa.Index(None, "created_at"),
    )


class ArtifactRow(Base):
    """A versioned file or directory (router, thresholds, adapter) and whether it is live."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int] = mapped_column(sa.Integer())
    path: Mapped[str] = mapped_column(sa.Text())
    sha256: Mapped[str] = mapped_column(sa.String(64))
    config_hash: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    active: Mapped[bool] = mapped_column(sa.Boolean(), default=False)

    __table_args__ = (
        sa.UniqueConstraint("kind", "version"),
        sa.Index(None, "kind", "active"),
    )
