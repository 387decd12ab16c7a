"""Store resilience for many replicas: pool settings, retry on a real lost PostgreSQL
connection, and idempotent request logging (a retried write is never a second row)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from routenlp.store import PoolSettings, Store, StoreError, is_transient


def _rec(rid: str, query: str = "how do I reset my card pin?", **over: Any) -> dict[str, Any]:
    rec = {"id": rid, "task": "cs_intent", "query": query, "response": "card_pin_reset",
           "final_tier": "T2", "accepted": True,
           "path": [{"tier": "T1", "accepted": False, "latency_ms": 3.0, "cost": 0.0},
                    {"tier": "T2", "accepted": True, "latency_ms": 90.0, "cost": 0.001}]}
    rec.update(over)
    return rec


def _counts(url: str) -> tuple[int, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            n_req = conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one()
            n_steps = conn.execute(sa.text("SELECT count(*) FROM request_steps")).scalar_one()
        return int(n_req), int(n_steps)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_skip_mode_makes_request_logging_idempotent(url: str) -> None:
    with Store(url, duplicate_requests="skip") as store:
        assert store.log_request(_rec("r1")) == "r1"
        assert store.log_request(_rec("r1")) == "r1"  # the same request, retried
        # A group commit that repeats r1 and adds r2 writes only r2.
        assert store.log_requests([_rec("r1"), _rec("r2", "another question")]) == ["r1", "r2"]
        with pytest.raises(StoreError, match="different request"):
            store.log_request(_rec("r1", "a different question"))
    assert _counts(url) == (2, 4)  # two requests, two steps each: nothing duplicated
    with Store(url) as strict:  # the default still refuses any re-logged id
        with pytest.raises(StoreError, match="already logged"):
            strict.log_request(_rec("r2", "another question"))


def test_bad_duplicate_mode_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="duplicate_requests"):
        Store(f"sqlite:///{tmp_path / 's.db'}", duplicate_requests="ignore")


def test_transient_classification() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str | None) -> None:
            super().__init__("x")
            self.sqlstate = sqlstate

    def wrap(cls: type[sa.exc.DBAPIError], code: str | None) -> sa.exc.DBAPIError:
        return cls("INSERT", {}, Orig(code))

    assert is_transient(wrap(sa.exc.OperationalError, "40001"))  # serialization failure
    assert is_transient(wrap(sa.exc.DBAPIError, "40P01"))  # deadlock
    assert is_transient(wrap(sa.exc.OperationalError, "08006"))  # connection failure
    assert is_transient(wrap(sa.exc.OperationalError, "57P01"))  # admin shutdown (failover)
    assert is_transient(wrap(sa.exc.OperationalError, None))  # driver lost the connection
    assert not is_transient(wrap(sa.exc.IntegrityError, "23505"))  # unique violation
    assert not is_transient(wrap(sa.exc.ProgrammingError, "42P01"))  # missing table


def _kill_first_insert(store: Store, admin_url: str) -> list[int]:
    """Terminate the store's own PostgreSQL backend just before its first INSERT into
    requests: the write fails with a real lost connection, as in a failover."""
    killed: list[int] = []
    admin = sa.create_engine(admin_url)

    @event.listens_for(store._engine, "before_cursor_execute")
    def _kill(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if killed or not statement.lstrip().upper().startswith("INSERT INTO REQUESTS"):
            return
        pid = conn.connection.dbapi_connection.info.backend_pid
        with admin.connect() as c:
            c.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killed.append(pid)

    return killed


@pytest.mark.postgres
def test_lost_connection_is_retried_once_without_duplicates(
    pg_url: str, pg_server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = PoolSettings(pool_size=2, max_overflow=1, retries=3, backoff_s=0.01)
    with Store(pg_url, pool=pool) as store:
        assert store._engine.pool.size() == 2
        killed = _kill_first_insert(store, pg_server_url)
        with caplog.at_level(logging.WARNING, logger="routenlp.store.store"):
            assert store.log_request(_rec("after-failover")) == "after-failover"
        assert killed and "transient store error" in caplog.text
        assert store.get_request("after-failover") is not None
    assert _counts(pg_url) == (1, 2)


@pytest.mark.postgres
def test_retry_after_a_lost_commit_ack_is_not_a_second_row(
    pg_url: str, pg_server_url: str
) -> None:
    """The first attempt's rows already landed (commit done, acknowledgement lost); the
    retry finds them and reports success, in the default strict mode too."""
    with Store(pg_url) as other_replica:
        other_replica.log_request(_rec("landed"))
    with Store(pg_url, pool=PoolSettings(backoff_s=0.01)) as store:
        _kill_first_insert(store, pg_server_url)
        assert store.log_requests([_rec("landed"), _rec("new", "q2")]) == ["landed", "new"]
    assert _counts(pg_url) == (2, 4)


@pytest.mark.postgres
def test_a_database_that_stays_down_fails_after_bounded_retries(pg_url: str) -> None:
    pool = PoolSettings(retries=2, backoff_s=0.01, backoff_max_s=0.02)
    with Store(pg_url, pool=pool) as store:
        # Point the live store at a port nothing listens on: every attempt fails.
        store._write_engine = sa.create_engine(
            sa.engine.make_url(pg_url).set(port=1), connect_args={"connect_timeout": 1}
        )
        with pytest.raises(StoreError, match="store operation failed"):
            store.log_request(_rec("never"))
    assert _counts(pg_url) == (0, 0)
