"""Who is calling: the EHR's signed JWT is checked before any CDS Hooks endpoint runs (CDS Hooks 2.0 §6).

Checks, cheapest first, so a forged or stale token costs no key fetch: size → structure → algorithm → trusted
issuer → required claims → ``aud`` → time (bounded skew) → ``tenant`` → ``jku`` allowlist → key (JWKS, cached,
refreshed on an unknown ``kid`` at a bounded rate) → signature → ``jti`` never seen (on the database, so every
worker sees it). Any failure raises ``AuthError`` with a reason for the log; the caller only ever sees 401.
Tokens are never logged: the reason, issuer, kid and jti are.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cds_service.config import Config
from cds_service.fhir_client import exchange_deadline, read_capped, shared_session
from cds_service.tables import seen_tokens

log = logging.getLogger("cds_service.auth")

ALLOWED_ALGORITHMS = ("ES384", "RS384", "ES256", "RS256", "PS256", "PS384", "PS512")
"""Asymmetric only: never ``none``, never HMAC (an HMAC 'signed' with a public key proves nothing)."""
DEFAULT_ALGORITHMS = ("ES384", "RS384")
KEY_TYPES = {
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"),
    "RS256": ("RSA", None), "RS384": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
}  # fmt: skip
PUBLIC_JWK_MEMBERS = {"kty", "kid", "crv", "x", "y", "n", "e", "alg", "use"}
MIN_RSA_BITS = 2048
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
MAX_JTI_CHARS = 255
DEFAULT_CLOCK_SKEW_SECONDS = 60
DEFAULT_MAX_TOKEN_BYTES = 8192
DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 300
"""CDS Hooks 2.0 §6.1: ``exp`` "no more than 5 minutes in the future" of issue. It also bounds how long a jti
is kept in the replay table."""
LATEST_TIME = 253402300799
"""9999-12-31T23:59:59Z: a time claim beyond it (or negative, or not finite) is not a time."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

PUBLISHED_TEST_KEYS = {
    # Their private keys are public, so anyone can sign with them: trusted only in dev configurations.
    "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB": "the CDS Hooks Sandbox key",
    "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk": "the CDS Hooks spec's example key",
}


class AuthError(Exception):
    """The caller is not let in. ``reason`` is for the log only; the answer is always a bare 401."""

    def __init__(self, reason: str, **facts: Any):
        super().__init__(reason)
        self.reason = reason
        self.facts = {k: _short(v) for k, v in facts.items() if v is not None}

    def log_fields(self) -> dict[str, Any]:
        return {"reason": self.reason, **self.facts, "worker_pid": os.getpid()}


def _short(value: Any) -> Any:
    """Values taken from an unverified token are attacker-chosen: keep them short in the log."""
    return value[:200] if isinstance(value, str) else value


@dataclass(frozen=True)
class TrustedIssuer:
    """One EHR registered in ``callers``: where its keys are, and what it may do."""

    issuer: str
    jwks_url: str | None = None
    jwks: Mapping[str, Mapping[str, Any]] | None = None
    """Inline keys by kid; when set, nothing is fetched for this issuer."""
    jku_allowlist: frozenset[str] = frozenset()
    algorithms: frozenset[str] = frozenset(DEFAULT_ALGORITHMS)
    tenants: frozenset[str] = frozenset()
    fhir_servers: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, entry: Mapping[str, Any]) -> TrustedIssuer:
        inline, jwks_url = entry.get("jwks"), entry.get("jwks_url")
        return cls(
            issuer=entry["issuer"],
            jwks_url=jwks_url,
            jwks={k["kid"]: k for k in inline["keys"]} if inline else None,
            # the configured JWKS URL may always be named in a token's jku
            jku_allowlist=frozenset([*(entry.get("jku_allowlist") or ()), *([jwks_url] if jwks_url else [])]),
            algorithms=frozenset(entry.get("algorithms") or DEFAULT_ALGORITHMS),
            tenants=frozenset(entry.get("tenants") or ()),
            fhir_servers=tuple(entry.get("fhir_servers") or ()),
        )


