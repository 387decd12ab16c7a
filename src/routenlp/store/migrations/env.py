"""Alembic environment for the RouteNLP store.

Normally run by `Store(url)` itself (programmatic `upgrade head` on open), which passes
its open connection in `config.attributes["connection"]` so migrations run inside the
store's transaction with the store's connection settings (SQLite pragmas, PostgreSQL
search_path and advisory lock). Developers can also run the Alembic CLI against a URL:
`alembic -c src/routenlp/store/migrations/alembic.ini revision --autogenerate -m "..."`
with `ROUTENLP_STORE_URL` set (default: sqlite:///routenlp.db).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from routenlp.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # later ALTERs must also work on SQLite
        compare_type=True,
    )


def _url() -> str:
    return os.environ.get("ROUTENLP_STORE_URL") or config.get_main_option(
        "sqlalchemy.url", "sqlite:///routenlp.db"
    )


def run_migrations_offline() -> None:
    """Emit SQL for a URL without connecting (`alembic upgrade head --sql`)."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    # Alembic CLI use: same engine settings as the store, without auto-upgrading.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    from routenlp.store.store import make_engine

    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
