"""Serve the WSGI app from granian's RSGI interface, the body read in full before a Python thread takes it.

granian's own WSGI interface hands the app the request body as a stream that a Python thread reads: ten
clients that send their headers and then stall mid-body held every thread of the service (healthz timed
out). Here the body is read on the worker's event loop (a coroutine per connection, no thread), within a
size limit (413) and a time limit (408); only a complete request goes to the pool of ``threads`` Python
threads that run the app. Headers are already read by granian's Rust side, with their own time limit.

A chunked body is read chunk by chunk so that the size limit holds while it arrives. granian ends such a
body at malformed chunk framing as if it were complete (without an error to see here), so the app judges
what arrived: truncated JSON is a 400, a login form without its token a 401 (``bodies.py`` sees a body
with a Content-Length, as it does for every request here).
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
JSON = [("content-type", "application/json")]


class _TooLarge(Exception):
    pass


class BodyFirst:
    """An RSGI application (``__rsgi__``) around a WSGI one."""

    def __init__(
        self,
        app: WsgiApp,
        threads: int,
        max_body_bytes: int,
        body_seconds: float = 10.0,
        forget: Callable[[dict[str, Any]], None] = dict.clear,
        instant_paths: frozenset[str] = frozenset({"/healthz"}),
    ):
        self.app = app
        self.instant_paths = instant_paths
        """GETs answered on the event loop, never queued behind busy threads: liveness must not depend on
        hook calls waiting for a database or a FHIR server (their handlers touch neither)."""
        self.forget = forget
        """Frees a request's environ (and what the app left in it) once its answer is sent."""
        self.threads = threads
        self.max_body_bytes = max_body_bytes
        self.body_seconds = body_seconds
        self.pool: ThreadPoolExecutor | None = None
        # Bodies held in memory at once, per worker: many large uploads wait (then 503) instead of each
        # taking up to max_body_bytes. A body under the limit always fits in an empty budget.
        self.budget = max(64_000_000, 4 * max_body_bytes)
        self.buffered = 0
        self.budget_changed: asyncio.Condition | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="wsgi")
        self.budget_changed = asyncio.Condition()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # in-flight requests finish

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        declared = scope.headers.get("content-length")
        if declared is not None and not declared.strip().isdigit():
            protocol.response_bytes(400, JSON, b'{"error": "Content-Length is not a number"}')
            return
        if declared is not None and int(declared) > self.max_body_bytes:
            protocol.response_bytes(413, JSON, b'{"error": "request body too large"}')
            return
        # A declared length is within the limit (and enforced by the HTTP layer): one read, that much held.
        # A chunked body is counted as it comes and may hold up to the limit; no body holds nothing.
        chunked = declared is None and "chunked" in (scope.headers.get("transfer-encoding") or "").lower()
        held = int(declared) if declared is not None else self.max_body_bytes if chunked else 0
        if held and not await self._reserve(held):
            protocol.response_bytes(503, JSON, b'{"error": "busy receiving other requests; retry"}')
            return
        try:
            await self._answer(scope, protocol, chunked)
        finally:
            if held:
                await self._release(held)  # the body is held until the app has answered

    async def _answer(self, scope: Any, protocol: Any, chunked: bool) -> None:
        try:
            read = self._read(protocol) if chunked else protocol()
            body = await asyncio.wait_for(read, self.body_seconds)
        except _TooLarge:
            protocol.response_bytes(413, JSON, b'{"error": "request body too large"}')
            return
        except TimeoutError:
            protocol.response_bytes(408, JSON, b'{"error": "request body not received in time"}')
            return
        except Exception:  # the client went away mid-body (granian's protocol error): nobody to answer
            return
        if scope.method == "GET" and scope.path in self.instant_paths:
            status, headers, payload, env = self._call(scope, body)
        else:
            loop = asyncio.get_running_loop()
            status, headers, payload, env = await loop.run_in_executor(self.pool, self._call, scope, body)
        protocol.response_bytes(status, headers, payload)
        # What the request leaves in its environ (the hook call's decoded body: a large prefetch takes
        # milliseconds to free) is freed by a pool thread once the answer is on its way, not before.
        assert self.pool is not None
        self.pool.submit(self.forget, env)

    async def _reserve(self, size: int) -> bool:
        """Wait (at most the body time limit) until ``size`` bytes fit the budget; False if they never do."""
        assert self.budget_changed is not None
        async with self.budget_changed:
            try:
                await asyncio.wait_for(
                    self.budget_changed.wait_for(
                        lambda: self.buffered == 0 or self.buffered + size <= self.budget
                    ),
                    self.body_seconds,
                )
            except TimeoutError:
                return False
            self.buffered += size
            return True

    async def _release(self, size: int) -> None:
        assert self.budget_changed is not None
        async with self.budget_changed:
            self.buffered -= size
            self.budget_changed.notify_all()

    async def _read(self, protocol: Any) -> bytes:
        chunks, size = [], 0
        async for chunk in protocol:
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _call(self, scope: Any, body: bytes) -> tuple[int, list[tuple[str, str]], bytes, dict[str, Any]]:
        """Run the WSGI app on one complete request (in a pool thread); the environ is returned to be freed
        after the answer is sent."""
        answer: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"], answer["headers"] = int(status.split(" ", 1)[0]), headers
            return written.append

        env = environ(scope, body)
        result = self.app(env, start_response)
        try:
            payload = b"".join([*written, *result])
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return answer["status"], answer["headers"], payload, env


def environ(scope: Any, body: bytes) -> dict[str, Any]:
    """The WSGI (PEP 3333) environ of an RSGI request scope and its complete body."""
    server_host, _, server_port = scope.server.rpartition(":")
    client_host, _, client_port = scope.client.rpartition(":")
    result: dict[str, Any] = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(scope.path).decode("latin-1"),  # PEP 3333: bytes as latin-1
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": server_host.strip("[]"),
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "SERVER_SOFTWARE": "granian-rsgi (cds-service)",
        "REMOTE_ADDR": client_host.strip("[]"),
        "REMOTE_PORT": client_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body or scope.method in ("POST", "PUT", "PATCH"):
        result["CONTENT_LENGTH"] = str(len(body))
    for name, value in scope.headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_LENGTH":
            continue  # the body as read is what counts (chunked bodies have no Content-Length)
        if key != "CONTENT_TYPE":
            key = f"HTTP_{key}"
        result[key] = f"{result[key]},{value}" if key in result else value
    return result