@dataclass(frozen=True)
class Caller:
    """An authenticated EHR for the length of one request."""

    trusted: TrustedIssuer
    tenant: str | None
    jti: str
    kid: str

    @property
    def issuer(self) -> str:
        return self.trusted.issuer


# --- keys ------------------------------------------------------------------------------------------


def key_url_problem(url: str) -> str | None:
    """Keys come over https, or plain http from this machine only (a JWKS on loopback)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    return "key URL must be https (or http on loopback)"


@dataclass
class _KeySet:
    keys: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None
    attempted_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class JwksCache:
    """JWK Sets by URL, for one process. A set is fetched when first needed, again after ``max_age``, and
    again when a token names an unknown ``kid`` (key rotation), but never more often than once per
    ``refresh_interval`` per URL: a flood of made-up kids costs at most one fetch per interval.
    If a refresh fails the last good keys are kept for up to ``max_stale`` seconds."""

    def __init__(
        self,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        max_stale: float = 86400.0,
        max_bytes: int = 256_000,
        timeout: tuple[float, float] = (2.0, 3.0),
    ):
        self.session = session or shared_session()
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self.max_stale = max_stale
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._sets: dict[str, _KeySet] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str) -> Mapping[str, Any] | None:
        with self._lock:
            keyset = self._sets.setdefault(url, _KeySet())
        with keyset.lock:
            now = self.clock()
            old = keyset.fetched_at is None or now - keyset.fetched_at > self.max_age
            may_fetch = keyset.attempted_at is None or now - keyset.attempted_at >= self.refresh_interval
            if (old or kid not in keyset.keys) and may_fetch:
                keyset.attempted_at = now
                try:
                    keyset.keys = self._fetch(url)
                    keyset.fetched_at = now
                except (requests.RequestException, ValueError) as error:
                    log.warning("JWKS fetch failed", extra={"jwks_url": url, "error": str(error)[:200]})
            if keyset.fetched_at is None or now - keyset.fetched_at > self.max_stale:
                return None
            return keyset.keys.get(kid)

    def _fetch(self, url: str) -> dict[str, Mapping[str, Any]]:
        problem = key_url_problem(url)
        if problem:
            raise ValueError(problem)
        headers = {"Accept": "application/jwk-set+json, application/json"}
        deadline = time.monotonic() + sum(self.timeout)  # wall-clock: a trickling key server is cut too
        with (
            exchange_deadline(deadline),
            self.session.get(
                url, headers=headers, timeout=self.timeout, allow_redirects=False, stream=True
            ) as r,
        ):
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}")
            body = read_capped(r, self.max_bytes)  # BodyTooLarge is a ValueError
        document = json.loads(body)
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise ValueError("not a JWK Set")
        return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}


def public_key(jwk: Mapping[str, Any], alg: str, allow_test_keys: bool) -> Any:
    """The verification key of ``jwk`` for ``alg``, or AuthError if the key does not fit the algorithm."""
    kty, crv = KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv):
        raise AuthError("key type does not match the algorithm", alg=alg, kid=jwk.get("kid"))
    if jwk.get("use") not in (None, "sig") or jwk.get("alg") not in (None, alg):
        raise AuthError("key is not for signatures with this algorithm", alg=alg, kid=jwk.get("kid"))
    if not allow_test_keys and jwk.get("x") in PUBLISHED_TEST_KEYS:
        what = PUBLISHED_TEST_KEYS[jwk["x"]]
        raise AuthError(f"{what} is trusted only in dev configurations", kid=jwk.get("kid"))
    try:
        key = jwt.PyJWK({k: v for k, v in jwk.items() if k in PUBLIC_JWK_MEMBERS}, algorithm=alg).key
    except jwt.PyJWTError:
        raise AuthError("key cannot be read", kid=jwk.get("kid")) from None
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        raise AuthError(f"RSA key shorter than {MIN_RSA_BITS} bits", kid=jwk.get("kid"))
    return key


# --- replay ----------------------------------------------------------------------------------------


class ReplayStore:
    """Every (issuer, jti) accepted, until its token can no longer pass the expiry check.

    On the service's database, so all workers (and hosts, with PostgreSQL) share it; the primary key makes
    "first use" atomic. Rows past their expiry are pruned now and then: such a token is refused anyway.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, prune_every: float = 60.0):
        self.engine = engine
        self.clock = clock
        self.prune_every = prune_every
        self._pruned_at = float("-inf")

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record this jti; False if it was recorded before (a replay)."""
        now = self.clock()
        if now - self._pruned_at >= self.prune_every:
            self._pruned_at = now
            with self.engine.begin() as connection:
                connection.execute(delete(seen_tokens).where(seen_tokens.c.expires_at < int(now)))
        try:
            with self.engine.begin() as connection:
                row = {"issuer": issuer, "jti": jti, "expires_at": int(expires_at) + 1}
                connection.execute(insert(seen_tokens).values(row))
        except IntegrityError:
            return False
        return True


# --- the token -------------------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("no bearer token")
    return token.strip()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate member")
    return dict(pairs)


def _segment(text: str, what: str) -> dict[str, Any]:
    """One base64url JSON object of a compact JWS, strictly: no padding, no duplicate members."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
            raise ValueError("not canonical base64url")
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuthError(f"malformed token {what}") from None
    if not isinstance(value, dict):
        raise AuthError(f"malformed token {what}")
    return value


