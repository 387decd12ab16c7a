"""The store on real databases: one suite, run on SQLite (a temp file) and PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from routenlp.errors import RouteNLPError
from routenlp.matrix import MatrixRow, Outcome, iter_matrix
from routenlp.store import RequestRecord, Store, StoreError, migrations_dir
from routenlp.store.models import Base

TABLES = {"requests", "request_steps", "labels", "feedback", "artifacts"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str):
    with Store(url) as s:
        yield s


def _head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _record(i: int = 0, **over):
    rec = {
        "task": "cs_intent",
        "query": f"how do I reset my card pin? #{i}",
        "response": "card_pin_reset",
        "final_tier": "T2",
        "accepted": True,
        "path": [
            {"tier": "T1", "u": 0.42, "threshold": 0.2, "accepted": False,
             "latency_ms": 3.5, "cost": 0.0, "error": None},
            {"tier": "T2", "u": 0.05, "threshold": 0.3, "accepted": True,
             "latency_ms": 120.25, "cost": 0.0004, "error": None},
        ],
        "latency_ms": 130.0,
        "sla_ms": 500.0,
        "router": {"tier": "T1", "probs": {"T1": 0.6, "T2": 0.3, "T3": 0.1}},
        "artifact_versions": {"router": 3, "thresholds": 2},
    }
    rec.update(over)
    return rec


# ------------------------------------------------------------------ schema


def test_migrations_upgrade_empty_database_to_head(url: str) -> None:
    with Store(url) as s:
        insp = sa.inspect(s._engine)
        assert TABLES <= set(insp.get_table_names())
        with s._engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == _head()
    with Store(url) as again:  # reopening an up-to-date database is a no-op
        assert again.requests() == []


def test_models_equal_migrated_schema(store: Store) -> None:
    with store._engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        # The comparison is not vacuous: a model-only column shows up as a difference.
        changed = sa.MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(changed)
        changed.tables["labels"].append_column(sa.Column("extra_col", sa.Integer()))
        diff = compare_metadata(ctx, changed)
        assert [d[0] for d in diff] == ["add_column"]


# ------------------------------------------------------------------ requests


def test_request_round_trip_with_per_tier_path(store: Store) -> None:
    when = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    rid = store.log_request(_record(id="req-1", created_at=when, client="acme"))
    assert rid == "req-1"
    got = store.get_request(rid)
    assert got is not None
    assert got.created_at == when and got.created_at.tzinfo is not None
    assert got.task == "cs_intent" and got.final_tier == "T2" and got.accepted
    assert [s.tier for s in got.path] == ["T1", "T2"]
    assert got.path[0].u == 0.42 and got.path[0].threshold == 0.2
    assert not got.path[0].accepted and got.path[1].accepted
    assert got.path[1].latency_ms == 120.25 and got.path[1].cost == 0.0004
    assert got.escalated is True  # T1 was rejected
    assert got.total_cost == pytest.approx(0.0004)  # derived from the steps
    assert got.sla_met is True  # 130 ms <= 500 ms
    assert got.router == {"tier": "T1", "probs": {"T1": 0.6, "T2": 0.3, "T3": 0.1}}
    assert got.artifact_versions == {"router": 3, "thresholds": 2}
    assert got.metadata == {"client": "acme"}  # unknown keys are kept, not dropped
    assert got.status == "ok" and got.error is None

    # The cascade's key names and pydantic models are accepted too.
    rid2 = store.log_request(
        RequestRecord.model_validate(
            {"task": "t", "query": "q", "text": "a", "tier": "T1",
             "steps": [{"tier": "T1", "accepted": True, "latency_ms": 1.0,
                        "skipped_reason": None}]}
        )
    )
    got2 = store.get_request(rid2)
    assert got2 is not None and got2.response == "a" and got2.final_tier == "T1"
    assert got2.escalated is False and got2.created_at.tzinfo is not None

    assert store.get_request("no-such-id") is None
    with pytest.raises(StoreError, match="already logged"):
        store.log_request(_record(id="req-1"))
    with pytest.raises(StoreError, match="task"):
        store.log_request({"query": "no task"})


def test_requests_filters_for_the_closed_loop(store: Store) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ok_path = [{"tier": "T1", "accepted": True, "latency_ms": 2.0}]
    store.log_request(_record(id="a", created_at=t0, path=ok_path))
    store.log_request(_record(id="b", created_at=t0 + timedelta(seconds=1)))  # escalated
    store.log_request(
        _record(id="c", created_at=t0 + timedelta(seconds=2), path=ok_path,
                status="error", error="all tiers failed")
    )
    store.log_request(_record(id="d", task="legal_clause", created_at=t0 + timedelta(seconds=3)))

    assert [r.id for r in store.requests()] == ["d", "c", "b", "a"]  # newest first
    assert [r.id for r in store.requests(task="cs_intent")] == ["c", "b", "a"]
    assert [r.id for r in store.requests(escalated_only=True)] == ["d", "c", "b"]
    assert [r.id for r in store.requests(task="cs_intent", escalated_only=True)] == ["c", "b"]
    assert [r.id for r in store.requests(since=t0 + timedelta(seconds=2))] == ["d", "c"]
    assert [r.id for r in store.requests(limit=2)] == ["d", "c"]
    with pytest.raises(StoreError, match="limit"):
        store.requests(limit=0)


def test_acknowledged_request_survives_a_crash(url: str) -> None:
    """A child logs one request and dies without closing: the record must be there."""
    code = textwrap.dedent(
        f"""
        import os
        from routenlp.store import Store
        s = Store({url!r})
        print(s.log_request({{"id": "crash-1", "task": "t", "query": "q"}}), flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "crash-1"
    with Store(url) as s:
        got = s.get_request("crash-1")
        assert got is not None and got.query == "q"


def test_concurrent_sqlite_writers_lose_nothing(tmp_path: Path) -> None:
    """Two threads log 200 requests each into one SQLite file: every record lands.

    synchronous=NORMAL only shortens the fsyncs; WAL locking is the same as by default.
    """
    store = Store(f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="NORMAL")
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            for i in range(200):
                store.log_request(_record(i, id=f"{prefix}-{i}"))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = {r.id for r in store.requests()}
    assert ids == {f"{p}-{i}" for p in ("w1", "w2") for i in range(200)}
    with store._engine.connect() as conn:
        n_steps = conn.execute(sa.text("SELECT count(*) FROM request_steps")).scalar()
    assert n_steps == 800  # two steps each
    store.close()


def test_concurrent_artifact_registration_from_two_replicas(url: str, tmp_path: Path) -> None:
    """Two Store instances (like two gateway replicas) register versions at once."""
    f = tmp_path / "router.pt"
    f.write_bytes(b"w")
    replicas = [Store(url), Store(url)]
    got: list[int] = []
    errors: list[BaseException] = []

    def register(s: Store) -> None:
        try:
            for _ in range(10):
                got.append(s.register_artifact("router", f, sha256="0" * 64))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=register, args=(s,)) for s in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got) == list(range(1, 21))
    listed = replicas[0].list_artifacts("router")
    assert [a.version for a in listed] == list(range(1, 21))
    assert sum(a.active for a in listed) == 1
    for s in replicas:
        s.close()


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "dir" / "r.db"
    with Store(f"sqlite:///{db}") as s:
        assert db.exists()  # parent directories are created
        with s._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


