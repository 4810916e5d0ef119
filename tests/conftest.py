"""Fixtures shared by the test modules: the databases the storage-facing tests run on (SQLite, PostgreSQL);
and the markers of the tests that need a tool a contributor's machine may lack (pyproject.toml lists them).

A test that needs Chromium, PostgreSQL or nginx is marked ``browser``, ``postgres`` or ``nginx`` (a test that
asks for a PostgreSQL database gets its marker here), so ``make test-fast`` can leave them out and a missing
tool is named once per test: skipped on a contributor's machine, a failure in CI (``tool_missing``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, running_postgres
from tests.support import CHROMIUM, tool_missing

POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.postgres)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") and not CHROMIUM.exists():
        tool_missing("Chromium is not installed (Debian's chromium package); the browser tests need it")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback for the session (where none can run: skipped, a failure in CI)."""
    with running_postgres() as server:
        yield server


def fresh_postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new database for one test (or module), dropped afterwards. A test named for PostgreSQL must have run
    on it: one that never migrated it (so never used it) fails at teardown instead of passing as a second
    SQLite run."""
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    try:
        yield url
        if not server.was_migrated(url):
            pytest.fail(f"{request.node.name} is named for PostgreSQL but never used its database")
    finally:
        server.drop_database(url)


@pytest.fixture(params=["sqlite", POSTGRESQL])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each kind the service supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite3'}"
        return
    yield from fresh_postgres_database(request)


def _service_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """CDS_DATABASE_URL for ``request.param``: unset for SQLite (the configuration's own file), else a fresh
    PostgreSQL database. It wins over ``feedback.database_url`` (config.ENVIRONMENT), so every service started
    meanwhile, in-process or as a subprocess, uses that database."""
    if request.param == "sqlite":
        monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
        yield "sqlite"
        return
    for url in fresh_postgres_database(request):
        monkeypatch.setenv("CDS_DATABASE_URL", url)
        yield url


@pytest.fixture(params=["sqlite", POSTGRESQL])
def each_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on SQLite and again on PostgreSQL (``_service_database``)."""
    yield from _service_database(request, monkeypatch)


@pytest.fixture(scope="module", params=["sqlite", POSTGRESQL])
def module_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """``each_database`` for a module whose tests share one service (a module-scoped fixture that starts it
    must ask for this one): the service then starts once per kind of database."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _service_database(request, monkeypatch)
