"""The RouteNLP store: requests, quality-matrix labels, feedback and artifacts.

One `Store(url)` object is shared by the gateway, the closed loop and the CLI. SQLite (a
file, WAL mode) is the default for one process or one host; PostgreSQL by URL lets many
gateway replicas share one store. Opening a store upgrades its schema to the migrations
shipped in this package, so users never run Alembic themselves.

Durability: every write method commits before it returns. On SQLite the WAL is synced on
every commit (`synchronous=FULL`), on PostgreSQL commits are durable by default, so an
acknowledged request log survives a crash of the process or the host.

Concurrency: on SQLite every write transaction starts with `BEGIN IMMEDIATE` (it waits on
the busy timeout for the write lock up front instead of failing halfway when another
writer committed in between); readers never block writers in WAL mode. On PostgreSQL,
schema upgrades and artifact versioning from several replicas are serialised with
advisory locks (the (kind, version) unique constraint backs them up).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import math
import random
import re
import time
import uuid
from dataclasses import dataclass
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from routenlp.errors import RouteNLPError
from routenlp.matrix import MatrixRow, Outcome
from routenlp.store.models import (
    ArtifactRow,
    FeedbackRow,
    LabelRow,
    RequestRow,
    RequestStepRow,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///routenlp.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10
# Arbitrary constant key for pg_advisory_xact_lock around schema upgrades.
_PG_MIGRATION_LOCK = 0x524F5554454E4C50 & 0x7FFFFFFFFFFFFFFF
_UPSERT_CHUNK = 2000
_SQLITE_SYNC_MODES = {"FULL", "EXTRA", "NORMAL"}
_URL_HINT = "e.g. sqlite:///path/to/routenlp.db or postgresql+psycopg://user:pass@host:5432/db"


class StoreError(RouteNLPError):
    """The store cannot be opened or a store operation was refused."""


# --------------------------------------------------------------------------- records


class TierStep(BaseModel):
    """One attempted tier of a request: what the cascade saw and decided there."""

    model_config = ConfigDict(extra="allow")

    tier: str
    u: float | None = None
    threshold: float | None = None
    accepted: bool = False
    latency_ms: float | None = None
    cost: float | None = None
    error: str | None = None

    @property
    def skipped(self) -> bool:
        """True for a tier the cascade did not call (e.g. no SLA budget left)."""
        extra = self.model_extra or {}
        return bool(extra.get("skipped_reason") or extra.get("skipped"))


class RequestRecord(BaseModel):
    """A served (or failed) request with its full routing record.

    Accepts the cascade's `to_record()` keys as aliases (`steps` for `path`, `tier` for
    `final_tier`, `text` for `response`). Unknown keys are kept in `metadata`. Derived
    fields left out are filled in: `escalated` (some attempted tier was not accepted),
    `total_cost` (sum of step costs) and `sla_met` (latency_ms <= sla_ms).
    """

    model_config = ConfigDict(extra="allow")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    task: str = Field(min_length=1, max_length=128)
    query: str
    response: str | None = Field(None, validation_alias=AliasChoices("response", "text"))
    final_tier: str | None = Field(None, validation_alias=AliasChoices("final_tier", "tier"))
    accepted: bool = False
    escalated: bool | None = None
    path: list[TierStep] = Field(
        default_factory=list, validation_alias=AliasChoices("path", "steps", "tiers_tried")
    )
    total_cost: float | None = None
    latency_ms: float | None = None
    sla_ms: float | None = None
    sla_met: bool | None = None
    router: dict[str, Any] | None = Field(
        None, validation_alias=AliasChoices("router", "router_decision", "route")
    )
    artifact_versions: dict[str, Any] | None = Field(
        None, validation_alias=AliasChoices("artifact_versions", "artifacts")
    )
    status: str = Field("ok", min_length=1, max_length=32)
    error: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _derive(self) -> RequestRecord:
        if self.escalated is None:
            self.escalated = any(not step.accepted for step in self.path)
        if self.total_cost is None:
            self.total_cost = float(sum(step.cost or 0.0 for step in self.path))
        if self.sla_met is None and self.sla_ms is not None and self.latency_ms is not None:
            self.sla_met = self.latency_ms <= self.sla_ms
        return self

    @property
    def escalated_or_failed(self) -> bool:
        return bool(self.escalated) or self.status != "ok"


class FeedbackRecord(BaseModel):
    """Audited quality of a served request, joined with what was served (for ACI updates)."""

    id: int
    request_id: str
    quality: float
    reference: Any = None
    source: str
    created_at: datetime
    task: str
    final_tier: str | None = None
    accepted: bool = False
    u: float | None = None
    threshold: float | None = None


class ArtifactRecord(BaseModel):
    """One registered version of an artifact kind."""

    id: int
    kind: str
    version: int
    path: str
    sha256: str
    config_hash: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime
    active: bool


# --------------------------------------------------------------------------- helpers


def redact_url(url: str | URL) -> str:
    """The URL with any password replaced, safe for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", str(url))


