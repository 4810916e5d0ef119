"""Calls back to the EHR's FHIR server, always inside one deadline per hook request.

Each request gets a ``FhirClient`` bound to the caller's ``fhirServer``, its access token and a deadline.
The deadline is a wall-clock limit on the whole exchange, reads included: a watchdog shuts the socket of any
exchange still running at its deadline, so a server that trickles one byte per second holds a thread no
longer than a fast one that times out. Nothing here may follow a redirect, send the token anywhere but the
server it was issued for, or read an unbounded body. Errors come out as ``FhirError`` with a reason that is
safe to log (never the token).
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from cds_service import metrics
from cds_service.fhir_json import MalformedBundle, bundle_entries, bundle_links, text

FHIR_JSON = "application/fhir+json, application/json;q=0.9"


class FhirError(Exception):
    """The FHIR server could not give the data: timeout, refusal, error status, garbage or a policy block."""


class Incomplete(FhirError):
    """Some of the data was had, not all of it (the page cap, or a later page failed): keep ``resources``."""

    def __init__(self, reason: str, resources: list[dict]):
        super().__init__(reason)
        self.resources = resources


# --- the wall-clock deadline of an exchange ------------------------------------------------------------


class Watchdog:
    """Shuts the sockets of exchanges still running at their deadline (one daemon thread per process).

    A socket timeout bounds each ``recv``, not the exchange: a server sending a byte a second never trips it.
    Shutting the socket down makes the blocked read in the calling thread fail at once.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._sockets: dict[int, socket.socket] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._condition:
            ticket = next(self._ids)
            self._sockets[ticket] = sock
            heapq.heappush(self._heap, (deadline, ticket))
            if self._thread is None or not self._thread.is_alive():  # also after a fork (gunicorn workers)
                self._thread = threading.Thread(target=self._run, name="fhir-deadline", daemon=True)
                self._thread.start()
            self._condition.notify()
        return ticket

    def unwatch(self, ticket: int) -> None:
        with self._condition:
            self._sockets.pop(ticket, None)

    def _run(self) -> None:
        with self._condition:
            while True:
                while self._heap and self._heap[0][1] not in self._sockets:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._condition.wait()
                    continue
                deadline, ticket = self._heap[0]
                if (wait := deadline - time.monotonic()) > 0:
                    self._condition.wait(wait)
                    continue
                heapq.heappop(self._heap)
                sock = self._sockets.pop(ticket)
                # the plain socket's shutdown, also for TLS: the blocked read then fails at once
                with contextlib.suppress(OSError):  # already closed
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


WATCHDOG = Watchdog()
_exchange = threading.local()


@contextmanager
def exchange_deadline(deadline: float) -> Iterator[None]:
    """Connections of the ``shared_session`` used in this block (this thread) are cut at ``deadline``."""
    _exchange.deadline, _exchange.tickets = deadline, []
    try:
        yield
    finally:
        for ticket in _exchange.tickets:
            WATCHDOG.unwatch(ticket)
        _exchange.deadline, _exchange.tickets = None, []


