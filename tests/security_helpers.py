"""Tools for the security tests: an EHR's signing keys and JWTs, a JWKS server, a connection recorder, and the
service as a real ``cds-service serve`` subprocess whose log is captured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / ".venv" / "bin" / "cds-service"

MINTED: list[str] = []
"""Every bearer token and FHIR access token the tests made: none may ever appear in the service's log."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret(label: str) -> str:
    """A FHIR access token for a test, remembered for the logs check."""
    token = f"{label}-{uuid.uuid4().hex}"
    MINTED.append(token)
    return token


class Signer:
    """One signing key of an EHR (EC P-384 for ES384, RSA 2048 for RS*/PS*)."""

    def __init__(self, alg: str = "ES384", kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"kid-{uuid.uuid4().hex[:12]}"
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
            self.private_key = ec.generate_private_key(curve)
            self.algorithm = jwt.algorithms.ECAlgorithm
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = jwt.algorithms.RSAAlgorithm

    def jwk(self) -> dict[str, Any]:
        jwk = self.algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, "typ": "JWT", **header}
        token = jwt.encode(claims, self.private_key, algorithm=self.alg, headers=headers)
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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


@contextmanager
def jwks_server(documents: dict[str, dict]) -> Iterator[ThreadingHTTPServer]:
    """Serve ``{path: JWK Set}`` on loopback; ``server.requests`` lists every path asked for."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    server.documents = documents
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def add_marker_service(config_dir: Path) -> str:
    """A service with a unique id: /healthz then tells our server from another one on the same port."""
    marker = f"probe-{uuid.uuid4().hex[:12]}"
    source = (config_dir / "services" / "tacrolimus-order-sign.yaml").read_text()
    (config_dir / "services" / f"{marker}.yaml").write_text(
        source.replace("id: tacrolimus-order-sign", f"id: {marker}")
    )
    return marker


class PortTaken(RuntimeError):
    """Another process listens on the port picked for the service (tests of other people run too)."""


class ServiceProcess:
    """``cds-service serve`` in a subprocess, with every stderr line kept (the service logs JSON there)."""

    def __init__(self, config_dir: Path, port: int, workers: int = 2):
        self.base = f"http://127.0.0.1:{port}"
        self.marker = add_marker_service(config_dir)
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                str(SERVE),
                "serve",
                "--config",
                str(config_dir),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=config_dir.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("service exited:\n" + "\n".join(self.lines[-40:]))
            if any("Connection in use" in line for line in self.lines):
                raise PortTaken(self.base)
            try:
                health = requests.get(f"{self.base}/healthz", timeout=2)
                if health.status_code == 200 and self.marker in health.json().get("services", ()):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError("service did not start:\n" + "\n".join(self.lines[-40:]))

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def wait_for_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first log event that ``match``es (log lines reach us a moment after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if match(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError("no such log event; last lines:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)

    def wait_until(self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition(events)`` holds (the reader thread lags the responses a little)."""
        deadline = time.monotonic() + timeout
        while not condition(self.events()):
            if time.monotonic() > deadline:
                raise AssertionError("log condition not met; last lines:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