def tree_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory tree (sorted relative paths + file hashes).

    The tree hash covers names and contents, not timestamps, so an identical copy of an
    artifact directory has the same hash anywhere.
    """
    p = Path(path)
    if p.is_file():
        return _file_sha256(p)
    if p.is_dir():
        digest = hashlib.sha256()
        files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.as_posix())
        for f in files:
            digest.update(f.relative_to(p).as_posix().encode("utf-8"))
            digest.update(b"\0")
            digest.update(_file_sha256(f).encode("ascii"))
            digest.update(b"\n")
        return digest.hexdigest()
    raise StoreError(f"artifact path not found: {p}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    """JSON-compatible copy: pydantic/dataclass/numpy-ish values converted, NaN -> None."""
    plain = to_jsonable_python(value, fallback=str)
    return _drop_nan(plain)


def _drop_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _drop_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_nan(v) for v in value]
    return value


def _num(value: float | None) -> float | None:
    """Floats for numeric columns: NaN is stored as NULL on every backend."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of sorted values."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    n = len(sorted_values)
    pos = (q / 100.0) * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def migrations_dir() -> Path:
    """The Alembic script directory shipped inside the package."""
    res = importlib.resources.files("routenlp.store").joinpath("migrations")
    path = Path(str(res))
    if not (path / "env.py").is_file():
        raise StoreError(
            f"store migrations not found at {path}",
            hint="reinstall RouteNLP; the package must be installed as files, not zipped",
        )
    return path


# --------------------------------------------------------------------------- engine


def _parse_url(url: str | URL) -> URL:
    if isinstance(url, URL):
        parsed = url
    else:
        if not isinstance(url, str) or not url.strip():
            raise StoreError("store URL is empty", hint=_URL_HINT)
        try:
            parsed = make_url(url.strip())
        except sa.exc.ArgumentError:
            raise StoreError(
                f"invalid store URL {redact_url(url)!r}", hint=_URL_HINT
            ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the dependency
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported store backend {backend!r} in {redact_url(parsed)!r}: "
            "RouteNLP stores use SQLite or PostgreSQL",
            hint=_URL_HINT,
        )
    return parsed


def _sqlite_is_memory(url: URL) -> bool:
    db = url.database
    return not db or db == ":memory:" or url.query.get("mode") == "memory"


