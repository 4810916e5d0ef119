"""Request bodies the service will read: plain (no Content-Encoding), at most ``max_body_bytes``, well framed.

A WSGI middleware in front of the app, so every endpoint (hooks, feedback, admin forms) gets the same answer:

- ``Content-Encoding`` other than ``identity`` → 415 (the service does not inflate bodies: a zip bomb costs
  nothing to send);
- a chunked body is read here, up to the limit: over it → 413, malformed chunk framing → 400. The app then
  sees an ordinary body with a Content-Length. (A declared Content-Length over the limit gets 413 from Flask's
  ``MAX_CONTENT_LENGTH`` without being read.)
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("cds_service.bodies")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _answer(start_response: Callable[..., Any], status: str, message: str, headers: dict[str, str]):
    body = json.dumps({"error": message}).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),  # the rest of the body, if any, is not read
            *headers.items(),
        ],
    )
    return [body]


class BodyGuard:
    def __init__(self, app: WsgiApp, max_bytes: int, headers: dict[str, str] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.headers = headers or {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        encoding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if encoding not in ("", "identity"):
            message = "Content-Encoding is not supported: send the body uncompressed"
            return _answer(start_response, "415 Unsupported Media Type", message, self.headers)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            try:
                body = environ["wsgi.input"].read(self.max_bytes + 1)
            except Exception as error:  # the server's chunk parser (gunicorn, werkzeug) raises its own types
                log.warning("malformed chunked body", extra={"error": type(error).__name__})
                return _answer(start_response, "400 Bad Request", "malformed chunked body", self.headers)
            if len(body) > self.max_bytes:
                return _answer(
                    start_response, "413 Request Entity Too Large", "request body too large", self.headers
                )
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)
