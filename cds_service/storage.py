"""Durable storage: feedback from clinicians and the cards the service showed (for accept rates).

SQLAlchemy Core over any database URL (SQLite by default, PostgreSQL in production), on
the tables of ``tables.py``. No patient data is
stored: card uuids, finding ids, service, tenant, hookInstance, outcomes and override reasons.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from cds_service import metrics
from cds_service.cards import override_reason_display
from cds_service.fhir_client import Watchdog
from cds_service.tables import feedback, seen_tokens, shown_findings, shown_suggestions

log = logging.getLogger("cds_service.storage")
STATEMENT_TIMEOUT_MS = 3_000  # PostgreSQL; migrations lift it for their own connection
LOCK_TIMEOUT_MS = 2_000
"""PostgreSQL: a statement waiting this long for a lock gives up (and the call answers 503)."""
CONNECT_TIMEOUT_SECONDS = 2  # libpq's least
CLIENT_STATEMENT_SECONDS = 3.5
"""Client side: a statement (or the pool's check of a connection) still unanswered after this long has its
socket shut down, so the call fails at once and answers 503. The server's own ``statement_timeout`` cannot
fire when the server is frozen or cut off, and TCP keepalives are answered by a stopped server's kernel."""
PING_SECONDS = 1.0
PAUSE_AFTER_TIMEOUT_SECONDS = 2.0
"""After PostgreSQL let a call wait out its bound, other calls fail at once for this long (``/readyz`` still
asks, and its answer ends the pause): 16 calls in flight cost one wait, not a queue of them."""
_THIS_REQUEST = threading.local()
"""``failed``: this request already met an unanswering database (its next statements do not wait again);
``asking``: ``Store.ping`` runs (readiness always asks)."""
SQLITE_BUSY_SECONDS = 3.0
"""SQLite: how long a write waits for another process's lock before the call answers 503."""
MIN_FREE_BYTES = 16 * 1024 * 1024
"""``/readyz`` says not ready when the SQLite database's disk has less free space than this."""


class DiskFull(SQLAlchemyError):
    """The database's disk has no room for the rows calls write: not ready, 503 like any database error."""


def engine_url(url: str) -> URL:
    """``url`` as SQLAlchemy opens it: plain ``postgresql://`` means psycopg 3 (the ``postgres`` extra)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


CHECKPOINT_SECONDS = 1.0
BACKSTOP_CHECKPOINT_PAGES = 10_000
"""A request's own commit checkpoints the WAL only past 40 MB, should the background thread fall behind."""
_CHECKPOINTING = threading.Lock()
"""Held while a background checkpoint runs, and across a fork (the server forks its workers): a child must
not inherit SQLite's mutexes taken by a thread that does not exist in it."""
os.register_at_fork(
    before=_CHECKPOINTING.acquire,
    after_in_parent=_CHECKPOINTING.release,
    after_in_child=_CHECKPOINTING.release,
)


def checkpoint_in_background(engine: Engine, every: float = CHECKPOINT_SECONDS) -> None:
    """Copy SQLite's write-ahead log into the database from a thread, once a second, not from a request.

    By default the commit that fills the WAL to 1,000 pages runs the checkpoint and its fsync: one hook call
    in a few hundred waited for it, which showed in the p99 (bench/README.md has the numbers). A
    PASSIVE checkpoint never waits for readers or writers. The thread ends when the engine is gone.
    """
    ref = weakref.ref(engine)

    def run() -> None:
        while True:
            time.sleep(every)
            current = ref()
            if current is None:
                return
            try:
                with _CHECKPOINTING, current.connect() as connection:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except SQLAlchemyError:  # a busy or vanished file: the next round tries again
                pass
            del current

    threading.Thread(target=run, name="sqlite-checkpoint", daemon=True).start()


def make_engine(url: str, migrate: bool = True) -> Engine:
    """An engine for ``url`` with the schema brought up to date (``migrate``; see ``migrations.upgrade``).

    SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is atomic and survives a crash of the
    process (kill -9), and the disk is flushed at checkpoints rather than on every commit, which is what
    made the per-call replay check and shown-findings rows cost a millisecond each. (A power cut may lose the
    last commits; run PostgreSQL where that matters.) Connections are checked before use and time out
    quickly, so a database that went away gives a 503 within seconds and comes back by itself.
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = url.startswith("sqlite")
    # For SQLite the busy timeout is set when connecting, before any statement: workers that open a fresh
    # file at the same moment wait for each other instead of failing with "database is locked".
    if sqlite:
        # No pre-ping: a file does not drop connections, and the ping was a fifth of a short write's cost.
        engine = create_engine(engine_url(url), connect_args={"timeout": SQLITE_BUSY_SECONDS})

        @event.listens_for(engine, "connect")
        def _wal(connection, _record):
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")

        checkpoint_in_background(engine)

    else:
        engine = create_engine(
            engine_url(url),
            pool_pre_ping=True,  # bounded by PING_SECONDS (_bound_client_waits)
            # A worker runs at most `threads` requests at once, each holding one connection at a time: a small
            # pool per worker keeps replicas × workers × pool under PostgreSQL's default 100 connections.
            pool_size=4,
            max_overflow=4,
            pool_timeout=1,  # a pool exhausted by a stuck database: 503 at once, not a hung worker
            # Bounded waits: connecting, any statement, any lock -> an error -> 503 Retry-After; keepalives
            # and tcp_user_timeout drop a connection whose network path is gone.
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}",
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": int(CLIENT_STATEMENT_SECONDS * 1000),
            },
        )
        _bound_client_waits(engine)
    if migrate:
        from cds_service.migrations import upgrade  # imported here: alembic loads only when needed

        upgrade(engine)
    return engine


DB_WATCHDOG = Watchdog()
"""Shuts the socket of a PostgreSQL statement still running at its client-side deadline (one per process)."""


@contextlib.contextmanager
def _client_deadline(dbapi_connection: Any, seconds: float):
    """Within the block, a statement on ``dbapi_connection`` (psycopg) that runs ``seconds`` is cut off."""
    try:
        fd = dbapi_connection.pgconn.socket
        watched = socket.socket(fileno=os.dup(fd))
    except (AttributeError, OSError, ValueError):  # not psycopg, or already closed: nothing to watch
        yield
        return
    ticket = DB_WATCHDOG.watch(watched, time.monotonic() + seconds)
    try:
        yield
    finally:
        DB_WATCHDOG.unwatch(ticket)
        watched.close()  # our duplicate only: the connection's own descriptor stays open


def new_request() -> None:
    """A request starts: it may wait on the database (within the bounds) even if the last one could not."""
    _THIS_REQUEST.failed = False


class DatabasePaused(Exception):
    """The database did not answer a moment ago and another request is finding out whether it does now."""


def _bound_client_waits(engine: Engine) -> None:
    """Every statement, and the pool's check of a connection before use, ends within a client-side bound.

    Once PostgreSQL has not answered, the rest of that request does not wait on it again; once it let a
    call wait out a bound, no call waits on it for ``PAUSE_AFTER_TIMEOUT_SECONDS``. ``/readyz`` always asks.
    """
    import psycopg  # the postgres extra: only engines for PostgreSQL get here

    running: dict[int, contextlib.ExitStack] = {}
    paused_until = [0.0]

    class Paused(psycopg.OperationalError, DatabasePaused):
        pass

    def refuse_while_paused() -> None:
        if getattr(_THIS_REQUEST, "asking", False):
            return
        if getattr(_THIS_REQUEST, "failed", False):
            raise Paused("the database did not answer this request; not waiting on it again")
        if time.monotonic() < paused_until[0]:
            raise Paused("the database did not answer in time a moment ago; not waiting on it yet")
        _THIS_REQUEST.since = time.monotonic()

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, record, cargs, cparams):
        refuse_while_paused()

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn, cursor, statement, parameters, context, executemany):
        _THIS_REQUEST.since = time.monotonic()
        stack = contextlib.ExitStack()
        stack.enter_context(_client_deadline(cursor.connection, CLIENT_STATEMENT_SECONDS))
        running[id(cursor)] = stack

    def _end(cursor: Any) -> None:
        stack = running.pop(id(cursor), None)
        if stack is not None:
            stack.close()

    @event.listens_for(engine, "after_cursor_execute")
    def _finished(conn, cursor, statement, parameters, context, executemany):
        _end(cursor)
        paused_until[0] = 0.0  # it answers again

    @event.listens_for(engine, "handle_error")
    def _failed(context):
        # SQLAlchemy 2.1 keeps the failed statement's cursor on the execution context (``context.cursor`` is
        # unset): without it a failed statement (a duplicate key the code expects) left its deadline armed,
        # and the watchdog cut the pooled connection 3.5 s later, failing whichever request used it next.
        execution = getattr(context, "execution_context", None)
        # (no cursor at all when the pool's check of a connection failed)
        cursor = getattr(context, "cursor", None) or getattr(execution, "cursor", None)
        if cursor is not None:
            _end(cursor)
        error = context.original_exception
        lost = context.is_disconnect or context.connection is None  # cut off, or could not connect
        if lost and isinstance(error, psycopg.OperationalError) and not isinstance(error, Paused):
            _THIS_REQUEST.failed = True
            waited = time.monotonic() - getattr(_THIS_REQUEST, "since", time.monotonic())
            if waited >= PING_SECONDS * 0.9:  # a timeout, not a refusal: others should not wait on it too
                paused_until[0] = time.monotonic() + PAUSE_AFTER_TIMEOUT_SECONDS

    ping = engine.dialect.do_ping

    def bounded_ping(dbapi_connection: Any) -> bool:
        refuse_while_paused()
        with _client_deadline(dbapi_connection, PING_SECONDS):
            return ping(dbapi_connection)

    engine.dialect.do_ping = bounded_ping  # type: ignore[method-assign]


def disk_full(engine: Engine) -> bool:
    """Is the disk of a SQLite database file (nearly) full? PostgreSQL reports its own disk in its errors."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    try:
        return shutil.disk_usage(Path(database).resolve().parent).free < MIN_FREE_BYTES
    except OSError:
        return False


def writable_problem(url: str) -> str | None:
    """Why the service could not write to the database at ``url`` (a read-only file...), or None.

    Asked once at start: a service that says "serving" and then answers every call 503 helps nobody.
    """
    try:
        engine = make_engine(url)
    except SQLAlchemyError as error:
        return _first_line(error)
    try:
        with engine.begin() as connection:
            connection.execute(seen_tokens.delete().where(seen_tokens.c.expires_at < 0))  # writes, keeps all
    except SQLAlchemyError as error:
        return _first_line(error)
    finally:
        engine.dispose()
    return None


def _first_line(error: SQLAlchemyError) -> str:
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


def _text(value: str | None) -> str | None:
    """A caller's string as every database can store it: PostgreSQL text cannot hold NUL (→ U+FFFD)."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def shown_rows_for(
    service_id: str, tenant: str | None, hook_instance: str, cards: Iterable[Mapping], now: datetime
) -> list[dict[str, Any]]:
    """One row per finding on the cards returned (no patient data)."""
    return [
        {
            "shown_at": now,
            "service_id": service_id,
            "tenant": _text(tenant),
            "hook_instance": _text(hook_instance),
            "card_uuid": card["uuid"],
            "topic": card["source"]["topic"]["code"],
            "finding_id": item["id"],
            "indicator": item["indicator"],
        }
        for card in cards
        for key, items in card.get("extension", {}).items()
        if key.endswith("findings")
        for item in items
    ]


_INSERT_SHOWN = insert(shown_findings)  # built once, as every call with cards runs them
_INSERT_SUGGESTIONS = insert(shown_suggestions)


def _findings_answered(
    connection: Connection, service_id: str, rows: list[dict[str, Any]]
) -> Callable[[dict[str, Any]], list[str]]:
    """For ``cds_feedback_total``: the findings a feedback row counts for, as ``feedback report`` counts them.

    An accepted suggestion counts for the findings that suggestion answers; any other answer (and an accept
    naming no suggestion shown) for every finding on its card; a card this service has no record of showing,
    for ``unknown``.
    """
    ours = [r["card_uuid"] for r in rows if len(r["card_uuid"]) <= 36]
    on_card: dict[str, set[str]] = {}
    if ours:
        query = select(shown_findings.c.card_uuid, shown_findings.c.finding_id).where(
            shown_findings.c.card_uuid.in_(ours)
        )
        for card_uuid, finding_id in connection.execute(query):
            on_card.setdefault(card_uuid, set()).add(finding_id)
    accepted = {s for r in rows if r["outcome"] == "accepted" for s in r["accepted_suggestions"]}
    answers: dict[str, set[str]] = {}
    wanted = sorted(s for s in accepted if isinstance(s, str) and len(s) <= 200)
    if wanted:
        query = select(shown_suggestions.c.suggestion_uuid, shown_suggestions.c.finding_id).where(
            shown_suggestions.c.service_id == service_id, shown_suggestions.c.suggestion_uuid.in_(wanted)
        )
        for suggestion, finding_id in connection.execute(query):
            answers.setdefault(suggestion, set()).add(finding_id)

    def findings(row: dict[str, Any]) -> list[str]:
        answered: set[str] = set()
        if row["outcome"] == "accepted":
            answered = set().union(*(answers.get(s, set()) for s in row["accepted_suggestions"]))
        return sorted(answered or on_card.get(row["card_uuid"]) or {"unknown"})

    return findings


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record_shown(
        self, service_id: str, tenant: str | None, hook_instance: str, cards: Iterable[Mapping]
    ) -> int:
        """Store one row per finding shown, before the answer leaves, in one short transaction.

        Written synchronously so that a call answered 200 has its rows stored even if the worker is then
        killed (issue 12): with SQLite in WAL + synchronous=NORMAL, or PostgreSQL, this costs a fraction of a
        millisecond. If the database fails, the cards still go out (advice must not wait on statistics);
        the lost rows are logged and counted in ``cds_shown_rows_lost_total``, never dropped silently.
        """
        now = datetime.now(UTC)
        rows = shown_rows_for(service_id, tenant, hook_instance, cards, now)
        if not rows:
            return 0
        suggestions = [  # which finding each suggestion answers: feedback on it counts for that finding
            {
                "shown_at": now,
                "service_id": service_id,
                "card_uuid": card["uuid"],
                "suggestion_uuid": suggestion["uuid"],
                "finding_id": item["id"],
            }
            for card in cards
            for suggestion in card.get("suggestions") or ()
            if suggestion.get("uuid")
            for key, items in (suggestion.get("extension") or {}).items()
            if key.endswith("findings")
            for item in items
        ]
        try:
            with self.engine.begin() as connection:
                connection.execute(_INSERT_SHOWN, rows)
                if suggestions:
                    connection.execute(_INSERT_SUGGESTIONS, suggestions)
        except SQLAlchemyError as error:
            metrics.SHOWN_ROWS_LOST.inc(len(rows))
            metrics.DB_ERRORS.labels(operation="record_shown").inc()
            log.error(
                "shown findings not stored",
                extra={"rows": len(rows), "service": service_id, "error": type(error).__name__},
            )
            return 0
        metrics.count_shown(rows)
        return len(rows)

    def save_feedback(self, service_id: str, tenant: str | None, items: Iterable[Mapping]) -> int:
        """Store already-validated feedback items in one transaction; return how many.

        An override reason named by code alone (the CDS Hooks Sandbox sends system + code) is stored with the
        display the cards' own ``overrideReasons`` give it. A database error propagates (the caller answers
        503, so the EHR retries); nothing is acknowledged that was not committed.
        """
        now = datetime.now(UTC)
        rows = []
        for item in items:
            reason = (item.get("overrideReason") or {}).get("reason") or {}
            display = reason.get("display") or override_reason_display(
                reason.get("code"), reason.get("system")
            )
            rows.append(
                {
                    "received_at": now,
                    "service_id": service_id,
                    "tenant": _text(tenant),
                    "card_uuid": _text(item["card"]),
                    "outcome": item["outcome"],
                    "outcome_timestamp": _text(item["outcomeTimestamp"]),
                    "accepted_suggestions": [s["id"] for s in item.get("acceptedSuggestions") or ()],
                    "override_system": _text(reason.get("system")),
                    "override_code": _text(reason.get("code")),
                    "override_display": _text(display),
                    "user_comment": _text((item.get("overrideReason") or {}).get("userComment")),
                }
            )
        if not rows:
            return 0
        with self.engine.begin() as connection:
            connection.execute(insert(feedback), rows)
            finding_of = _findings_answered(connection, service_id, rows)
        for row in rows:
            for finding_id in finding_of(row):
                metrics.FEEDBACK.labels(service=service_id, finding=finding_id, outcome=row["outcome"]).inc()
        return len(rows)

    def ping(self) -> None:
        """Raise if the database does not answer a trivial query, or its disk is full (``/readyz``)."""
        if disk_full(self.engine):
            raise DiskFull("the database's disk is full")
        _THIS_REQUEST.asking = True
        try:
            with self.engine.connect() as connection:
                connection.execute(select(1))
        finally:
            _THIS_REQUEST.asking = False

    def feedback_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(feedback).order_by(feedback.c.id)
        if since is not None:
            query = query.where(feedback.c.received_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def suggestion_findings(self) -> dict[tuple[str, str], set[str]]:
        """(service, suggestion uuid) → the finding ids that suggestion answered on the cards shown."""
        found: dict[tuple[str, str], set[str]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(select(shown_suggestions)):
                found.setdefault((row.service_id, row.suggestion_uuid), set()).add(row.finding_id)
        return found

    def tenants(self) -> set[str]:
        """Every tenant the database has shown cards or feedback for (``feedback report --tenant``)."""
        query = select(shown_findings.c.tenant).union(select(feedback.c.tenant))
        with self.engine.connect() as connection:
            return {tenant for (tenant,) in connection.execute(query) if tenant is not None}

    def shown_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(shown_findings).order_by(shown_findings.c.id)
        if since is not None:
            query = query.where(shown_findings.c.shown_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
