"""A read-only FHIR R4 REST server over a FhirStore, for the sandbox, the tests and the benchmark.

The service's FHIR-callback path is tested against this real HTTP server rather than a mock, and the
same server can misbehave on purpose (``Faults``) so the service's handling of slow, failing or hostile
FHIR servers is tested too.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

from cds_service.sandbox.smart_auth import install_dev_smart
from cds_service.sandbox.store import (
    FhirStore,
    SearchError,
    UnsupportedResourceType,
    capability_statement,
    operation_outcome,
)

FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
# Browsers' clients (the official CDS Hooks Sandbox) read this server from another origin. The data are
# synthetic and read-only and no cookie is used, so every origin may read; a token, if required, still is.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Accept, Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


@dataclass
class Faults:
    """Ways to make every request fail, for the service's resilience tests; all off by default.

    Checked before anything else on each request, in this order: ``delay_seconds`` (then carry on),
    ``drop_connection`` (close the socket without an answer), ``status`` (that status with an
    OperationOutcome), ``garbage`` (200 ``application/fhir+json`` whose body is not JSON), ``redirect_to``
    (302 to that base URL plus the same path and query). Change the fields while the server runs.
    """

    delay_seconds: float = 0.0
    drop_connection: bool = False
    status: int | None = None
    garbage: bool = False
    redirect_to: str | None = None

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)


def fhir_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON, headers=headers)


def _fault_response(faults: Faults, path_after_base: str) -> Response | None:
    if faults.delay_seconds:
        time.sleep(faults.delay_seconds)
    if faults.drop_connection:
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        return Response(status=500)  # never reaches the client: the socket is gone
    if faults.status is not None:
        outcome = operation_outcome("transient", f"fault injected: status {faults.status}")
        return fhir_response(outcome, faults.status)
    if faults.garbage:
        return Response("<html>this is not JSON", status=200, mimetype=FHIR_JSON)
    if faults.redirect_to:
        query = request.query_string.decode()
        location = faults.redirect_to.rstrip("/") + path_after_base + (f"?{query}" if query else "")
        return Response(status=302, headers={"Location": location})
    return None


def _has_token(expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def create_fhir_app(
    store: FhirStore,
    *,
    require_token: str | None = None,
    faults: Faults | None = None,
    base_path: str = "",
) -> Flask:
    """Flask app serving ``{base_path}/metadata``, ``/<type>/<id>`` and ``/<type>?...`` from ``store``.

    With ``require_token``, every request except ``/metadata`` (public, as SMART servers keep it) needs
    ``Authorization: Bearer <token>`` or gets 401.
    """
    base_path = base_path.rstrip("/")
    faults = faults if faults is not None else Faults()
    app = Flask(__name__)
    app.extensions["fhir_faults"] = faults

    def base_url() -> str:
        return request.host_url.rstrip("/") + base_path

    _install_cors(app)

    @app.before_request
    def misbehave_or_authorize() -> Response | None:
        path_after_base = request.path[len(base_path) :]
        if (broken := _fault_response(faults, path_after_base)) is not None:
            return broken
        if require_token is not None and path_after_base != "/metadata" and not _has_token(require_token):
            outcome = operation_outcome("login", "a valid bearer token is required")
            return fhir_response(outcome, 401, {"WWW-Authenticate": 'Bearer realm="fhir"'})
        return None

    @app.get(f"{base_path}/metadata")
    def metadata() -> Response:
        return fhir_response(capability_statement(store))

    @app.get(f"{base_path}/<resource_type>/<resource_id>")
    def read(resource_type: str, resource_id: str) -> Response:
        resource = store.read(resource_type, resource_id)
        if resource is None:
            outcome = operation_outcome("not-found", f"{resource_type}/{resource_id} is not stored")
            return fhir_response(outcome, 404)
        return fhir_response(resource)

    @app.get(f"{base_path}/<resource_type>")
    def search(resource_type: str) -> Response:
        return _search(resource_type, request.args.to_dict(flat=False))

    @app.post(f"{base_path}/<resource_type>/_search")
    def search_by_post(resource_type: str) -> Response:
        """FHIR search with the parameters in a form body (and the URL); the Sandbox's first choice."""
        if request.mimetype != FORM:
            outcome = operation_outcome("not-supported", f"POST _search needs Content-Type {FORM}")
            return fhir_response(outcome, 415)
        params = request.args.to_dict(flat=False)
        for name, values in request.form.to_dict(flat=False).items():
            params.setdefault(name, []).extend(values)
        return _search(resource_type, params)

    def _search(resource_type: str, params: dict[str, list[str]]) -> Response:
        try:
            bundle = store.search(resource_type, params, base_url())
        except UnsupportedResourceType:
            outcome = operation_outcome("not-supported", f"resource type {resource_type} is not supported")
            return fhir_response(outcome, 404)
        except SearchError as e:
            return fhir_response(operation_outcome(e.code, str(e), expression=e.parameter), 400)
        return fhir_response(bundle)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        code = "not-found" if error.code == 404 else "not-supported" if error.code == 405 else "exception"
        return fhir_response(operation_outcome(code, error.description or error.name), error.code or 500)

    install_dev_smart(
        app, base_path, store
    )  # SMART discovery + a login-free authorization server, loopback only
    return app


def _install_cors(app: Flask) -> None:
    """CORS on every answer, and preflights answered before faults and authorization are looked at.

    A page on a public origin calling loopback (the hosted Sandbox calling ``localhost``) is preceded in
    Chromium by a Private Network Access preflight; it is allowed too.
    """

    @app.before_request
    def preflight() -> Response | None:
        if request.method != "OPTIONS":
            return None
        response = Response(status=204)
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    @app.after_request
    def cors(response: Response) -> Response:
        response.headers.update(CORS_HEADERS)
        return response


class _QuietHandler(WSGIRequestHandler):
    """No per-request log lines: tests and the benchmark make thousands of requests."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def serve_in_thread(
    store: FhirStore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    require_token: str | None = None,
    faults: Faults | None = None,
    base_path: str = "",
    log_requests: bool = False,
) -> Iterator[str]:
    """Run the FHIR server on a real socket in a background thread; yields its base URL (no trailing /)."""
    app = create_fhir_app(store, require_token=require_token, faults=faults, base_path=base_path)
    handler = WSGIRequestHandler if log_requests else _QuietHandler
    server = make_server(host, port, app, threaded=True, request_handler=handler)
    # A short poll interval makes shutdown quick; tests start dozens of servers.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fhir-sandbox", daemon=True)
    thread.start()
    try:
        shown_host = f"[{host}]" if ":" in host else host
        yield f"http://{shown_host}:{server.server_port}{base_path.rstrip('/')}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
