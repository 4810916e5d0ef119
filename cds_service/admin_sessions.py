"""Admin sign-in that survives guessing and ends on the server: sessions and failed-login throttling.

On the service's database, so every worker (and host, with PostgreSQL) sees the same sessions and the same
count of failures:

- a session is a random id in ``admin_sessions``; the browser holds it signed (itsdangerous, with a secret
  kept in ``admin_secret``) and timestamped, never the admin token. It ends after ``SESSION_SECONDS``, on
  sign-out (the row is deleted, so a copied cookie is dead too) or when the token that opened it stops
  opening the page. Its forms carry a per-session token (an HMAC of the session id, see ``form_token``)
  that a client without Fetch Metadata shows to prove a POST came from the admin page itself;
- failed logins are counted per client address in ``admin_login_failures``: after ``FREE_ATTEMPTS`` each
  further attempt must wait twice as long as the one before (1 s, 2 s, 4 s... up to a minute), and after
  ``LOCK_AFTER`` failures the client is locked out for ``LOCK_SECONDS``. A refused attempt costs no token
  check and holds no thread (no sleeping): it is answered 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import and_, case, delete, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cds_service.tables import admin_login_failures, admin_secret, admin_sessions

SESSION_SECONDS = 8 * 3600
FREE_ATTEMPTS = 3
LOCK_AFTER = 10
LOCK_SECONDS = 15 * 60
MAX_WAIT_SECONDS = 60
FORGET_AFTER_SECONDS = LOCK_SECONDS
"""A client's failures are forgotten this long after its last one."""


@dataclass(frozen=True)
class Wait:
    """A client that may not try now: how long until it may, and whether it is locked out."""

    seconds: int
    locked: bool


