"""Fixtures shared by the test modules: the databases the storage-facing tests run on (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback for the whole session (skipped where none can run; never in CI)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each kind the service supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite3'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def each_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on SQLite (its configuration's own file) and again on PostgreSQL (CDS_DATABASE_URL).

    The environment variable wins over ``feedback.database_url`` (config.ENVIRONMENT), so every service the
    test starts, in-process or as a subprocess, uses that database.
    """
    if request.param == "sqlite":
        monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
        yield "sqlite"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    monkeypatch.setenv("CDS_DATABASE_URL", url)
    try:
        yield url
    finally:
        server.drop_database(url)
