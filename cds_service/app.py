"""Flask application factory: configuration, error handling, CORS and security headers around the API."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from cds_service import metrics, storage
from cds_service.auth import AuthError
from cds_service.bodies import BodyGuard
from cds_service.config import Config, ConfigError, load_config
from cds_service.protocol import ProtocolError
from cds_service.runtime import Runtime

log = logging.getLogger("cds_service.app")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-ID",
    "Access-Control-Max-Age": "600",
}


class RuntimeHolder:
    """The current Runtime; ``reload`` swaps in a new one only if the new configuration is valid."""

    def __init__(self, config_dir: str | Path | None, dev: bool, config: Config | None = None):
        self.config_dir = config.directory if config else config_dir
        self.dev = dev
        self.current = Runtime.from_config(config or load_config(config_dir), dev=dev)
        self._lock = threading.Lock()

    def __call__(self) -> Runtime:
        return self.current

    def reload(self) -> list[str]:
        """Load the configuration again; on problems keep serving the last good one and return them."""
        with self._lock:
            try:
                fresh = Runtime.from_config(load_config(self.config_dir), dev=self.dev, previous=self.current)
            except ConfigError as error:
                log.error("configuration reload refused", extra={"problems": error.problems})
                return error.problems
            self.current = fresh  # in-flight requests keep the Runtime they started with
            log.info("configuration reloaded", extra={"services": sorted(fresh.config.services)})
            return []


def create_app(
    config_dir: str | Path | None = None,
    dev: bool = False,
    config: Config | None = None,
    add_ons: Sequence[Callable[[Flask], None]] = (),
    dev_announced: bool = False,
) -> Flask:
    """The service as a WSGI app, on ``config`` or the one read from ``config_dir``.

    ``add_ons`` install more pages on the app before its middleware wraps it: ``serve --dev`` composes the
    sandbox in this way (``sandbox.web.create_dev_app``), so this module never imports the sandbox and the
    production image need not ship it. ``dev_announced``: the caller already said DEV MODE (``serve``
    prints it once for all its workers). Raises ConfigError if the configuration is invalid.
    """
    app = Flask(__name__, static_folder=None)  # static files exist only for the dev sandbox page (its own)
    holder = RuntimeHolder(config_dir, dev, config)
    app.extensions["cds_runtime"] = holder
    app.config["MAX_CONTENT_LENGTH"] = holder.current.config.section("server")["max_body_bytes"]
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's DefaultJSONProvider settings
    app.json.compact = True  # type: ignore[attr-defined]

    from cds_service.api import bp

    app.register_blueprint(bp)
    from cds_service.admin import DEV_ANNOUNCED
    from cds_service.admin import bp as admin_bp  # /admin page and POST /admin/reload, behind an admin token

    app.config[DEV_ANNOUNCED] = dev_announced
    app.register_blueprint(admin_bp)
    from cds_service.docs import bp as docs_bp  # GET /docs: the manual, where cards' source links point

    app.register_blueprint(docs_bp)
    from cds_service.smart import bp as smart_bp  # the course SMART app, launched from card links

    app.register_blueprint(smart_bp)
    for add_on in add_ons:
        add_on(app)
    _install_request_id(app)
    _install_cors_and_headers(app, holder)
    _install_authentication(app, holder)
    _install_error_handlers(app)
    # outermost: compressed, oversized chunked and badly framed bodies are answered before anything reads them
    app.wsgi_app = BodyGuard(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"], SECURITY_HEADERS)  # type: ignore[method-assign]
    return app


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DB_RETRY_AFTER_SECONDS = 5


def _install_request_id(app: Flask) -> None:
    """``X-Request-ID``: the caller's (if it is a plain token) or a new one; in every log line of the
    request (logs.JsonFormatter), on every FHIR call it makes, and on the answer."""

    @app.before_request
    def request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        storage.new_request()  # may wait on the database again (within its bounds)

    @app.after_request
    def echo(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response


def _allowed_origin(holder: RuntimeHolder) -> str | None:
    origin = request.headers.get("Origin")
    if not origin:
        return None
    if holder.dev:
        return origin
    return origin if origin in (holder.current.config.section("server").get("cors_origins") or ()) else None


def _install_cors_and_headers(app: Flask, holder: RuntimeHolder) -> None:
    @app.before_request
    def preflight() -> Response | None:
        if request.method != "OPTIONS":
            return None
        response = Response(status=204)
        # Chromium's Private Network Access: a public page (the hosted CDS Hooks Sandbox) calling loopback.
        if request.headers.get("Access-Control-Request-Private-Network") == "true" and _allowed_origin(
            holder
        ):
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    @app.after_request
    def headers(response: Response) -> Response:
        present = {name.lower() for name in response.headers.keys()}  # noqa: SIM118 (Headers, not a dict)
        for name, value in SECURITY_HEADERS.items():
            if name.lower() not in present:  # what a view set itself stays
                response.headers.add(name, value)
        origin = _allowed_origin(holder)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers.update(CORS_HEADERS)
        return response


def _install_authentication(app: Flask, holder: RuntimeHolder) -> None:
    """Every CDS Hooks endpoint (discovery, services, feedback) needs a trusted EHR's JWT, except in dev."""

    @app.before_request
    def authenticate() -> tuple[Response, int] | None:
        if holder.dev or not (request.path == "/cds-services" or request.path.startswith("/cds-services/")):
            return None
        if "runtime" not in g:
            g.runtime = holder()  # the same Runtime for the whole request (see api.runtime)
        try:
            g.caller = g.runtime.verifier.verify(request.headers.get("Authorization"), request.path)
        except AuthError as error:
            log.warning("caller refused", extra={**error.log_fields(), "path": request.path})
            response = jsonify({"error": "unauthorized"})
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, 401
        return None


def _log_rejection(status: int, reason: str, field: str | None = None) -> None:
    """One line per refused call: status, method, path (no query string), the field and the reason.

    The reasons are the service's own sentences about the request's shape (never its values), so the line
    holds no patient data; an unknown path is routine (scanners, typos) and logged at info level.
    """
    level = logging.INFO if status in (404, 405) else logging.WARNING
    extra = {"status": status, "method": request.method, "path": request.path, "reason": reason}
    log.log(level, "request rejected", extra={**extra, **({"field": field} if field else {})})


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ProtocolError)
    def protocol_error(error: ProtocolError) -> tuple[Response, int]:
        _log_rejection(error.status, error.message, error.field)
        return jsonify(error.to_json()), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        messages = {
            404: "not found",
            405: "method not allowed",
            413: "request body too large",
        }
        status = error.code or 500
        message = messages.get(status, error.name)
        if status < 500:
            _log_rejection(status, message)
        return jsonify({"error": message}), status

    @app.errorhandler(SQLAlchemyError)
    def database_unavailable(error: SQLAlchemyError) -> tuple[Response, int]:
        """The database failed (down, unreachable, pool exhausted): 503 with Retry-After, never 500.

        Nothing was acknowledged; the caller may retry, and the next call finds the database again by itself
        (connections are checked before use)."""
        metrics.DB_ERRORS.labels(operation=request.endpoint or "request").inc()
        log.error("database unavailable", extra={"path": request.path, "error": type(error).__name__})
        response = jsonify({"error": "database unavailable; retry later"})
        response.headers["Retry-After"] = str(DB_RETRY_AFTER_SECONDS)
        return response, 503

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unexpected error", extra={"path": request.path})
        return jsonify({"error": "internal error"}), 500