class _Watched:
    """Mixed into urllib3's connections: inside ``exchange_deadline``, the socket is watched from its creation
    (a trickled TLS handshake too) and again when a pooled connection is reused for a request."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _watch(sock)
        return sock

    def getresponse(self, *args: Any, **kwargs: Any):
        if self.sock is not None:
            _watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


def _watch(sock: socket.socket) -> None:
    deadline = getattr(_exchange, "deadline", None)
    if deadline is not None:
        _exchange.tickets.append(WATCHDOG.watch(sock, deadline))


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def shared_session() -> requests.Session:
    """One connection pool per process, shared by all requests; credentials are set per call, never here."""
    session = requests.Session()
    adapter = _WatchedAdapter(pool_connections=8, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # proxies from the environment must not see patient data or tokens
    return session


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


_DOT_OR_ENCODED = re.compile(r"(^|/)\.{1,2}(/|$)|%2e|%2f|%5c|\\", re.IGNORECASE)


def under_base(url: str, base_url: str) -> bool:
    """Is ``url`` on the FHIR server's origin and under its base path, with no dot segment or encoded
    separator a server could resolve to somewhere else?"""
    parts, base = urlsplit(url), urlsplit(base_url)
    if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
        return False
    return parts.path.startswith(base.path) and not _DOT_OR_ENCODED.search(parts.path)


@dataclass
class FhirClient:
    base_url: str
    token: str | None
    session: requests.Session
    deadline: float
    """``time.monotonic()`` value after which no call starts and running reads are cut off."""
    page_cap: int = 10
    max_bytes: int = 20_000_000
    max_resources: int = 50_000
    """Per search, pages together: what the record builder may have to look at stays bounded."""
    request_id: str | None = None
    """Sent as ``X-Request-ID`` so the FHIR server's logs can be matched with ours."""

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/") + "/"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def url(self, query: str) -> str:
        return urljoin(self.base_url, query.lstrip("/"))

    def get(self, url: str) -> dict | None:
        """GET one FHIR JSON document; None for 404/410. The URL must be on the FHIR server's origin."""
        try:
            document = self._fetch(url)
        except FhirError as error:
            metrics.FHIR_REQUESTS.labels(outcome=metrics.fhir_outcome(str(error))).inc()
            raise
        metrics.FHIR_REQUESTS.labels(outcome="ok" if document is not None else "not_found").inc()
        return document

    def _fetch(self, url: str) -> dict | None:
        try:
            off_server = origin(url) != origin(self.base_url)
            off_base = not under_base(url, self.base_url)
        except ValueError:  # urlsplit refuses some hostile links ("http://[x")
            raise FhirError("malformed link; not followed") from None
        if off_server:
            raise FhirError("link leads off the FHIR server; not followed")
        if off_base:  # the token goes only under the FHIR base the caller named
            raise FhirError("link leads outside the FHIR server's base path; not followed")
        remaining = self.remaining()
        if remaining <= 0:
            raise FhirError("the deadline passed before the call could start (too many calls to this server)")
        headers = {"Accept": FHIR_JSON}
        if self.request_id:
            headers["X-Request-ID"] = self.request_id
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with (
                exchange_deadline(self.deadline),
                self.session.get(
                    url,
                    headers=headers,
                    timeout=(min(remaining, 2.0), remaining),
                    allow_redirects=False,
                    stream=True,
                ) as response,
            ):
                if response.status_code in (404, 410):
                    return None
                if 300 <= response.status_code < 400:
                    raise FhirError(f"HTTP {response.status_code} redirect; redirects are not followed")
                if response.status_code != 200:
                    raise FhirError(f"HTTP {response.status_code}")
                body = self._read_body(response)
        except (requests.RequestException, OSError, http.client.HTTPException, ValueError) as exc:
            if self.remaining() <= 0:
                raise FhirError("did not answer within the deadline") from None
            if isinstance(exc, requests.Timeout):
                raise FhirError("timed out") from None
            raise FhirError(f"connection failed ({type(exc).__name__})") from None
        document = parse_json(body)
        if not isinstance(document, dict) or "resourceType" not in document:
            raise FhirError("response is not a FHIR resource")
        return document

    def _read_body(self, response: requests.Response) -> bytes:
        try:
            return read_capped(response, self.max_bytes, in_time=lambda: self.remaining() > 0)
        except BodyTooLarge as error:
            raise FhirError(str(error)) from None
        except TimeoutError:
            raise FhirError("did not answer within the deadline") from None

    def read(self, query: str) -> dict | None:
        """A read such as ``Patient/123``: the resource, or None if the server has none."""
        document = self.get(self.url(query))
        if document is not None and document.get("resourceType") == "OperationOutcome":
            raise FhirError("server answered with an OperationOutcome")
        return document

    def search(self, query: str) -> list[dict]:
        """Every resource a search returns, following ``next`` links up to the page cap."""
        return self.rest_of(self.get(self.url(query)))

    def rest_of(self, bundle: dict | None) -> list[dict]:
        """The matches of a searchset Bundle and of the pages after it (completes a partial prefetch).

        Past the page cap, or when a later page fails, the pages already had are kept: ``Incomplete``.
        """
        resources: list[dict] = []
        pages = 0
        while bundle is not None:
            try:
                if bundle.get("resourceType") != "Bundle":
                    raise FhirError(f"search answered with {bundle.get('resourceType')!r}, not a Bundle")
                try:
                    resources.extend(bundle_resources(bundle))
                    next_url = next_link(bundle)
                except MalformedBundle as error:
                    raise FhirError(f"malformed Bundle: {error}") from None
                pages += 1
                if len(resources) > self.max_resources:
                    raise Incomplete(too_many(self.max_resources), resources[: self.max_resources])
                if next_url is None:
                    break
                if pages >= self.page_cap:
                    raise FhirError(f"more than {self.page_cap} pages; only the first {pages} were read")
                try:
                    next_page = urljoin(self.base_url, next_url)
                except ValueError:
                    raise FhirError("malformed next link; not followed") from None
                bundle = self.get(next_page)
            except Incomplete:
                raise
            except FhirError as error:
                if pages == 0:
                    raise
                raise Incomplete(str(error), resources) from None
        return resources


def too_many(limit: int) -> str:
    return f"more than {limit} resources; only the first {limit} were read"


class BodyTooLarge(ValueError):
    """A response body over the caller's byte limit (declared or streamed)."""


def read_capped(response: requests.Response, max_bytes: int, in_time=lambda: True) -> bytes:
    """A streamed response's body, refusing more than ``max_bytes``; TimeoutError once ``in_time()`` is false.

    Every body from a server the service does not control (FHIR servers, JWKS hosts) is read through here.
    """
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"response larger than {max_bytes} bytes")
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"response larger than {max_bytes} bytes")
        if not in_time():
            raise TimeoutError
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> dict:
    """A FHIR JSON document, or FhirError. orjson first (several times faster on big Bundles)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits, which are valid JSON
            document = json.loads(body)
        except ValueError:
            raise FhirError("response is not JSON") from None
    if not isinstance(document, dict) or "resourceType" not in document:
        raise FhirError("response is not a FHIR resource")
    return document


def bundle_resources(bundle: dict) -> list[dict]:
    """The resources of a Bundle's entries, without OperationOutcome entries (``search.mode = outcome``).

    MalformedBundle when the Bundle's shape is wrong (see ``fhir_json.bundle_entries``).
    """
    return [
        r if isinstance(r, dict) else dict(r)
        for r in bundle_entries(bundle)
        if text(r.get("resourceType")) not in (None, "OperationOutcome")
    ]


def next_link(bundle: dict) -> str | None:
    for link in bundle_links(bundle):
        if link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None