@dataclass(frozen=True)
class PoolSettings:
    """PostgreSQL connection pool and transient-error retry settings of one Store.

    Why: each gateway replica holds `pool_size + max_overflow` connections at most, so
    replicas x that must stay under the server's max_connections; `pool_recycle_s` drops
    connections a proxy or failover may have cut; writes that hit a transient error
    (connection lost, failover, serialization failure, deadlock) are retried
    `retries` times with jittered exponential backoff capped at `backoff_max_s`."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout_s: float = 30.0
    pool_recycle_s: float = 1800.0
    retries: int = 3
    backoff_s: float = 0.05
    backoff_max_s: float = 2.0


# SQLSTATE classes/codes worth retrying: connection exceptions, serialization failure,
# deadlock, admin shutdown / crash shutdown / cannot connect now (failover, restart).
_TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "57P01", "57P02", "57P03")


def is_transient(err: BaseException) -> bool:
    """True for a database error that a retry of the whole transaction can fix."""
    if isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated:
        return True
    orig = getattr(err, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code:
        return any(str(code).startswith(c) for c in _TRANSIENT_SQLSTATES)
    # No SQLSTATE: the driver lost the connection (psycopg OperationalError) or SQLite
    # reported the database as locked past its busy timeout.
    return isinstance(err, sa.exc.OperationalError)


def backoff_delays(settings: PoolSettings) -> Iterator[float]:
    """Jittered exponential delays, one per retry, each capped at backoff_max_s."""
    for attempt in range(settings.retries):
        cap = min(settings.backoff_max_s, settings.backoff_s * (2**attempt))
        yield cap * (0.5 + random.random() / 2)


def make_engine(
    url: str | URL, *, sqlite_synchronous: str = "FULL", pool: PoolSettings | None = None
) -> Engine:
    """An engine with RouteNLP's connection settings (no schema upgrade)."""
    parsed = _parse_url(url)
    sync = str(sqlite_synchronous).upper()
    if sync not in _SQLITE_SYNC_MODES:
        raise StoreError(
            f"sqlite_synchronous must be one of {sorted(_SQLITE_SYNC_MODES)}, "
            f"got {sqlite_synchronous!r}"
        )
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, sync)
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        pool = pool or PoolSettings()
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=pool.pool_size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.pool_timeout_s,
            pool_recycle=pool.pool_recycle_s,
            connect_args=connect_args,
        )
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as err:
        raise StoreError(
            f"cannot use store URL {redact_url(parsed)!r}: {err}", hint=_URL_HINT
        ) from None