# ------------------------------------------------------------------ latency


def test_latency_profile_percentiles(store: Store) -> None:
    for i, ms in enumerate([50.0, 10.0, 40.0, 20.0, 30.0]):
        store.log_request(_record(
            i, path=[{"tier": "T1", "accepted": False, "latency_ms": ms},
                     {"tier": "T2", "accepted": True, "latency_ms": 100.0 + i}],
        ))
    # Not calls: a skipped tier and a step without latency do not count.
    store.log_request(_record(9, path=[
        {"tier": "T1", "accepted": False, "latency_ms": 0.0, "skipped_reason": "sla"},
        {"tier": "T1", "accepted": False, "latency_ms": None},
        {"tier": "T2", "accepted": True, "latency_ms": 105.0},
    ]))
    store.log_request(_record(10, task="other", path=[{"tier": "T1", "latency_ms": 1000.0}]))

    # cs_intent T1 sorted: 10 20 30 40 50 -> p50 = 30; p99 = 40 + 0.96 * 10 = 49.6
    p50, p99 = store.latency_profile("T1", task="cs_intent")
    assert p50 == pytest.approx(30.0) and p99 == pytest.approx(49.6)
    # all tasks: 10 20 30 40 50 1000 -> p50 = 35; p99 = 50 + 0.95 * 950 = 952.5
    assert store.latency_profile("T1") == pytest.approx((35.0, 952.5))
    # last 2 T1 calls of cs_intent (in logging order: 20, 30) -> p50 = 25; p99 = 29.9
    assert store.latency_profile("T1", task="cs_intent", window=2) == pytest.approx((25.0, 29.9))
    # T2: 100..105 -> p50 = 102.5; p99 = 104 + 0.95 = 104.95
    assert store.latency_profile("T2") == pytest.approx((102.5, 104.95))
    assert store.latency_profile("T9") is None


