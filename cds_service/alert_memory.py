"""What a clinician has already been shown, so that the same alert is not shown twice (rules.md "Across hooks
and visits").

Remembered is a keyed hash (HMAC-SHA256 with a per-deployment secret) of tenant, patient, order and finding,
with the indicator it was shown at and when; never an id in clear. The rows live in the service's database, so
every worker and host shares them, and they are deleted once no configured window can still need them.

The small API, for every hook that needs it:

* ``RepeatRule``: what a hook remembers (``remember_as``), whose memory can hold its findings back
  (``recall_from``), which indicators may be held back and how indicators compare.
* ``rule.subject(tenant, patient, orders)``: whom and what the findings are about (hashed, never stored).
* ``hold_back(memory, rule, window, subject, findings, now)`` → (findings to show, ``HeldBack`` list).
* ``memory.remember(rule.remember_as, subject, shown_findings, now)`` after the cards went out.
* ``memory.forget_all()``: a tester starts over (``cds-service alert-memory clear``, the sandbox's button).

Each service's rule is part of its spec (``cds_service.services``): order-sign holds back an ``info`` finding
already shown at order-select for the same patient and draft order with the same indicator; the monitoring
service (with a 24-hour ``hold_repeats.window_minutes`` in its service file) shows the same finding at most
once a day unless it rises.
Any database fault shows the finding: forgetting is safe, hiding an alert wrongly is not.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cds_service.rules.model import INDICATOR_RANK, Finding
from cds_service.tables import service_secrets, shown_alerts

log = logging.getLogger("cds_service.alert_memory")

SECRET_ENV = "CDS_ALERT_MEMORY_SECRET"
"""The HMAC key from the deployment's secret store; without it, one is generated once in the database."""
SECRET_NAME = "alert-memory-hmac"
DEFAULTS = {"enabled": True, "window_minutes": 60}
PURGE_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class RepeatRule:
    remember_as: str | None
    """Name under which this hook remembers the findings it showed (None: it remembers nothing)."""
    recall_from: str | None
    """Name whose memory may hold this hook's findings back (None: nothing is held back)."""
    holdable: frozenset[str] = frozenset()
    """Indicators that may be held back."""
    compare: str = "same"
    """``same``: held back when shown with the same indicator; ``not-higher``: unless the indicator rises."""
    why: str = ""
    """The reason in words, for ``explain`` and the log."""
    per_order: bool = True
    """The draft orders are part of what is remembered (False for patient-view: the patient alone)."""

    def subject(self, tenant: str | None, patient: str, orders: Iterable[str] = ()) -> Subject:
        return Subject(tenant, patient, tuple(sorted(orders)) if self.per_order else ())


@dataclass(frozen=True)
class Subject:
    """Whom and what a finding was shown about: hashed, never stored."""

    tenant: str | None
    patient: str
    orders: tuple[str, ...] = ()
    """The draft orders' ids; empty for a hook that is not about an order (patient-view)."""


@dataclass(frozen=True)
class HeldBack:
    id: str
    indicator: str
    why: str
    summary: str = ""
    """The finding's own summary: what a tester would have seen (``--dev`` answers name it)."""


