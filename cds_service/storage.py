"""Durable storage: feedback from clinicians and the cards the service showed (for accept rates).

SQLAlchemy Core over any database URL (SQLite by default, PostgreSQL in production), on
the tables of ``tables.py``. No patient data is
stored: card uuids, finding ids, service, tenant, hookInstance, outcomes and override reasons.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from cds_service import metrics
from cds_service.cards import override_reason_display
from cds_service.tables import feedback, shown_findings, shown_suggestions

log = logging.getLogger("cds_service.storage")
STATEMENT_TIMEOUT_MS = 10_000  # PostgreSQL; migrations lift it for their own connection


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
    in a few hundred waited 5-15 ms for it (the warm p99 was ~3.1 x its p50; from a thread, 1.9-2.8 x). A
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
        engine = create_engine(engine_url(url), connect_args={"timeout": 15})

        @event.listens_for(engine, "connect")
        def _wal(connection, _record):
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")

        checkpoint_in_background(engine)

    else:
        engine = create_engine(
            engine_url(url),
            pool_pre_ping=True,
            # A worker runs at most `threads` requests at once, each holding one connection at a time: a small
            # pool per worker keeps replicas × workers × pool under PostgreSQL's default 100 connections.
            pool_size=4,
            max_overflow=4,
            pool_timeout=5,  # a pool exhausted by a stuck database: 503 in seconds, not a hung worker
            # Bounded waits: connecting, and any statement (a locked table) -> an error -> 503 Retry-After.
            connect_args={"connect_timeout": 3, "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"},
        )
    if migrate:
        from cds_service.migrations import upgrade  # imported here: alembic loads only when needed

        upgrade(engine)
    return engine


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
            ours = [r["card_uuid"] for r in rows if len(r["card_uuid"]) <= 36]
            finding_of: dict[str, list[str]] = {}
            if ours:
                query = select(shown_findings.c.card_uuid, shown_findings.c.finding_id).where(
                    shown_findings.c.card_uuid.in_(ours)
                )
                for card_uuid, finding_id in connection.execute(query):
                    finding_of.setdefault(card_uuid, []).append(finding_id)
        for row in rows:
            for finding_id in sorted(set(finding_of.get(row["card_uuid"], ["unknown"]))):
                metrics.FEEDBACK.labels(service=service_id, finding=finding_id, outcome=row["outcome"]).inc()
        return len(rows)

    def ping(self) -> None:
        """Raise if the database does not answer a trivial query (``/readyz``)."""
        with self.engine.connect() as connection:
            connection.execute(select(1))

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

    def shown_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(shown_findings).order_by(shown_findings.c.id)
        if since is not None:
            query = query.where(shown_findings.c.shown_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