def _sqlite_engine(url: URL, synchronous: str) -> Engine:
    memory = _sqlite_is_memory(url)
    if not memory:
        path = Path(str(url.database)).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"cannot create the directory {path.parent} for the SQLite store: "
                f"{err.strerror or err}"
            ) from None
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    }
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, else each is a new DB
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN itself (pysqlite's implicit
        # transactions do not cover DDL and cannot start IMMEDIATE transactions).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("routenlp_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _db_error(action: str, url: str, err: Exception) -> StoreError:
    orig = getattr(err, "orig", None) or err
    detail = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return StoreError(f"{action} ({url}): {detail}")


# --------------------------------------------------------------------------- store


class Store:
    """Persistence for requests, labels, feedback and artifacts (thread-safe).

    `Store(url)` connects, upgrades the schema to the packaged migrations' head and is
    then ready; use one instance per process and call `close()` (or use `with`).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        sqlite_synchronous: str = "FULL",
        pool: PoolSettings | None = None,
        duplicate_requests: str = "error",
    ) -> None:
        """Open (and upgrade) the store at `url`.

        `sqlite_synchronous="NORMAL"` trades durability on power loss or OS crash for
        faster commits (a process crash still loses nothing in WAL mode); the default
        FULL syncs the WAL on every commit. `pool`: PostgreSQL pool and retry settings.
        `duplicate_requests="skip"` makes request logging idempotent: re-logging an id that
        is already stored with the same task and query (a client retrying a request whose
        replica died after the commit) returns its id without a second row; "error"
        (default) refuses any re-logged id.
        """
        if duplicate_requests not in ("error", "skip"):
            raise StoreError(
                f"duplicate_requests must be 'error' or 'skip', got {duplicate_requests!r}"
            )
        self.pool = pool or PoolSettings()
        self.duplicate_requests = duplicate_requests
        parsed = _parse_url(url)
        self.url = redact_url(parsed)
        self.backend: str = parsed.get_backend_name()
        self._engine = make_engine(parsed, sqlite_synchronous=sqlite_synchronous, pool=self.pool)
        # Write transactions take the SQLite write lock up front (see module docstring).
        self._write_engine: Engine = (
            self._engine.execution_options(routenlp_begin="IMMEDIATE")
            if self.backend == "sqlite"
            else self._engine
        )
        try:
            self._upgrade()
        except BaseException:
            self._engine.dispose()
            raise

    # ------------------------------------------------------------------ lifecycle

    def _upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.util.exc import CommandError

        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
        try:
            with self._write_engine.begin() as conn:
                if self.backend == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _PG_MIGRATION_LOCK},
                    )
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except CommandError as err:
            raise StoreError(
                f"cannot upgrade the store schema at {self.url}: {err}",
                hint="the database may have been created by a newer RouteNLP version",
            ) from None
        except sa.exc.DBAPIError as err:
            error = _db_error("cannot open the store", self.url, err)
            error.hint = (
                "check that the database server is running and that the URL's host, port, "
                "user and database are right"
                if self.backend == "postgresql"
                else "check that the path is a writable SQLite database file"
            )
            raise error from None

    def close(self) -> None:
        """Release all connections (the store is unusable afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """A session committed on success; database failures become StoreError."""
        engine = self._write_engine if write else self._engine
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except sa.exc.IntegrityError:
            raise
        except sa.exc.DBAPIError as err:
            raise _db_error("store operation failed", self.url, err) from None

    # ------------------------------------------------------------------ requests

    def log_request(self, record: Mapping[str, Any] | BaseModel) -> str:
        """Persist one request record (committed before returning) and return its id."""
        rec = _coerce_request(record)
        self._insert_requests([rec])
        return rec.id

    def log_requests(self, records: Sequence[Mapping[str, Any] | BaseModel]) -> list[str]:
        """Persist several request records in ONE transaction (group commit) and return their
        ids. All or nothing: a duplicate id or a database failure commits none of them."""
        recs = [_coerce_request(r) for r in records]
        if not recs:
            return []
        self._insert_requests(recs)
        return [rec.id for rec in recs]

    def _insert_requests(self, recs: Sequence[RequestRecord]) -> None:
        """Insert request records in one transaction, retried on transient errors.

        A retry after a lost commit acknowledgement may find its own rows already there:
        those (same id, task and query) count as written, never as a second row. The same
        rule applies to every write when `duplicate_requests="skip"`; otherwise a re-logged
        id is refused ("already logged") and nothing of the batch is committed."""
        delays = backoff_delays(self.pool)
        attempt = 0
        while True:
            skip = self.duplicate_requests == "skip" or attempt > 0
            try:
                with Session(self._write_engine, expire_on_commit=False) as session:
                    with session.begin():
                        todo = list(recs)
                        if skip:
                            todo = self._drop_already_logged(session, todo)
                        pairs = [_request_rows(rec) for rec in todo]
                        session.add_all([row for row, _ in pairs])
                        session.flush()  # parents first: request_steps has a foreign key
                        session.add_all([step for _, steps in pairs for step in steps])
                return
            except sa.exc.IntegrityError as err:
                if skip:  # a concurrent writer inserted the same id: check it next round
                    err_delay = next(delays, None)
                    if err_delay is not None:
                        attempt += 1
                        time.sleep(err_delay)
                        continue
                what = (
                    f"request id {recs[0].id!r} is already logged"
                    if len(recs) == 1
                    else f"a request id in this batch of {len(recs)} is already logged: "
                    f"{str(getattr(err, 'orig', err)).splitlines()[0]}"
                )
                raise StoreError(what) from None
            except sa.exc.DBAPIError as err:
                delay = next(delays, None) if is_transient(err) else None
                if delay is None:
                    raise _db_error("store operation failed", self.url, err) from None
                log.warning("transient store error (retry %d in %.2fs): %s", attempt + 1,
                            delay, str(getattr(err, "orig", err)).strip().splitlines()[0])
                attempt += 1
                time.sleep(delay)

    @staticmethod
    def _drop_already_logged(
        session: Session, recs: Sequence[RequestRecord]
    ) -> list[RequestRecord]:
        """`recs` minus those already stored as the same request (id, task, query); a
        stored id with a different task or query is a real collision and is refused."""
        ids = [r.id for r in recs]
        found = {
            rid: (task, query)
            for rid, task, query in session.execute(
                sa.select(RequestRow.id, RequestRow.task, RequestRow.query).where(
                    RequestRow.id.in_(ids)
                )
            )
        }
        keep = []
        for rec in recs:
            if rec.id not in found:
                keep.append(rec)
            elif found[rec.id] != (rec.task, rec.query):
                raise StoreError(
                    f"request id {rec.id!r} is already logged for a different request"
                )
        return keep

    def get_request(self, request_id: str) -> RequestRecord | None:
        """The logged record, or None for an unknown id."""
        with self._session() as session:
            row = session.get(RequestRow, request_id)
            return None if row is None else _request_record(row)

    def requests(
        self,
        task: str | None = None,
        escalated_only: bool = False,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[RequestRecord]:
        """Logged requests, newest first.

        `escalated_only` keeps requests where a cheaper tier was rejected or failed, or
        whose status is not "ok": the closed loop's distillation candidates. `since` is
        inclusive.
        """
        stmt = sa.select(RequestRow)
        if task is not None:
            stmt = stmt.where(RequestRow.task == task)
        if escalated_only:
            stmt = stmt.where(sa.or_(RequestRow.escalated.is_(True), RequestRow.status != "ok"))
        if since is not None:
            stmt = stmt.where(RequestRow.created_at >= since)
        stmt = stmt.order_by(RequestRow.created_at.desc(), RequestRow.id.desc())
        if limit is not None:
            stmt = stmt.limit(_positive(limit, "limit"))
        with self._session() as session:
            return [_request_record(row) for row in session.scalars(stmt)]

    def latency_profile(
        self, tier: str, task: str | None = None, window: int = 1000
    ) -> tuple[float, float] | None:
        """(p50_ms, p99_ms) of the tier's last `window` calls, or None without any.

        Computed from the per-tier path of logged requests (calls that timed out or failed
        count with the time they took; tiers skipped without a call do not count).
        Percentiles interpolate linearly between order statistics (numpy's default).
        """
        stmt = (
            sa.select(RequestStepRow.latency_ms)
            .where(
                RequestStepRow.tier == tier,
                RequestStepRow.latency_ms.is_not(None),
                RequestStepRow.skipped.is_(False),
            )
            .order_by(RequestStepRow.id.desc())
            .limit(_positive(window, "window"))
        )
        if task is not None:
            stmt = stmt.where(RequestStepRow.task == task)
        with self._session() as session:
            values = sorted(float(v) for v in session.scalars(stmt))
        if not values:
            return None
        return percentile(values, 50.0), percentile(values, 99.0)

    # ------------------------------------------------------------------ labels

    def add_labels(self, rows: Iterable[MatrixRow | Mapping[str, Any]], source: str) -> int:
        """Upsert quality-matrix rows under `source`; returns the (query, tier) cells written.

        A cell already present for (source, query id, tier) is replaced, so relabelling a
        tier or resuming an interrupted labelling run is idempotent.
        """
        if not isinstance(source, str) or not source.strip() or len(source) > 256:
            raise StoreError("label source must be a non-empty name of at most 256 characters")
        now = utcnow()
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in rows:
            row = _coerce_matrix_row(raw)
            row_extra = _json_safe(row.model_extra) if row.model_extra else None
            reference = _json_safe(row.reference)
            for tier, oc in row.outcomes.items():
                cells[(row.id, tier)] = {
                    "source": source,
                    "query_id": row.id,
                    "task": row.task,
                    "tier": tier,
                    "prompt": row.prompt,
                    "reference": reference,
                    "quality": _num(oc.quality),
                    "cost": _num(oc.cost),
                    "latency_s": _num(oc.latency_s),
                    "uncertainty": _num(oc.uncertainty),
                    "confidence": _num(oc.confidence),
                    "response": _json_safe(oc.response),
                    "tokens_in": oc.tokens_in,
                    "tokens_out": oc.tokens_out,
                    "error": oc.error,
                    "outcome_extra": _json_safe(oc.model_extra) if oc.model_extra else None,
                    "row_extra": row_extra,
                    "created_at": now,
                    "updated_at": now,
                }
        if not cells:
            return 0
        values = list(cells.values())
        insert = pg_dialect.insert if self.backend == "postgresql" else sqlite_dialect.insert
        keys = ("source", "query_id", "tier")
        table = LabelRow.__table__
        stmt = insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={
                c.name: stmt.excluded[c.name]
                for c in table.columns
                if c.name not in (*keys, "id", "created_at")
            },
        )
        with self._session(write=True) as session:
            conn = session.connection()
            # executemany of one cached statement (batched by SQLAlchemy's insertmanyvalues);
            # cells are unique per key, as PostgreSQL requires within one statement.
            for start in range(0, len(values), _UPSERT_CHUNK):
                conn.execute(stmt, values[start : start + _UPSERT_CHUNK])
        return len(values)

    def quality_matrix(
        self, source: str | None = None, task: str | None = None
    ) -> list[MatrixRow]:
        """Rebuild routing-matrix rows from the labels, in first-labelled order.

        Without `source`, rows of different sources stay separate (the same query id may
        then appear once per source).
        """
        table = LabelRow.__table__
        stmt = sa.select(table)
        if source is not None:
            stmt = stmt.where(table.c.source == source)
        if task is not None:
            stmt = stmt.where(table.c.task == task)
        stmt = stmt.order_by(table.c.id)
        out: dict[tuple[str, str], MatrixRow] = {}
        with self._session() as session:
            for rec in session.execute(stmt).mappings():
                key = (rec["source"], rec["query_id"])
                row = out.get(key)
                if row is None:
                    row = MatrixRow(
                        id=rec["query_id"],
                        task=rec["task"],
                        prompt=rec["prompt"],
                        reference=rec["reference"],
                        outcomes={},
                        **(rec["row_extra"] or {}),
                    )
                    out[key] = row
                row.outcomes[rec["tier"]] = Outcome(
                    quality=rec["quality"],
                    cost=rec["cost"],
                    latency_s=rec["latency_s"],
                    uncertainty=rec["uncertainty"],
                    confidence=rec["confidence"],
                    response=rec["response"],
                    tokens_in=rec["tokens_in"],
                    tokens_out=rec["tokens_out"],
                    error=rec["error"],
                    **(rec["outcome_extra"] or {}),
                )
        return list(out.values())

    def label_sources(self) -> list[str]:
        """Names of the label sources (matrices) in the store."""
        with self._session() as session:
            return list(
                session.scalars(sa.select(LabelRow.source).distinct().order_by(LabelRow.source))
            )

    # ------------------------------------------------------------------ feedback

    def add_feedback(
        self,
        request_id: str,
        quality: float,
        reference: Any = None,
        source: str = "audit",
    ) -> int:
        """Record an audited quality in [0, 1] for a logged request; returns the feedback id."""
        try:
            q = float(quality)
        except (TypeError, ValueError):
            raise StoreError(f"feedback quality must be a number, got {quality!r}") from None
        if not (0.0 <= q <= 1.0):  # also rejects NaN
            raise StoreError(f"feedback quality must be in [0, 1], got {quality!r}")
        if not source or len(source) > 64:
            raise StoreError("feedback source must be a non-empty name of at most 64 characters")
        unknown = StoreError(
            f"unknown request id {request_id!r}: feedback must refer to a logged request"
        )
        try:
            with self._session(write=True) as session:
                if session.get(RequestRow, request_id) is None:
                    raise unknown
                row = FeedbackRow(
                    request_id=request_id,
                    quality=q,
                    reference=_json_safe(reference),
                    source=source,
                    created_at=utcnow(),
                )
                session.add(row)
                session.flush()
                return int(row.id)
        except sa.exc.IntegrityError:
            raise unknown from None  # the request vanished between check and insert

    def feedback_since(
        self,
        since: datetime | None = None,
        *,
        after_id: int | None = None,
        task: str | None = None,
        source: str | None = None,
        limit: int | None = None,
    ) -> list[FeedbackRecord]:
        """Feedback oldest first, joined with the served tier, u and threshold.

        `since` (inclusive, by time) or `after_id` (exclusive, a cursor: pass the last id
        seen) select new feedback for online threshold updates.
        """
        stmt = sa.select(FeedbackRow, RequestRow).join(
            RequestRow, FeedbackRow.request_id == RequestRow.id
        )
        if since is not None:
            stmt = stmt.where(FeedbackRow.created_at >= since)
        if after_id is not None:
            stmt = stmt.where(FeedbackRow.id > after_id)
        if task is not None:
            stmt = stmt.where(RequestRow.task == task)
        if source is not None:
            stmt = stmt.where(FeedbackRow.source == source)
        stmt = stmt.order_by(FeedbackRow.id)
        if limit is not None:
            stmt = stmt.limit(_positive(limit, "limit"))
        out: list[FeedbackRecord] = []
        with self._session() as session:
            for fb, req in session.execute(stmt).tuples():
                served = _served_step(req.path or [], req.final_tier)
                out.append(
                    FeedbackRecord(
                        id=fb.id,
                        request_id=fb.request_id,
                        quality=fb.quality,
                        reference=fb.reference,
                        source=fb.source,
                        created_at=fb.created_at,
                        task=req.task,
                        final_tier=req.final_tier,
                        accepted=req.accepted,
                        u=served.get("u") if served else None,
                        threshold=served.get("threshold") if served else None,
                    )
                )
        return out

    # ------------------------------------------------------------------ artifacts

    def register_artifact(
        self,
        kind: str,
        path: str | Path,
        *,
        sha256: str | None = None,
        config_hash: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        activate: bool = True,
    ) -> int:
        """Register the next version of `kind` (1, 2, ...) and return its number.

        The sha256 of the file or directory tree is computed when not given; local paths
        are stored absolute so other processes find them. With `activate`, this version
        becomes the one `active_artifact(kind)` returns.
        """
        if not isinstance(kind, str) or not kind.strip() or len(kind) > 64:
            raise StoreError("artifact kind must be a non-empty name of at most 64 characters")
        p = Path(path)
        if sha256 is None:
            sha256 = tree_sha256(p)
        elif not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise StoreError(f"sha256 must be 64 hex digits, got {sha256!r}")
        stored_path = str(p.resolve()) if p.exists() else str(path)
        meta = _json_safe(dict(metadata)) if metadata else None
        for attempt in range(5):
            try:
                with self._session(write=True) as session:
                    self._lock_kind(session, kind)
                    current = session.scalar(
                        sa.select(sa.func.max(ArtifactRow.version)).where(ArtifactRow.kind == kind)
                    )
                    version = int(current or 0) + 1
                    if activate:
                        session.execute(
                            sa.update(ArtifactRow)
                            .where(ArtifactRow.kind == kind, ArtifactRow.active.is_(True))
                            .values(active=False)
                        )
                    session.add(
                        ArtifactRow(
                            kind=kind,
                            version=version,
                            path=stored_path,
                            sha256=sha256.lower(),
                            config_hash=config_hash,
                            meta=meta,
                            created_at=utcnow(),
                            active=activate,
                        )
                    )
                return version
            except sa.exc.IntegrityError:
                # A writer without the lock (e.g. an older client) took this version.
                log.debug("artifact %s version race (attempt %d), retrying", kind, attempt + 1)
        raise StoreError(f"could not register a new {kind!r} artifact: too many concurrent writers")

    def activate_artifact(self, kind: str, version: int) -> ArtifactRecord:
        """Make an existing version the active one (e.g. roll back a bad router)."""
        with self._session(write=True) as session:
            self._lock_kind(session, kind)
            row = session.scalar(
                sa.select(ArtifactRow).where(
                    ArtifactRow.kind == kind, ArtifactRow.version == version
                )
            )
            if row is None:
                raise StoreError(f"no {kind!r} artifact with version {version}")
            session.execute(
                sa.update(ArtifactRow)
                .where(ArtifactRow.kind == kind, ArtifactRow.id != row.id)
                .values(active=False)
            )
            row.active = True
            session.flush()
            return _artifact_record(row)

    def _lock_kind(self, session: Session, kind: str) -> None:
        """Serialise version numbering and activation of one kind across PostgreSQL clients.

        (SQLite write transactions are already serialised by BEGIN IMMEDIATE.)
        """
        if self.backend == "postgresql":
            session.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"routenlp.artifacts:{kind}"},
            )

    def active_artifact(self, kind: str) -> ArtifactRecord | None:
        """The active version of `kind`, or None when none is registered or active."""
        stmt = (
            sa.select(ArtifactRow)
            .where(ArtifactRow.kind == kind, ArtifactRow.active.is_(True))
            .order_by(ArtifactRow.version.desc())
            .limit(1)
        )
        with self._session() as session:
            row = session.scalar(stmt)
            return None if row is None else _artifact_record(row)

    def get_artifact(self, kind: str, version: int) -> ArtifactRecord | None:
        stmt = sa.select(ArtifactRow).where(
            ArtifactRow.kind == kind, ArtifactRow.version == version
        )
        with self._session() as session:
            row = session.scalar(stmt)
            return None if row is None else _artifact_record(row)

    def list_artifacts(self, kind: str | None = None) -> list[ArtifactRecord]:
        """All registered versions, by kind then version."""
        stmt = sa.select(ArtifactRow).order_by(ArtifactRow.kind, ArtifactRow.version)
        if kind is not None:
            stmt = stmt.where(ArtifactRow.kind == kind)
        with self._session() as session:
            return [_artifact_record(row) for row in session.scalars(stmt)]