def repeat_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``hold_repeats`` of the effective settings, with the defaults for what is left out."""
    return {**DEFAULTS, **(settings.get("hold_repeats") or {})}


def longest_window(config: Any) -> timedelta:
    """The longest ``hold_repeats.window_minutes`` of any service or tenant: how long a row can matter."""
    tenants = (config.section("tenants") or {}).values()
    minutes = [repeat_settings(s.settings)["window_minutes"] for s in config.services.values()]
    minutes += [(t.get("hold_repeats") or {}).get("window_minutes", 0) for t in tenants]
    minutes.append(repeat_settings(config.settings)["window_minutes"])
    return timedelta(minutes=max(minutes))


_RECALL = select(shown_alerts.c.key, shown_alerts.c.indicator).where(
    shown_alerts.c.namespace == bindparam("namespace"),
    shown_alerts.c.key.in_(bindparam("keys", expanding=True)),
    shown_alerts.c.shown_at >= bindparam("since"),
)
"""Built once: building and caching a new statement on every order-sign cost more than running it."""


class AlertMemory:
    """Keyed hashes of shown findings in the service's database, shared by every worker and host."""

    def __init__(
        self, engine: Engine, keep: timedelta, secret: bytes | None = None, create_secret: bool = True
    ):
        self.engine = engine
        self.keep = keep
        """How long a row is kept: the longest window any service or tenant is configured with."""
        self._secret = secret
        self._create_secret = create_secret
        self._lock = threading.Lock()
        self._purged = 0.0

    # --- the key ----------------------------------------------------------------------------------------

    def secret(self) -> bytes | None:
        """The HMAC key: ``CDS_ALERT_MEMORY_SECRET``, else the one in the database (made once)."""
        if self._secret is None:
            with self._lock:
                if self._secret is None:
                    self._secret = _load_secret(self.engine, self._create_secret)
        return self._secret

    def key(self, namespace: str, subject: Subject, order: str | None, finding_id: str) -> str | None:
        secret = self.secret()
        if secret is None:
            return None
        message = "\x1f".join([namespace, subject.tenant or "", subject.patient, order or "", finding_id])
        return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def _keys(self, namespace: str, subject: Subject, finding_id: str) -> list[str]:
        keys = [self.key(namespace, subject, order, finding_id) for order in subject.orders or (None,)]
        return [k for k in keys if k is not None]

    # --- reading and writing ----------------------------------------------------------------------------

    def recall(self, namespace: str, keys: Iterable[str], since: datetime) -> dict[str, set[str]]:
        """key → the indicators it was shown at since ``since`` (only keys that were shown)."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        found: dict[str, set[str]] = {}
        with self.engine.connect() as connection:
            rows = connection.execute(_RECALL, {"namespace": namespace, "keys": wanted, "since": since})
            for key, indicator in rows:
                found.setdefault(key, set()).add(indicator)
        return found

    def remember(self, namespace: str, subject: Subject, findings: Iterable[Finding], now: datetime) -> int:
        """Remember that ``findings`` were shown about ``subject``; the rows written (0 on a fault)."""
        try:
            rows = [
                {
                    "namespace": namespace,
                    "key": key,
                    "indicator": finding.indicator,
                    "shown_at": now,
                    "expires_at": now + self.keep,
                }
                for finding in findings
                for key in self._keys(namespace, subject, finding.id)
            ]
            if rows:
                with self.engine.begin() as connection:
                    connection.execute(insert(shown_alerts), rows)
            self._purge(now)
            return len(rows)
        except SQLAlchemyError:
            log.exception("could not remember the findings shown", extra={"namespace": namespace})
            return 0

    def forget_all(self) -> int:
        """Forget every finding shown, for every patient: the rows deleted. For testers starting over; the
        HMAC key stays, so nothing else changes."""
        with self.engine.begin() as connection:
            return connection.execute(delete(shown_alerts)).rowcount or 0

    def _purge(self, now: datetime) -> None:
        """Delete expired rows, at most once a minute per process."""
        if time.monotonic() - self._purged < PURGE_EVERY_SECONDS:
            return
        self._purged = time.monotonic()
        with self.engine.begin() as connection:
            connection.execute(delete(shown_alerts).where(shown_alerts.c.expires_at < now))


def hold_back(
    memory: AlertMemory | None,
    rule: RepeatRule | None,
    window: timedelta,
    subject: Subject,
    findings: Sequence[Finding],
    now: datetime,
) -> tuple[list[Finding], list[HeldBack]]:
    """The findings to show and those held back because ``rule.recall_from`` showed them within ``window``.

    A finding about several orders is held back only when it was shown for every one of them.
    """
    if memory is None or rule is None or rule.recall_from is None:
        return list(findings), []
    candidates = [f for f in findings if f.indicator in rule.holdable]
    if not candidates:
        return list(findings), []
    namespace = rule.recall_from
    try:
        keys = {f.id: memory._keys(namespace, subject, f.id) for f in candidates}
        seen = memory.recall(namespace, [k for ks in keys.values() for k in ks], now - window)
    except SQLAlchemyError:
        log.exception("could not read the findings already shown; showing them all")
        return list(findings), []
    minutes = int(window.total_seconds() // 60)
    shown, held = [], []
    for finding in findings:
        finding_keys = keys.get(finding.id)
        if finding_keys and all(
            _repeats(finding.indicator, seen.get(k, set()), rule.compare) for k in finding_keys
        ):
            held.append(
                HeldBack(finding.id, finding.indicator, f"{rule.why} within {minutes} min", finding.summary)
            )
        else:
            shown.append(finding)
    return shown, held


def _repeats(indicator: str, earlier: set[str], compare: str) -> bool:
    if compare == "not-higher":
        return any(INDICATOR_RANK[i] >= INDICATOR_RANK[indicator] for i in earlier if i in INDICATOR_RANK)
    return indicator in earlier


def _load_secret(engine: Engine, create: bool) -> bytes | None:
    """The environment's key, else the database's: the first worker to need one creates it, others read it."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode("utf-8")
    query = select(service_secrets.c.value).where(service_secrets.c.name == SECRET_NAME)
    with engine.connect() as connection:
        value = connection.execute(query).scalar()
    if value is None and create:
        try:
            with engine.begin() as connection:
                connection.execute(
                    insert(service_secrets),
                    {"name": SECRET_NAME, "value": secrets.token_hex(32), "created_at": datetime.now(UTC)},
                )
            log.info(
                "generated the alert-memory key and stored it in the database",
                extra={"secret_name": SECRET_NAME},
            )
        except IntegrityError:  # another worker or host made it first: use theirs
            pass
        with engine.connect() as connection:
            value = connection.execute(query).scalar()
    return value.encode("utf-8") if value else None
