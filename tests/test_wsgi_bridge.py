"""The body-first bridge on its own: how much body it holds at once. (Its HTTP behaviour — slow and stalled
clients, 408, 413 — is tested against a real ``cds-service serve`` in test_server.py; here granian's
protocol object is stood in for, to hold two requests in flight at a chosen moment.)"""

from __future__ import annotations

import asyncio
import threading

from cds_service.wsgi_bridge import BodyFirst


class Headers(dict):
    pass


class Scope:
    proto = "http"
    http_version = "1.1"
    server = "127.0.0.1:8080"
    client = "127.0.0.1:50000"
    scheme = "http"
    method = "POST"
    path = "/echo%20me"
    query_string = "a=1"

    def __init__(self, length: int):
        self.headers = Headers({"content-length": str(length), "content-type": "text/plain", "x-a": "1"})


class Protocol:
    """Gives its body when ``release`` is set; records the answer."""

    def __init__(self, body: bytes):
        self.body = body
        self.release = asyncio.Event()
        self.answer: tuple[int, bytes] | None = None

    async def __call__(self) -> bytes:
        await self.release.wait()
        return self.body

    def response_bytes(self, status: int, headers: list, body: bytes) -> None:
        self.answer = (status, body)


def echo(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [environ["PATH_INFO"].encode("latin-1"), b"|", environ["wsgi.input"].read()]


def test_bodies_beyond_the_budget_wait_until_earlier_ones_are_answered():
    async def scenario() -> None:
        bridge = BodyFirst(echo, threads=2, max_body_bytes=100)
        bridge.budget = 150  # room for one 100-byte body at a time
        bridge.__rsgi_init__(asyncio.get_running_loop())
        first, second = Protocol(b"a" * 100), Protocol(b"b" * 100)
        second.release.set()  # the second client has sent everything at once
        one = asyncio.create_task(bridge.__rsgi__(Scope(100), first))
        await asyncio.sleep(0.05)
        two = asyncio.create_task(bridge.__rsgi__(Scope(100), second))
        await asyncio.sleep(0.2)
        assert second.answer is None  # not read: the first body holds the budget
        first.release.set()
        await asyncio.gather(one, two)
        assert first.answer == (200, b"/echo me|" + b"a" * 100)
        assert second.answer == (200, b"/echo me|" + b"b" * 100)
        assert bridge.buffered == 0
        bridge.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(scenario())


def test_a_body_is_held_until_the_app_answers_and_one_that_never_fits_gets_503():
    app_may_answer = threading.Event()

    def slow(environ, start_response):
        app_may_answer.wait(5)
        return echo(environ, start_response)

    async def scenario() -> None:
        bridge = BodyFirst(slow, threads=2, max_body_bytes=100, body_seconds=0.3)
        bridge.budget = 150
        bridge.__rsgi_init__(asyncio.get_running_loop())
        busy, waiting = Protocol(b"a" * 100), Protocol(b"b" * 100)
        busy.release.set()
        waiting.release.set()
        one = asyncio.create_task(bridge.__rsgi__(Scope(100), busy))
        await asyncio.sleep(0.05)
        await bridge.__rsgi__(Scope(100), waiting)  # the first body is still held by the running app
        assert waiting.answer == (503, b'{"error": "busy receiving other requests; retry"}')
        app_may_answer.set()
        await one
        assert busy.answer == (200, b"/echo me|" + b"a" * 100)
        assert bridge.buffered == 0
        bridge.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(scenario())


def test_a_stalled_body_gets_408_and_frees_its_share():
    async def scenario() -> None:
        bridge = BodyFirst(echo, threads=1, max_body_bytes=100, body_seconds=0.2)
        bridge.__rsgi_init__(asyncio.get_running_loop())
        stalled = Protocol(b"a" * 100)
        await bridge.__rsgi__(Scope(100), stalled)
        assert stalled.answer == (408, b'{"error": "request body not received in time"}')
        assert bridge.buffered == 0
        bridge.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(scenario())