# --------------------------------------------------------------------------- conversions


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StoreError(f"{name} must be a positive integer, got {value!r}")
    return value


def _validation_message(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "record"
    return f"{loc}: {first['msg']}"


def _coerce_request(record: Mapping[str, Any] | BaseModel) -> RequestRecord:
    if isinstance(record, RequestRecord):
        return record
    data: Any = record.model_dump() if isinstance(record, BaseModel) else record
    if not isinstance(data, Mapping):
        raise StoreError(
            f"a request record must be a mapping or pydantic model, got {type(record).__name__}"
        )
    try:
        return RequestRecord.model_validate(dict(data))
    except ValidationError as err:
        raise StoreError(f"invalid request record: {_validation_message(err)}") from None


def _request_rows(rec: RequestRecord) -> tuple[RequestRow, list[RequestStepRow]]:
    """The requests row and its request_steps rows for one record."""
    meta = dict(rec.metadata or {})
    meta.update(rec.model_extra or {})
    row = RequestRow(
        id=rec.id,
        created_at=rec.created_at,
        task=rec.task,
        query=rec.query,
        response=rec.response,
        final_tier=rec.final_tier,
        accepted=rec.accepted,
        escalated=bool(rec.escalated),
        path=_json_safe([step.model_dump() for step in rec.path]),
        total_cost=_num(rec.total_cost) or 0.0,
        latency_ms=_num(rec.latency_ms),
        sla_ms=_num(rec.sla_ms),
        sla_met=rec.sla_met,
        router=_json_safe(rec.router) if rec.router is not None else None,
        artifact_versions=(
            _json_safe(rec.artifact_versions) if rec.artifact_versions is not None else None
        ),
        status=rec.status,
        error=rec.error,
        meta=_json_safe(meta) if meta else None,
    )
    steps = [
        RequestStepRow(
            request_id=rec.id,
            step=i,
            task=rec.task,
            tier=step.tier,
            created_at=rec.created_at,
            latency_ms=_num(step.latency_ms),
            accepted=step.accepted,
            skipped=step.skipped,
            error=step.error,
        )
        for i, step in enumerate(rec.path)
    ]
    return row, steps


def _coerce_matrix_row(raw: MatrixRow | Mapping[str, Any]) -> MatrixRow:
    if isinstance(raw, MatrixRow):
        return raw
    try:
        return MatrixRow.model_validate(raw)
    except ValidationError as err:
        raise StoreError(f"invalid quality-matrix row: {_validation_message(err)}") from None


def _request_record(row: RequestRow) -> RequestRecord:
    return RequestRecord(
        id=row.id,
        created_at=row.created_at,
        task=row.task,
        query=row.query,
        response=row.response,
        final_tier=row.final_tier,
        accepted=row.accepted,
        escalated=row.escalated,
        path=[TierStep.model_validate(step) for step in row.path or []],
        total_cost=row.total_cost,
        latency_ms=row.latency_ms,
        sla_ms=row.sla_ms,
        sla_met=row.sla_met,
        router=row.router,
        artifact_versions=row.artifact_versions,
        status=row.status,
        error=row.error,
        metadata=row.meta,
    )


def _served_step(path: list[dict[str, Any]], tier: str | None) -> dict[str, Any] | None:
    """The path entry that produced the served answer (last one of the final tier)."""
    for step in reversed(path):
        if tier is None or step.get("tier") == tier:
            return step
    return None


def _artifact_record(row: ArtifactRow) -> ArtifactRecord:
    return ArtifactRecord(
        id=row.id,
        kind=row.kind,
        version=row.version,
        path=row.path,
        sha256=row.sha256,
        config_hash=row.config_hash,
        metadata=row.meta,
        created_at=row.created_at,
        active=row.active,
    )
