"""Tools for the security tests: an EHR's signing keys and JWTs, a JWKS server and a connection recorder (the
service itself runs as ``support.ServiceProcess``). The keys come from ``bench/ehr_keys.py``, which the
benchmarks share."""

from __future__ import annotations

import hashlib
import hmac
import json
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from bench.ehr_keys import MINTED, Signer, b64url, bearer

__all__ = [
    "MINTED",
    "Signer",
    "b64url",
    "bearer",
    "claims",
    "connection_recorder",
    "hmac_token",
    "jwks_server",
    "secret",
    "unsigned_token",
]


def secret(label: str) -> str:
    """A FHIR access token for a test, remembered for the logs check."""
    token = f"{label}-{uuid.uuid4().hex}"
    MINTED.append(token)
    return token


def claims(issuer: str, aud: Any, /, **changes: Any) -> dict[str, Any]:
    """Valid claims for ``aud``; ``name=None`` in ``changes`` leaves that claim out."""
    now = int(time.time())
    values = {"iss": issuer, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    token = ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)]
    )
    MINTED.append(token)
    return token


def hmac_token(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """The classic key-confusion forgery: HS256 'signed' with the issuer's public key as the HMAC secret."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(signature)}"
    MINTED.append(token)
    return token


class _JwksHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        document = self.server.documents.get(self.path)
        body = json.dumps(document).encode() if document is not None else b"{}"
        self.send_response(200 if document is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


S = TypeVar("S", bound=socketserver.BaseServer)


@contextmanager
def _serving(server: S) -> Iterator[S]:
    """``server`` answering in a background thread until the block ends, then closed."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def jwks_server(documents: dict[str, dict]) -> Iterator[ThreadingHTTPServer]:
    """Serve ``{path: JWK Set}`` on loopback; ``server.requests`` lists every path asked for."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    server.documents = documents
    server.requests = []
    with _serving(server):
        yield server


class _Recorder(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        self.connections = 0

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1
        return False  # close it at once: whatever came here should never have come


@contextmanager
def connection_recorder() -> Iterator[_Recorder]:
    """A TCP listener that only counts connections: proof that the service did (not) connect somewhere."""
    with _serving(_Recorder()) as server:
        yield server
