"""A frozen, locked, full or read-only database answers fast (issue 25), against a running ``serve``.

PostgreSQL is a private cluster (``tests/postgres.py``) that the test freezes with SIGSTOP, as a network
partition would (every one of its processes: the server and the backends the service holds connections to),
and thaws with SIGCONT. Calls that need the database must answer 503 with ``Retry-After`` within 5 s,
``/readyz`` 503 within 5 s, ``/healthz`` at once; after SIGCONT the service serves again by itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.postgres import PostgresServer, running_postgres
from tests.support import (
    CDS_SERVICE,
    config_copy,
    free_port,
    hook_request,
    small_patient,
    start_service,
)

pytestmark = pytest.mark.slow  # a real service against a frozen, locked or read-only database

BOUND = 5.0
FEEDBACK = "/cds-services/tacrolimus-order-sign/feedback"
SIGN = "/cds-services/tacrolimus-order-sign"
UUID = "0f6a1e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"


def _feedback() -> dict:
    item = {"card": UUID, "outcome": "accepted", "outcomeTimestamp": "2026-12-01T10:00:00Z"}
    return {"feedback": [{**item, "acceptedSuggestions": [{"id": "s-1"}]}]}


def _timed(method: str, url: str, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=kwargs.pop("timeout", 30), **kwargs)
    return response, time.monotonic() - started


# --- PostgreSQL frozen by SIGSTOP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A cluster of its own: freezing the session's shared one would stall other tests."""
    with running_postgres() as server:
        yield server


def _postmaster(server: PostgresServer, url: str) -> int:
    (data_directory,) = server.run_sql(url, "SHOW data_directory")[0]
    return int(Path(data_directory, "postmaster.pid").read_text().split()[0])


def _children(parent: int) -> list[int]:
    """The processes ``parent`` forked (for the postmaster: backends, background workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(stat.parent.name))
    return children


@contextlib.contextmanager
def frozen(server: PostgresServer, url: str) -> Iterator[None]:
    """Every process of the cluster stopped, as in a network partition. The postmaster first, so it forks
    no new backend; a child that exited after it was listed (the backend that answered ``SHOW``) is gone."""
    postmaster = _postmaster(server, url)
    os.kill(postmaster, signal.SIGSTOP)
    pids = [postmaster]
    for pid in _children(postmaster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            pids.append(pid)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def pg_service(private_postgres, tmp_path_factory):
    """``serve`` on the private cluster (its environment names the database; the tests' environment keeps
    its own)."""
    url = private_postgres.new_database()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CDS_DATABASE_URL", url)
        service = start_service(config_copy(tmp_path_factory.mktemp("pg-faults")), workers=1, dev=True)
        running = service.__enter__()
    try:
        yield running, url
    finally:
        service.__exit__(None, None, None)


@pytest.mark.postgres
def test_a_frozen_postgresql_gives_503_within_5_s_and_the_service_recovers(private_postgres, pg_service):
    service, url = pg_service
    base = service.base
    assert requests.post(base + FEEDBACK, json=_feedback(), timeout=10).status_code == 200  # pool warmed
    with frozen(private_postgres, url):
        feedback, feedback_took = _timed("POST", base + FEEDBACK, json=_feedback())
        ready, ready_took = _timed("GET", base + "/readyz")
        health, health_took = _timed("GET", base + "/healthz")
    assert feedback.status_code == 503 and feedback.headers.get("Retry-After"), service.log_text()[-3000:]
    assert feedback_took < BOUND, f"feedback answered in {feedback_took:.1f} s"
    assert ready.status_code == 503 and ready_took < BOUND, f"readyz answered in {ready_took:.1f} s"
    assert health.status_code == 200 and health_took < 1.0
    service.wait_until(
        lambda: requests.get(base + "/readyz", timeout=5).status_code == 200, "ready again", timeout=15
    )
    assert requests.post(base + FEEDBACK, json=_feedback(), timeout=10).status_code == 200


@pytest.mark.postgres
def test_hook_calls_in_flight_on_a_frozen_postgresql_leave_healthz_answering(private_postgres, pg_service):
    """16 hook calls at once while the database is frozen: each answers within the bound, and /healthz
    answers meanwhile."""
    service, url = pg_service
    base = service.base
    body = hook_request("pg-p1", small_patient("pg-p1"))
    with frozen(private_postgres, url), ThreadPoolExecutor(max_workers=16) as pool:
        calls = [pool.submit(_timed, "POST", base + SIGN, json=body, timeout=20) for _ in range(16)]
        time.sleep(0.2)  # the calls are in: now the probes
        health, health_took = _timed("GET", base + "/healthz")
        try:
            answers = [call.result() for call in calls]
        except requests.Timeout:
            pytest.fail("a hook call hung; the service's last log lines:\n" + service.log_text()[-3000:])
    assert health.status_code == 200 and health_took < 1.0, f"healthz took {health_took:.1f} s"
    for response, took in answers:
        assert response.status_code in (200, 503), response.text[:200]
        assert took < 2 * BOUND, f"a hook call took {took:.1f} s"  # queued behind the worker's threads
    service.wait_until(
        lambda: requests.get(base + "/readyz", timeout=5).status_code == 200, "ready again", timeout=15
    )


# --- SQLite: another process's write lock, a full disk, a read-only file ------------------------------------


def _sqlite_file(config: Path) -> Path:
    return config.parent / "cds.sqlite3"


def test_a_sqlite_write_lock_held_by_another_process_gives_503_within_5_s(tmp_path):
    config = config_copy(tmp_path)
    with start_service(config, workers=1, dev=True) as service:
        database = next(tmp_path.glob("**/*.sqlite3"))
        holder = sqlite3.connect(database, timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process's long write
        try:
            response, took = _timed("POST", service.base + FEEDBACK, json=_feedback())
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert response.status_code == 503 and response.headers.get("Retry-After")
        assert took < BOUND, f"answered in {took:.1f} s"
        assert requests.post(service.base + FEEDBACK, json=_feedback(), timeout=10).status_code == 200


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "3m") -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("needs to mount a small tmpfs (root with CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_readyz_says_503_when_the_database_disk_is_full(tmp_path):
    with small_disk(tmp_path / "disk", "40m") as disk:
        config = config_copy(tmp_path, feedback={"database_url": f"sqlite:///{disk / 'cds.sqlite3'}"})
        with start_service(config, workers=1, dev=True) as service:
            assert requests.get(service.base + "/readyz", timeout=10).status_code == 200
            filler = disk / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as out:
                while True:
                    out.write(b"\0" * 65536)
            response, took = _timed("GET", service.base + "/readyz")
            assert response.status_code == 503 and took < BOUND
            filler.unlink()
            assert requests.get(service.base + "/readyz", timeout=10).status_code == 200


def test_a_read_only_database_file_at_start_is_one_error_line_and_exit_2(tmp_path):
    database = tmp_path / "ro.sqlite3"
    config = config_copy(tmp_path, feedback={"database_url": f"sqlite:///{database}"})
    with start_service(config, workers=1, dev=True):
        pass  # creates the file with its schema
    made_read_only = subprocess.run(["chattr", "+i", str(database)], check=False, capture_output=True)
    if made_read_only.returncode != 0:
        pytest.skip("needs chattr +i (root): root writes any file whatever its mode")
    try:
        done = subprocess.run(
            [CDS_SERVICE, "serve", "--config", str(config), "--port", str(free_port()), "--dev"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "serving" not in done.stderr
    assert "read-only" in errors[0] or "readonly" in errors[0]
