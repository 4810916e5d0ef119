"""A real PostgreSQL server for the tests: a throw-away cluster on loopback.

Its programs come from Debian's package (``.ci/run`` installs it in CI) or, failing that, from the
``pgserver`` wheel of the ``test`` extra, which carries a PostgreSQL build: a contributor without root gets
the PostgreSQL tests too. The cluster lives in a temporary folder, owned by the ``postgres`` user when the
tests run as root (PostgreSQL refuses to run as root), and is stopped and deleted at the end of the session.
``CDS_TEST_POSTGRES_URL`` (a superuser URL) uses an existing server instead.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support import free_port, tool_missing


def pg_bin() -> Path | None:
    """The bin folder of the newest Debian server (``/usr/lib/postgresql/<version>/bin``), else pgserver's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    wheel = importlib.util.find_spec("pgserver")  # located, not imported: only its programs are used
    programs = Path(wheel.origin).parent / "pginstall" / "bin" if wheel and wheel.origin else None
    return programs if programs and (programs / "initdb").exists() else None


def _as_postgres_user() -> Callable[[], None] | None:
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("postgres")

    def drop() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return drop


@dataclass
class PostgresServer:
    """A running server; ``admin_url`` is a superuser URL, ``new_database()`` a fresh empty database."""

    admin_url: str
    stop: Callable[[], None] = field(default=lambda: None)
    databases: list[str] = field(default_factory=list)

    def _admin(self):
        import psycopg

        return psycopg.connect(
            make_url(self.admin_url).set(drivername="postgresql").render_as_string(False), autocommit=True
        )

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Close every connection to the test's database (engines the test left open) and drop it."""
        name = make_url(url).database
        with self._admin() as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')

    def was_migrated(self, url: str) -> bool:
        """Whether the service brought the database at ``url`` under its migrations (so it ran on it)."""
        return bool(self.run_sql(url, "SELECT to_regclass('alembic_version') IS NOT NULL")[0][0])

    def run_sql(self, url: str, sql: str) -> list[tuple]:
        import psycopg

        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain, autocommit=True) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []


def start_postgres() -> PostgresServer | None:
    """A server for this test session, or None if PostgreSQL is not installed here."""
    if os.environ.get("CDS_TEST_POSTGRES_URL"):
        return PostgresServer(os.environ["CDS_TEST_POSTGRES_URL"])
    bin_dir = pg_bin()
    if bin_dir is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="cds-pg-"))
    data = folder / "data"
    drop = _as_postgres_user()
    if drop is not None:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "preexec_fn": drop, "check": True}
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "cds", "-A", "trust", "--no-sync", "-E", "UTF8"],
        **quiet,
    )
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=300 -c fsync=off"
    subprocess.run(
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
        **quiet,
    )

    def stop() -> None:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=drop,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)

    return PostgresServer(f"postgresql://cds@127.0.0.1:{port}/postgres", stop=stop)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A server from ``start_postgres``, stopped at the end; the test is skipped where none can run (never in
    CI: ``tool_missing``)."""
    server = start_postgres()
    if server is None:
        tool_missing("PostgreSQL is not installed (Debian's postgresql package, or `pip install pgserver`)")
    try:
        yield server
    finally:
        server.stop()