def _time(value: Any) -> bool:
    """A NumericDate this service can compare and store: finite, in 0..9999-12-31 (NaN, 1e400 and 2**70 are
    not; NaN would even pass every comparison)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= LATEST_TIME
    )


class Verifier:
    """Checks the JWT of a call to ``public_base_url`` + path against the registered ``callers``."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        public_base_url: str,
        replay: ReplayStore,
        keys: JwksCache,
        clock_skew: float = DEFAULT_CLOCK_SKEW_SECONDS,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
        allow_test_keys: bool = False,
        max_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    ):
        self.issuers = {i.issuer: i for i in issuers}
        self.public_base_url = public_base_url.rstrip("/")
        self.replay = replay
        self.keys = keys
        self.clock_skew = clock_skew
        self.max_token_bytes = max_token_bytes
        self.clock = clock
        self.allow_test_keys = allow_test_keys
        self.max_lifetime = max_lifetime

    @classmethod
    def from_config(cls, config: Config, replay: ReplayStore, keys: JwksCache, dev: bool = False) -> Verifier:
        server = config.section("server")
        base = server["public_base_url"]
        issuers = [TrustedIssuer.from_settings(entry) for entry in config.settings.get("callers") or ()]
        allow_test_keys = dev or urlsplit(base).hostname in LOOPBACK_HOSTS
        for issuer in issuers:
            for jwk in (issuer.jwks or {}).values():
                if jwk.get("x") in PUBLISHED_TEST_KEYS and not allow_test_keys:
                    log.error(
                        "a published test key is configured; its tokens will be refused",
                        extra={"issuer": issuer.issuer, "kid": jwk.get("kid")},
                    )
        return cls(
            issuers,
            base,
            replay,
            keys,
            clock_skew=server.get("clock_skew_seconds", DEFAULT_CLOCK_SKEW_SECONDS),
            max_token_bytes=server.get("max_token_bytes", DEFAULT_MAX_TOKEN_BYTES),
            allow_test_keys=allow_test_keys,
            max_lifetime=server.get("max_token_lifetime_seconds", DEFAULT_MAX_TOKEN_LIFETIME_SECONDS),
        )

    def verify(self, authorization: str | None, path: str) -> Caller:
        """The caller of ``path`` (e.g. ``/cds-services/x``), or AuthError."""
        token = bearer_token(authorization)
        if len(token) > self.max_token_bytes:
            raise AuthError(f"token larger than {self.max_token_bytes} bytes", size=len(token))
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError("not a compact JWS")
        header, claims = _segment(parts[0], "header"), _segment(parts[1], "payload")
        alg, kid, iss, jti = header.get("alg"), header.get("kid"), claims.get("iss"), claims.get("jti")
        facts = {
            name: value if isinstance(value, str) else None
            for name, value in (("issuer", iss), ("kid", kid), ("jti", jti))
        }
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError("algorithm refused", alg=str(alg), **facts)
        trusted = self.issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise AuthError("issuer not trusted", **facts)
        if alg not in trusted.algorithms:
            raise AuthError("algorithm not allowed for this issuer", alg=alg, **facts)
        self._check_header(header, facts)
        expires_at = self._check_claims(claims, path, trusted, facts)
        iss, kid, jti = str(iss), str(kid), str(jti)  # each checked above to be a non-empty string
        jwk = self._jwk(trusted, header, kid, facts)
        key = public_key(jwk, alg, self.allow_test_keys)
        try:
            jwt.PyJWS().decode_complete(token, key=key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise AuthError("signature does not verify", **facts) from None
        except jwt.PyJWTError as error:
            raise AuthError(f"token rejected by the JWS check ({type(error).__name__})", **facts) from None
        if not self.replay.first_use(iss, jti, expires_at):
            raise AuthError("jti already used (replay)", **facts)
        caller = Caller(trusted=trusted, tenant=claims.get("tenant"), jti=jti, kid=kid)
        log.info("caller authenticated", extra={**facts, "tenant": caller.tenant, "worker_pid": os.getpid()})
        return caller

    def _check_header(self, header: Mapping[str, Any], facts: Mapping[str, Any]) -> None:
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise AuthError("no kid in the token header", **facts)
        if header.get("typ") not in (None, "JWT", "jwt"):
            raise AuthError("token typ is not JWT", **facts)
        if "crit" in header or "b64" in header:
            raise AuthError("token uses JWS extensions this service does not support", **facts)
        if "jku" in header and not isinstance(header["jku"], str):
            raise AuthError("jku is not a URL", **facts)

    def _check_claims(self, claims: Mapping[str, Any], path: str, trusted: TrustedIssuer, facts) -> float:
        """Everything about the claims except the signature; returns when the jti may be forgotten."""
        missing = [name for name in REQUIRED_CLAIMS if name not in claims]
        if missing:
            raise AuthError(f"missing claims: {', '.join(missing)}", **facts)
        jti, exp, iat = claims["jti"], claims["exp"], claims["iat"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise AuthError(f"jti must be a string of 1-{MAX_JTI_CHARS} characters", **facts)
        if not _time(exp) or not _time(iat) or ("nbf" in claims and not _time(claims["nbf"])):
            raise AuthError("exp, iat and nbf must be numbers of seconds (finite, not before 1970)", **facts)
        audience = self.public_base_url + path
        aud = claims["aud"]
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise AuthError("aud does not name this endpoint", expected_aud=audience, **facts)
        now, skew = self.clock(), self.clock_skew
        if now > exp + skew:
            raise AuthError("token expired", **facts)
        if iat > now + skew or claims.get("nbf", now) > now + skew:
            raise AuthError("token not yet valid (iat or nbf in the future)", **facts)
        if exp < iat:
            raise AuthError("token expires before it was issued", **facts)
        if exp - iat > self.max_lifetime:
            raise AuthError(f"token lifetime (exp - iat) over {self.max_lifetime} seconds", **facts)
        tenant = claims.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or tenant not in trusted.tenants):
            raise AuthError("tenant not allowed for this issuer", tenant=str(tenant), **facts)
        return exp + skew

    def _jwk(self, trusted: TrustedIssuer, header: Mapping[str, Any], kid: str, facts) -> Mapping[str, Any]:
        jku = header.get("jku")
        if jku is not None and jku not in trusted.jku_allowlist:
            raise AuthError("jku not on the issuer's allowlist", jku=jku, **facts)
        if trusted.jwks is not None:
            jwk = trusted.jwks.get(kid)
        else:
            url = jku or trusted.jwks_url  # an issuer has inline jwks or a jwks_url (config schema)
            jwk = self.keys.key(url, kid) if url else None
        if jwk is None:
            raise AuthError("unknown kid", **facts)
        return jwk


PROCESS_KEYS = JwksCache()
"""One key cache per process, kept across configuration reloads."""