class AdminSessions:
    """Sessions and login throttling of the admin page, on ``engine``."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        secret = self._secret()
        self._serializer = URLSafeTimedSerializer(secret, salt="cds-admin-session")
        self._form_key = hashlib.sha256(f"cds-admin-form:{secret}".encode()).digest()

    def _secret(self) -> str:
        """One random signing secret per database, made by whichever worker comes first."""
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(admin_secret).values(id=1, secret=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another worker made it
        with self.engine.connect() as connection:
            return connection.execute(
                select(admin_secret.c.secret).where(admin_secret.c.id == 1)
            ).scalar_one()

    # --- sessions -----------------------------------------------------------------------------------------

    def open(self, token_sha256: str) -> str:
        """A new session for whoever proved the token with this hash; returns the cookie value."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as connection:
            connection.execute(delete(admin_sessions).where(admin_sessions.c.expires_at < now))
            connection.execute(
                insert(admin_sessions).values(
                    id=session_id, token_sha256=token_sha256, expires_at=now + SESSION_SECONDS
                )
            )
        return self._serializer.dumps(session_id)

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 512:
            return None
        try:
            session_id = self._serializer.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:  # also SignatureExpired
            return None
        return session_id if isinstance(session_id, str) else None

    def valid(self, cookie: str | None, accepted_hashes: list[str]) -> bool:
        """Is this cookie a live session opened by a token that still opens the page?"""
        session_id = self._session_id(cookie)
        if session_id is None:
            return False
        with self.engine.connect() as connection:
            row = connection.execute(
                select(admin_sessions.c.token_sha256, admin_sessions.c.expires_at).where(
                    admin_sessions.c.id == session_id
                )
            ).first()
        return row is not None and row.expires_at > self.clock() and row.token_sha256 in accepted_hashes

    def form_token(self, cookie: str | None) -> str | None:
        """The token the admin page's forms carry for this cookie's session (None without a session).

        Derived, not stored: the same for every page of one session, different for every session, and not
        computable from the cookie without the database's secret."""
        session_id = self._session_id(cookie)
        if session_id is None:
            return None
        return hmac.new(self._form_key, session_id.encode(), hashlib.sha256).hexdigest()

    def form_token_matches(self, cookie: str | None, presented: str | None) -> bool:
        expected = self.form_token(cookie)
        return expected is not None and hmac.compare_digest(expected, presented or "")

    def close(self, cookie: str | None) -> None:
        """End the session on the server: the cookie is worthless from now on, wherever it was copied."""
        session_id = self._session_id(cookie)
        if session_id is not None:
            with self.engine.begin() as connection:
                connection.execute(delete(admin_sessions).where(admin_sessions.c.id == session_id))

    # --- failed logins ------------------------------------------------------------------------------------

    def wait(self, client: str) -> Wait | None:
        """How long ``client`` must wait before its next attempt, or None if it may try now."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(admin_login_failures).where(admin_login_failures.c.client == client[:64])
            ).first()
        if row is None:
            return None
        since = self.clock() - row.last_failure_at
        if since > FORGET_AFTER_SECONDS:
            return None
        if row.failures >= LOCK_AFTER:
            return Wait(max(1, int(LOCK_SECONDS - since + 0.999)), locked=True)
        if row.failures >= FREE_ATTEMPTS:
            pause = min(2 ** (row.failures - FREE_ATTEMPTS), MAX_WAIT_SECONDS)
            if since < pause:
                return Wait(max(1, int(pause - since + 0.999)), locked=False)
        return None

    def attempt(self, client: str) -> Wait | None:
        """Count an attempt of ``client`` before its token is checked, if it may try now; else how long it
        must wait. One conditional UPDATE decides and counts at once, so 60 guesses sent together get no more
        tries than 60 sent one by one (check-then-count let two slip). A right token resets it."""
        client, now = client[:64], self.clock()
        failures, last = admin_login_failures.c.failures, admin_login_failures.c.last_failure_at
        pause = case(
            {n: min(2 ** (n - FREE_ATTEMPTS), MAX_WAIT_SECONDS) for n in range(FREE_ATTEMPTS, LOCK_AFTER)},
            value=failures,
            else_=0,
        )
        may_try = or_(
            last < now - FORGET_AFTER_SECONDS,
            failures < FREE_ATTEMPTS,
            and_(failures < LOCK_AFTER, last <= now - pause),
        )
        counted = (
            update(admin_login_failures)
            .where(admin_login_failures.c.client == client, may_try)
            .values(
                failures=case((last < now - FORGET_AFTER_SECONDS, 1), else_=failures + 1), last_failure_at=now
            )
        )
        for _ in range(2):  # the client's first attempt inserts its row; a racing first attempt updates it
            with self.engine.begin() as connection:
                if connection.execute(counted).rowcount:
                    return None
            try:
                with self.engine.begin() as connection:
                    row = {"client": client, "failures": 1, "last_failure_at": now}
                    connection.execute(insert(admin_login_failures).values(row))
                return None
            except IntegrityError:
                continue
        return self.wait(client) or Wait(1, locked=False)

    def failed(self, client: str) -> None:
        """Count a failed attempt of ``client`` (atomic increments, so workers racing lose no count)."""
        client, now = client[:64], self.clock()
        with self.engine.begin() as connection:
            connection.execute(  # forgotten failures of every client: the table stays small
                delete(admin_login_failures).where(
                    admin_login_failures.c.last_failure_at < now - FORGET_AFTER_SECONDS
                )
            )
            if self._count(connection, client, now):
                return
        try:
            with self.engine.begin() as connection:
                row = {"client": client, "failures": 1, "last_failure_at": now}
                connection.execute(insert(admin_login_failures).values(row))
        except IntegrityError:  # another worker counted this client's first failure meanwhile
            with self.engine.begin() as connection:
                self._count(connection, client, now)

    @staticmethod
    def _count(connection, client: str, now: float) -> bool:
        counted = connection.execute(
            update(admin_login_failures)
            .where(admin_login_failures.c.client == client)
            .values(failures=admin_login_failures.c.failures + 1, last_failure_at=now)
        )
        return counted.rowcount > 0

    def succeeded(self, client: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                delete(admin_login_failures).where(admin_login_failures.c.client == client[:64])
            )
