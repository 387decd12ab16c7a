"""Shared fixtures. Data beside the checkout is read by path; in CI (CI=true) missing data
or services are a failure, never a skip.

PostgreSQL: tests that need it take `pg_url` (a fresh, empty schema per test, dropped
afterwards) or `pg_server_url` (the reachable server URL). The server comes from
ROUTENLP_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test; with the
default, user root is tried when postgres is refused).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from routenlp.paths import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() == "true"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def need(condition: bool, what: str) -> None:
    """Skip locally when a prerequisite is absent; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(autouse=True)
def _no_user_label_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or fill the user's label/distillation caches: a test double with
    the same class and config in another test would be served this test's answers. The
    cache tests switch them back on over a temporary ROUTENLP_CACHE_DIR."""
    monkeypatch.setenv("ROUTENLP_LABEL_CACHE", "0")
    monkeypatch.setenv("ROUTENLP_DISTILL_CACHE", "0")


@pytest.fixture(scope="session")
def require_shared_data() -> Path:
    """The shared data directory (../shared/data or ROUTENLP_SHARED_DATA)."""
    path = shared_data_dir()
    need((path / "tasks").is_dir() and (path / "routing").is_dir(), f"shared data at {path}")
    return path


def _pg_candidates() -> list[str]:
    env = os.environ.get("ROUTENLP_TEST_PG_URL")
    if env:
        return [env]
    root = make_url(DEFAULT_PG_URL).set(username="root")
    return [DEFAULT_PG_URL, root.render_as_string(hide_password=False)]


def _pg_error(url: str) -> str | None:
    """None if `url` accepts connections, else a one-line reason."""
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    except Exception as err:  # malformed URL or missing driver
        return f"{type(err).__name__}: {err}"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as err:
        text = str(getattr(err, "orig", None) or err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a reachable PostgreSQL database (skip, or fail under CI=true, if none)."""
    reasons: list[str] = []
    for url in _pg_candidates():
        error = _pg_error(url)
        if error is None:
            return url
        reasons.append(f"{make_url(url).render_as_string(hide_password=True)}: {error}")
    need(False, "PostgreSQL (ROUTENLP_TEST_PG_URL) [" + "; ".join(reasons) + "]")
    raise AssertionError("unreachable")  # need() skipped or failed


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections use `schema` as their only search_path entry."""
    parsed = make_url(url)
    options = parsed.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    options = f"{options} -csearch_path={schema}".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A PostgreSQL URL bound to a new empty schema, dropped after the test.

    Each test gets its own schema, so reruns, parallel sessions and other tests never see
    each other's tables (alembic_version included).
    """
    schema = f"routenlp_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_server_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield with_search_path(pg_server_url, schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
