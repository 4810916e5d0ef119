"""Every instance on one configuration: a reload on one reaches the others through the shared database.

A reload (``POST /admin/reload`` or SIGHUP) reaches one pod, one host. So the instance that reloads writes
the version it now serves (a hash of the effective configuration, ``config_version``) to the database all
instances share (``config_announcements``). Every serving process looks every ``POLL_SECONDS``: when the
announced version is not the one it serves, it reads its own configuration files again, and if they changed
it reloads them (a bad file is refused, and the last good configuration stays, as on a local reload). Files
that have not changed yet (a Kubernetes ConfigMap reaches a pod's volume up to a minute or two after it is
updated) are read again at the next look, so the instance follows as soon as its files do.

Each process also writes what it serves to ``config_instances``; ``/admin`` lists them, so an administrator
sees which version each instance serves and which has not followed (and why). No patient data is involved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cds_service.config import Config, ConfigError, load_config
from cds_service.tables import config_announcements, config_instances

log = logging.getLogger("cds_service.replicas")

POLL_SECONDS = 5.0
"""How often a serving process looks for a reload announced by another instance."""
SEEN_SECONDS = 4 * POLL_SECONDS
"""An instance not seen for this long is shown as gone (stopped, or cut off from the database)."""
FORGET_SECONDS = 24 * 3600
"""Rows of instances not seen for this long are deleted."""
ANNOUNCEMENT = 1


def config_version(config: Config) -> str:
    """A short hash of the effective configuration (files and environment): equal on two instances iff
    they apply the same settings to the same services."""
    services = {
        s.id: [s.hook, s.title, s.description, s.usage_requirements, s.settings]
        for s in config.services.values()
    }
    text = json.dumps([config.settings, services], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def instance_name() -> str:
    """This process as an administrator finds it: the host (a pod's name) and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


@dataclass(frozen=True)
class Announcement:
    version: str
    at: datetime
    by: str


def announce(engine: Engine, version: str, by: str | None = None) -> None:
    """Tell every instance: the configuration to serve is ``version`` (the one this instance just loaded)."""
    row = {"version": version, "announced_at": datetime.now(UTC), "announced_by": by or instance_name()}
    with engine.begin() as connection:
        changed = connection.execute(
            update(config_announcements).where(config_announcements.c.id == ANNOUNCEMENT).values(**row)
        ).rowcount
        if not changed:
            try:
                with connection.begin_nested():
                    connection.execute(insert(config_announcements).values(id=ANNOUNCEMENT, **row))
            except IntegrityError:  # another instance announced first, at the same moment: ours is newer
                connection.execute(
                    update(config_announcements)
                    .where(config_announcements.c.id == ANNOUNCEMENT)
                    .values(**row)
                )
    log.info("configuration version announced to every instance", extra={"version": version})


def announce_to_database(url: str, version: str) -> None:
    """``announce`` from a process that has no engine of its own (the server's master, on SIGHUP).

    A plain engine, closed at once: the master forks workers and must not hold connections (or the
    background threads ``storage.make_engine`` starts) across a fork."""
    engine = plain_engine(url)
    try:
        announce(engine, version)
    except SQLAlchemyError as error:
        log.error(
            "could not announce the configuration to the other instances; reload each of them",
            extra={"error": type(error).__name__},
        )
    finally:
        engine.dispose()


def plain_engine(url: str) -> Engine:
    """An engine of its own for the looks at the shared tables, apart from the requests' pool: a connection
    per look (a few every ``POLL_SECONDS``), each wait bounded by the database itself."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from cds_service.storage import STATEMENT_TIMEOUT_MS, engine_url

    target = engine_url(url)
    if target.get_backend_name() == "postgresql":
        options = {"connect_timeout": 5, "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}
        return create_engine(target, poolclass=NullPool, connect_args=options)
    return create_engine(target, poolclass=NullPool, connect_args={"timeout": 5})


def announced(engine: Engine) -> Announcement | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(config_announcements).where(config_announcements.c.id == ANNOUNCEMENT)
        ).first()
    return Announcement(row.version, _aware(row.announced_at), row.announced_by) if row else None


def instances(engine: Engine, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every instance seen lately, newest first: what it serves, since when, and whether it is still seen."""
    now = now or datetime.now(UTC)
    with engine.connect() as connection:
        rows = connection.execute(select(config_instances).order_by(config_instances.c.instance)).all()
    out = []
    for row in rows:
        seen = _aware(row.seen_at)
        out.append(
            {
                "instance": row.instance,
                "version": row.version,
                "loaded_at": _aware(row.loaded_at),
                "seen_at": seen,
                "serving": now - seen <= timedelta(seconds=SEEN_SECONDS),
                "state": row.state,
            }
        )
    return out


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite gives naive UTC back


class Follower:
    """One serving process's part: report what it serves, and follow a version another instance announced.

    ``holder`` is the app's ``RuntimeHolder`` (its ``current`` Runtime and ``reload``). ``step`` is one look;
    ``start`` runs it every ``POLL_SECONDS`` in a daemon thread that ends with the holder.
    """

    def __init__(self, holder: Any, name: str | None = None, clock: Callable[[], datetime] | None = None):
        self._holder = weakref.ref(holder)
        self.name = name or instance_name()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._loaded: tuple[int, str, datetime] | None = None  # (id of the Config, its version, when seen)
        self._last_problems: list[str] = []
        self._engine: tuple[str, Engine] | None = None

    def _database(self, config: Config) -> Engine:
        url = config.section("feedback")["database_url"]
        if self._engine is None or self._engine[0] != url:
            if self._engine is not None:
                self._engine[1].dispose()
            self._engine = (url, plain_engine(url))
        return self._engine[1]

    def _current(self, config: Config) -> tuple[str, datetime]:
        if self._loaded is None or self._loaded[0] != id(config):
            self._loaded = (id(config), config_version(config), self._clock())
        return self._loaded[1], self._loaded[2]

    def step(self) -> str:
        """Follow an announced version if this instance's files have it; report. Returns the state."""
        holder = self._holder()
        if holder is None:
            return "gone"
        engine = self._database(holder.current.config)
        version, _ = self._current(holder.current.config)
        news = announced(engine)
        if news is None or news.version == version:
            state = "serving the announced version"
        else:
            state = self._follow(holder, news, version)
        version, loaded_at = self._current(holder.current.config)
        self._report(engine, version, loaded_at, state)
        return state

    def _follow(self, holder: Any, news: Announcement, version: str) -> str:
        try:
            on_disk = config_version(load_config(holder.config_dir))
        except ConfigError as error:
            self._refused(error.problems, news)
            return f"not following {news.version}: its files are refused ({'; '.join(error.problems)[:500]})"
        if on_disk == version:
            return f"waiting: {news.by} announced {news.version}; this instance's files still say {version}"
        problems = holder.reload()
        if problems:
            self._refused(problems, news)
            return f"not following {news.version}: reload refused ({'; '.join(problems)[:500]})"
        now = config_version(holder.current.config)
        log.info(
            "configuration reloaded: another instance announced a new version",
            extra={"version": now, "announced": news.version, "by": news.by},
        )
        if now == news.version:
            return "serving the announced version"
        return f"reloaded its files ({now}); {news.by} announced {news.version}"

    def _refused(self, problems: list[str], news: Announcement) -> None:
        if problems != self._last_problems:  # logged once, not every few seconds
            log.error(
                "announced configuration not followed: the files here are refused",
                extra={"announced": news.version, "problems": problems},
            )
        self._last_problems = problems

    def _report(self, engine: Engine, version: str, loaded_at: datetime, state: str) -> None:
        now = self._clock()
        row = {"version": version, "loaded_at": loaded_at, "seen_at": now, "state": state}
        with engine.begin() as connection:
            changed = connection.execute(
                update(config_instances).where(config_instances.c.instance == self.name).values(**row)
            ).rowcount
            if not changed:
                connection.execute(insert(config_instances).values(instance=self.name, **row))
                connection.execute(  # the rows of instances long gone, at each new instance's first report
                    delete(config_instances).where(
                        config_instances.c.seen_at < now - timedelta(seconds=FORGET_SECONDS)
                    )
                )

    def start(self, every: float = POLL_SECONDS) -> threading.Thread:
        def run() -> None:
            while True:
                try:
                    if self.step() == "gone":
                        return
                except SQLAlchemyError as error:  # the database is away: the next look tries again
                    log.warning("configuration check skipped", extra={"error": type(error).__name__})
                except Exception:  # never let the thread die: the instance would silently stop following
                    log.exception("configuration check failed")
                time.sleep(every)

        thread = threading.Thread(target=run, name="config-follower", daemon=True)
        thread.start()
        return thread
