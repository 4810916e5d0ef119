"""Durable storage: feedback from clinicians and the cards the service showed (for accept rates).

SQLAlchemy Core over any database URL (SQLite by default, PostgreSQL in production). No patient data is
stored: card uuids, finding ids, service, tenant, hookInstance, outcomes and override reasons.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from cds_service.cards import override_reason_display

log = logging.getLogger("cds_service.storage")
metadata = MetaData()

shown_findings = Table(
    "shown_findings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("shown_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("tenant", String(200)),
    Column("hook_instance", String(200), nullable=False),
    Column("card_uuid", String(36), nullable=False, index=True),
    Column("topic", String(64), nullable=False),
    Column("finding_id", String(8), nullable=False),
    Column("indicator", String(16), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("tenant", String(200)),
    Column("card_uuid", String(200), nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("accepted_suggestions", JSON, nullable=False),
    Column("override_system", String(500)),
    Column("override_code", String(200)),
    Column("override_display", String(500)),
    Column("user_comment", Text),
)


seen_tokens = Table(
    "seen_tokens",  # callers' JWT ids, for replay protection across workers (auth.ReplayStore)
    metadata,
    Column("issuer", String(500), primary_key=True),
    Column("jti", String(255), primary_key=True),  # auth.MAX_JTI_CHARS
    Column("expires_at", BigInteger, nullable=False, index=True),
)


shown_suggestions = Table(
    "shown_suggestions",  # which finding each shown suggestion answers: its feedback counts for that finding
    metadata,
    Column("id", Integer, primary_key=True),
    Column("shown_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("card_uuid", String(36), nullable=False),
    Column("suggestion_uuid", String(200), nullable=False, index=True),
    Column("finding_id", String(8), nullable=False),
)

shown_alerts = Table(
    "shown_alerts",  # alert_memory: keyed hashes of (tenant, patient, order, finding) shown, never the ids
    metadata,
    Column("id", Integer, primary_key=True),
    Column("namespace", String(32), nullable=False),
    Column("key", String(64), nullable=False, index=True),
    Column("indicator", String(16), nullable=False),
    Column("shown_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

service_secrets = Table(
    "service_secrets",  # per-deployment secrets every worker and host shares (alert_memory's HMAC key)
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file is created with its folder, in WAL mode for concurrent workers."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = url.startswith("sqlite")
    # For SQLite the busy timeout is set when connecting, before any statement: workers that open a fresh
    # file at the same moment wait for each other instead of failing with "database is locked".
    engine = create_engine(url, pool_pre_ping=True, connect_args={"timeout": 15} if sqlite else {})
    if sqlite:

        @event.listens_for(engine, "connect")
        def _wal(connection, _record):
            connection.execute("PRAGMA journal_mode=WAL")

    try:
        metadata.create_all(engine)
    except OperationalError:  # another process created the tables between the check and the create
        metadata.create_all(engine)
    return engine


class ShownWriter:
    """Writes shown-findings (and shown-suggestions) rows in batches from a background thread.

    Counting what was shown must not cost a database commit on every hook call (it was a third of a call's
    time). Rows are written within ``interval`` seconds, and on ``flush()`` and at process exit; a hard crash
    can lose the last interval's counts, never feedback (which is written synchronously).
    """

    def __init__(self, engine: Engine, interval: float = 0.5):
        self.engine = engine
        self.interval = interval
        self._queue: queue.SimpleQueue[tuple[Table, dict]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        atexit.register(self.flush)

    def put(self, rows: list[dict], table: Table = shown_findings) -> None:
        for row in rows:
            self._queue.put((table, row))
        if self._thread is None:  # started lazily: after a fork, each worker process gets its own
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="shown-writer", daemon=True)
                    self._thread.start()

    def flush(self) -> None:
        rows: dict[Table, list[dict]] = {}
        while True:
            try:
                table, row = self._queue.get_nowait()
            except queue.Empty:
                break
            rows.setdefault(table, []).append(row)
        if not rows:
            return
        try:
            with self.engine.begin() as connection:
                for table, batch in rows.items():
                    connection.execute(insert(table), batch)
        except SQLAlchemyError:
            log.exception("could not store shown findings", extra={"rows": len(rows)})

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval):
            self.flush()


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.shown = ShownWriter(engine)

    def record_shown(
        self, service_id: str, tenant: str | None, hook_instance: str, cards: Iterable[Mapping]
    ) -> None:
        """Queue one row per finding on the cards returned (no patient data); written in the background."""
        now = datetime.now(UTC)
        rows = [
            {
                "shown_at": now,
                "service_id": service_id,
                "tenant": tenant,
                "hook_instance": hook_instance,
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
        if rows:
            self.shown.put(rows)
        suggestions = [
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
        if suggestions:
            self.shown.put(suggestions, shown_suggestions)

    def save_feedback(self, service_id: str, tenant: str | None, items: Iterable[Mapping]) -> int:
        """Store already-validated feedback items in one transaction; return how many.

        An override reason named by code alone (the CDS Hooks Sandbox sends system + code) is stored with the
        display the cards' own ``overrideReasons`` give it.
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
                    "tenant": tenant,
                    "card_uuid": item["card"],
                    "outcome": item["outcome"],
                    "outcome_timestamp": item["outcomeTimestamp"],
                    "accepted_suggestions": [s["id"] for s in item.get("acceptedSuggestions") or ()],
                    "override_system": reason.get("system"),
                    "override_code": reason.get("code"),
                    "override_display": display,
                    "user_comment": (item.get("overrideReason") or {}).get("userComment"),
                }
            )
        if rows:
            with self.engine.begin() as connection:
                connection.execute(insert(feedback), rows)
        return len(rows)

    def feedback_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(feedback).order_by(feedback.c.id)
        if since is not None:
            query = query.where(feedback.c.received_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def suggestion_findings(self) -> dict[tuple[str, str], set[str]]:
        """(service, suggestion uuid) → the finding ids that suggestion answered on the cards shown."""
        self.shown.flush()
        found: dict[tuple[str, str], set[str]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(select(shown_suggestions)):
                found.setdefault((row.service_id, row.suggestion_uuid), set()).add(row.finding_id)
        return found

    def shown_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        self.shown.flush()
        query = select(shown_findings).order_by(shown_findings.c.id)
        if since is not None:
            query = query.where(shown_findings.c.shown_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