# ------------------------------------------------------------------ labels


def _matrix_rows() -> list[MatrixRow]:
    return [
        MatrixRow(
            id="q1", task="cs_intent", prompt="reset pin", reference="card_pin_reset",
            split="train",  # row-level extra
            outcomes={
                "T1": Outcome(quality=0.0, cost=0.0, latency_s=0.004, uncertainty=0.61,
                              response="lost_card", tokens_in=12, tokens_out=2),
                "T2": Outcome(quality=1.0, cost=0.00031, latency_s=0.21, confidence=-0.12,
                              response="card_pin_reset", tokens_in=40, tokens_out=3,
                              model="smollm2"),  # outcome-level extra
            },
        ),
        MatrixRow(
            id="q2", task="fin_ner", prompt="Apple hired Tim.",
            reference=[{"text": "Apple", "type": "ORG"}, {"text": "Tim", "type": "PER"}],
            outcomes={
                "T1": Outcome(error="timeout", latency_s=2.0),
                "T2": Outcome(quality=0.5, cost=0.001, latency_s=0.3,
                              response=[{"text": "Apple", "type": "ORG"}]),
            },
        ),
    ]


def test_labels_upsert_and_quality_matrix_round_trip(store: Store) -> None:
    rows = _matrix_rows()
    assert store.add_labels(rows, source="demo") == 4
    assert store.quality_matrix("demo") == rows
    assert store.quality_matrix("demo", task="fin_ner") == [rows[1]]

    # Relabel one cell and add a tier: upserted in place, nothing duplicated.
    update = rows[0].model_copy(deep=True)
    update.outcomes = {"T2": Outcome(quality=0.0, cost=0.0002, response="x"),
                       "T3": Outcome(quality=1.0, cost=0.01)}
    assert store.add_labels([update], source="demo") == 2
    got = {r.id: r for r in store.quality_matrix("demo")}
    assert got["q1"].outcomes["T1"] == rows[0].outcomes["T1"]
    assert got["q1"].outcomes["T2"] == Outcome(quality=0.0, cost=0.0002, response="x")
    assert got["q1"].outcomes["T3"].quality == 1.0
    assert got["q2"] == rows[1]

    # Sources are separate matrices.
    store.add_labels([rows[1]], source="other")
    assert store.quality_matrix("other") == [rows[1]]
    assert len(store.quality_matrix()) == 3
    assert store.label_sources() == ["demo", "other"]
    with pytest.raises(StoreError, match="source"):
        store.add_labels(rows, source="")


def test_labels_round_trip_real_routing_matrix(store: Store, require_shared_data: Path) -> None:
    path = require_shared_data / "routing" / "routerbench_slices" / "test.jsonl"
    rows = list(islice(iter_matrix(path), 150))
    n_cells = sum(len(r.outcomes) for r in rows)
    assert store.add_labels(rows, source="routerbench") == n_cells
    assert store.quality_matrix("routerbench") == rows


# ------------------------------------------------------------------ feedback


