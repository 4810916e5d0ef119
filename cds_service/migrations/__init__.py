"""Schema migrations (alembic): ``cds-service db upgrade`` for operators, and at every start.

``upgrade(engine)`` brings a database to the newest revision. Many instances may start at once on one empty
database: on PostgreSQL they queue on an advisory lock, on SQLite on a lock file next to the database, and
the ones after the first find the schema current and do nothing. A database created before migrations
existed (its tables, no ``alembic_version``) is stamped at the first revision, then upgraded.

Every change to a table needs a new file in ``versions/``; every table is defined in ``cds_service/tables.py``
(``tests/test_storage.py`` checks that the migrated schema is exactly those tables).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("cds_service.migrations")
HERE = Path(__file__).resolve().parent
FIRST_REVISION = "0001"
PG_LOCK_KEY = 0x0C_D5_1401  # any constant shared by every instance of this service


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _exclusive(engine: Engine, connection: Connection) -> Iterator[None]:
    """One migrator at a time across processes and hosts."""
    if engine.dialect.name == "postgresql":
        # Waiting for another instance's migration, or migrating a big table, may take longer than the
        # service's statement timeout; this connection waits as long as it takes.
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
            connection.execute(text("RESET statement_timeout"))  # back to the service's, for the pool
            connection.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with open(f"{engine.url.database}.migrate-lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    else:
        yield


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe when many processes call it at once."""
    target = head()
    with engine.connect() as connection:
        if current(connection) == target:
            return
        connection.rollback()
        with _exclusive(engine, connection):
            found = current(connection)
            connection.rollback()
            if found == target:
                return
            if found is None and inspect(connection).has_table("feedback"):
                log.info("database without migration history: stamping it at the first revision")
                command.stamp(alembic_config(connection), FIRST_REVISION)
                connection.commit()
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
            log.info("database schema upgraded", extra={"from": found, "to": target})
