"""FHIR servers that misbehave in ways ``sandbox.fhir_server.Faults`` cannot: canned (malformed or huge)
answers and a server that trickles its answer one byte at a time (issue 12). For ``bench.hostile`` and the
hostile tests alike."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.harness import LOINC, searchset


class _CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        path = self.path.split("/", 2)[-1] if self.path.count("/") > 1 else self.path.lstrip("/")
        body = next(
            (answer for prefix, answer in self.server.answers.items() if path.startswith(prefix)), None
        )
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def canned_fhir_server(answers: dict[str, Any]) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """A FHIR server answering every GET whose path (after the base) starts with a key of ``answers`` with
    that JSON document (bytes are sent as they are); 404 otherwise. Yields (base URL, server);
    ``server.paths`` lists the paths asked for."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedHandler)
    server.daemon_threads = True
    server.answers = {
        prefix: body if isinstance(body, bytes) else json.dumps(body).encode()
        for prefix, body in answers.items()
    }
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir", server
    finally:
        server.shutdown()
        server.server_close()


class _Trickle(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, interval: float, duration: float):
        super().__init__(("127.0.0.1", 0), _TrickleHandler)
        self.interval = interval
        self.duration = duration
        self.lock = threading.Lock()
        self.open = 0
        self.accepted = 0
        self.stopping = threading.Event()


class _TrickleHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _Trickle = self.server  # type: ignore[assignment]
        with server.lock:
            server.open += 1
            server.accepted += 1
        try:
            self.request.settimeout(5)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                received += chunk
            body = b'{"resourceType": "Bundle", "type": "searchset", "entry": []}' + b" " * 10_000
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n".encode()
            stream = head + body
            ends = time.monotonic() + server.duration
            for i in range(len(stream)):  # the status line and headers trickle too
                if server.stopping.is_set() or time.monotonic() > ends:
                    return
                self.request.sendall(stream[i : i + 1])
                time.sleep(server.interval)
        except OSError:
            return  # the client hung up: what the service should do at its deadline
        finally:
            with server.lock:
                server.open -= 1


@contextmanager
def trickling_fhir_server(interval: float = 0.5, duration: float = 60.0) -> Iterator[tuple[str, _Trickle]]:
    """A FHIR server that sends its whole answer, headers included, one byte per ``interval`` seconds for up
    to ``duration`` seconds. Yields (base URL, server); ``server.open`` counts the connections still open."""
    server = _Trickle(interval, duration)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir", server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def creatinine(i: int, value: float, minutes_ago: float, now: datetime) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"cr{i}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2160-0"}]},
        "effectiveDateTime": (now - timedelta(minutes=minutes_ago)).isoformat(timespec="seconds"),
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


def rising_creatinine(count: int, minutes_apart: float, now: datetime) -> list[dict]:
    """``count`` creatinine results: 1.3 mg/dL 30 minutes ago, and before it 0.8 every ``minutes_apart``
    minutes: a 62 % rise from baseline that only the newest results show."""
    older = [creatinine(i, 0.8, 60 + minutes_apart * i, now) for i in range(1, count)]
    return [creatinine(0, 1.3, 30, now), *older]


def search_answers(patient: list[dict], observations: Any) -> dict[str, Any]:
    """What the canned FHIR server answers for ``patient`` (``support.small_patient`` without results): its
    Patient, Condition, order and allergy, and ``observations`` (a Bundle, or its JSON bytes) for the
    Observation search."""
    return {
        "Patient": patient[0],
        "Condition": searchset([patient[1]]),
        "MedicationRequest": searchset([patient[2]]),
        "AllergyIntolerance": searchset([patient[3]]),
        "Observation": observations,
    }


def compact(bundle: dict) -> bytes:
    return json.dumps(bundle, separators=(",", ":")).encode()