def test_feedback_requires_a_logged_request(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown request id 'nope'"):
        store.add_feedback("nope", 1.0)
    rid = store.log_request(_record(id="r1"))
    with pytest.raises(StoreError, match=r"\[0, 1\]"):
        store.add_feedback(rid, 1.5)
    with pytest.raises(StoreError, match=r"\[0, 1\]"):
        store.add_feedback(rid, float("nan"))
    before = datetime.now(UTC)
    f1 = store.add_feedback(rid, 0.0, reference="card_pin_reset")
    f2 = store.add_feedback(rid, 1.0, source="user")
    assert f2 > f1

    fb = store.feedback_since(before)
    assert [f.id for f in fb] == [f1, f2]
    first = fb[0]
    assert first.request_id == rid and first.quality == 0.0
    assert first.reference == "card_pin_reset" and first.source == "audit"
    assert first.task == "cs_intent" and first.final_tier == "T2" and first.accepted
    assert (first.u, first.threshold) == (0.05, 0.3)  # of the served step
    assert first.created_at.tzinfo is not None and first.created_at >= before
    assert [f.id for f in store.feedback_since(after_id=f1)] == [f2]
    assert [f.id for f in store.feedback_since(source="user")] == [f2]
    assert store.feedback_since(task="other") == []


# ------------------------------------------------------------------ artifacts


def test_artifact_versions_and_active_switch(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "thresholds.json"
    f.write_text('{"alpha": 0.05}')
    d = tmp_path / "router_v2"
    (d / "sub").mkdir(parents=True)
    (d / "head.pt").write_bytes(b"\x00\x01weights")
    (d / "sub" / "meta.json").write_text("{}")

    assert store.active_artifact("router") is None
    v1 = store.register_artifact("router", f, config_hash="cfg1", metadata={"auc": 0.81})
    assert v1 == 1
    a1 = store.active_artifact("router")
    assert a1 is not None and a1.version == 1 and a1.active
    assert a1.sha256 == hashlib.sha256(b'{"alpha": 0.05}').hexdigest()
    assert a1.path == str(f.resolve()) and a1.metadata == {"auc": 0.81}
    assert a1.config_hash == "cfg1" and a1.created_at.tzinfo is not None

    v2 = store.register_artifact("router", d)
    assert v2 == 2
    active = store.active_artifact("router")
    assert active is not None and active.version == 2 and len(active.sha256) == 64
    assert [(a.version, a.active) for a in store.list_artifacts("router")] == [
        (1, False), (2, True)]

    # A directory hash depends on contents, not on where the tree lives.
    copy = tmp_path / "copy"
    (copy / "sub").mkdir(parents=True)
    (copy / "head.pt").write_bytes(b"\x00\x01weights")
    (copy / "sub" / "meta.json").write_text("{}")
    v3 = store.register_artifact("router", copy, activate=False)
    assert v3 == 3
    assert store.get_artifact("router", 3).sha256 == active.sha256
    assert store.active_artifact("router").version == 2  # activate=False keeps v2 live

    # Rollback, other kinds independent, bad inputs refused clearly.
    assert store.activate_artifact("router", 1).active
    assert store.active_artifact("router").version == 1
    assert store.register_artifact("thresholds", f) == 1
    assert store.active_artifact("router").version == 1
    assert {a.kind for a in store.list_artifacts()} == {"router", "thresholds"}
    with pytest.raises(StoreError, match="not found"):
        store.register_artifact("router", tmp_path / "missing.pt")
    with pytest.raises(StoreError, match="version 9"):
        store.activate_artifact("router", 9)
    remote = store.register_artifact("adapter", "s3://bucket/a", sha256="ab" * 32)
    assert remote == 1 and store.active_artifact("adapter").path == "s3://bucket/a"


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("", "empty"),
        ("not a url", "invalid store URL"),
        ("mysql://u@h/db", "unsupported store backend 'mysql'"),
        ("postgresql+psycopg://u:s3cret@127.0.0.1:1/db?connect_timeout=2", "cannot open"),
    ],
)
def test_bad_url_gives_a_clear_error(bad: str, expected: str) -> None:
    with pytest.raises(RouteNLPError, match=expected) as info:
        Store(bad)
    assert "s3cret" not in str(info.value)  # passwords never appear in messages


def test_bad_sqlite_location_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RouteNLPError, match="cannot create the directory"):
        Store(f"sqlite:///{blocker / 'sub' / 'r.db'}")
    with pytest.raises(RouteNLPError, match="not a database"):
        Store(f"sqlite:///{blocker}")  # an existing file that is not SQLite
