"""The CDS Hooks HTTP endpoints: discovery, service calls, feedback, health.

Thin on purpose: parse, hand over to ``hook_call`` or ``storage``, log one PHI-free line, answer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request

from cds_service import __version__, metrics
from cds_service.alert_memory import HeldBack
from cds_service.card_text import shorten
from cds_service.cards import FINDINGS_EXTENSION
from cds_service.fhir_policy import LOOPBACK_NAMES
from cds_service.hook_call import answer_hook
from cds_service.protocol import ProtocolError, feedback_item_errors, validate_feedback
from cds_service.request_json import parse_hook_call, parse_request_json
from cds_service.runtime import Runtime

log = logging.getLogger("cds_service.api")
bp = Blueprint("cds", __name__)
FREED_AFTER_ANSWER = "cds_service.hook_body"
HELD_BACK_EXTENSION = "org.example.tacrolimus-cds.held-back"
"""With ``--dev`` only: the findings the alert memory held back, so a tester sees why a card is missing."""


def runtime() -> Runtime:
    """The configuration this request runs on: taken once, so a reload mid-request changes nothing."""
    if "runtime" not in g:
        g.runtime = current_app.extensions["cds_runtime"]()
    return g.runtime


def json_body(parse: Callable[[bytes], Any] = parse_request_json) -> Any:
    """The request body as strict JSON, or a ProtocolError with the right status (415, 400)."""
    mimetype = request.mimetype or ""
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ProtocolError(415, None, "Content-Type must be application/json")
    return parse(request.get_data(cache=False))


def caller_tenant() -> str | None:
    """The caller's organisation (picks ``tenants:`` overrides): JWT ``tenant`` claim, else issuer."""
    caller = g.get("caller")
    return getattr(caller, "tenant", None) or getattr(caller, "issuer", None)


def smart_app_url(rt: Runtime) -> str | None:
    """The course app's launch URL for card links: ``cards.smart_app_url`` (``null`` turns the link off),
    else ``server.public_base_url`` + ``/smart/launch`` (with ``--dev``: this service as the caller reached
    it, so the sandbox works on any port)."""
    cards = rt.config.section("cards")
    if "smart_app_url" in cards:
        return cards["smart_app_url"] or None
    public = rt.config.section("server").get("public_base_url")
    base = request.url_root if rt.dev or not public else public
    return base.rstrip("/") + "/smart/launch"


@bp.get("/cds-services")
def discovery() -> Response:
    rt = runtime()
    services = [
        {
            "hook": s.hook,
            "id": s.id,
            "title": s.title,
            "description": s.description,
            **({"usageRequirements": s.usage_requirements} if s.usage_requirements else {}),
            "prefetch": rt.templates_for(s),
        }
        for s in rt.config.services.values()
    ]
    return jsonify({"services": services})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response | tuple[Response, int]:
    rt = runtime()
    service = rt.service(service_id)
    if service is None:
        raise ProtocolError(404, None, f"no CDS service with id {service_id!r}")
    started = time.perf_counter()
    laps = metrics.Laps()
    body = json_body(parse_hook_call)  # the prefetch is decoded when the hook call reads it
    if rt.dev:
        use_own_fixture_server(body)
    request.environ[FREED_AFTER_ANSWER] = body  # the server frees it once the answer is sent (wsgi_bridge)
    answer = answer_hook(
        body,
        service,
        rt,
        tenant=caller_tenant(),
        caller=g.get("caller"),
        request_id=g.get("request_id"),
        laps=laps,
        smart_app_url=lambda: smart_app_url(rt),  # worked out only for an answer with cards
    )
    cards = answer.body.get("cards", [])
    if cards and rt.store is not None:  # synchronous: a call answered 200 has its rows stored (issue 12)
        rt.store.record_shown(service.id, caller_tenant(), body["hookInstance"], cards)
    if answer.to_remember is not None:  # written before the answer leaves: order-sign may follow at once
        answer.to_remember()
    log.info(
        "hook call",
        extra={
            "service": service.id,
            "hook_instance": body.get("hookInstance"),
            "tenant": caller_tenant(),
            "status": answer.status,
            "findings": [item["id"] for c in cards for item in c["extension"].get(FINDINGS_EXTENSION, [])],
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "worker_pid": os.getpid(),
            **answer.notes,
        },
    )
    body = with_held_back(answer.body, answer.held) if rt.dev else answer.body
    # orjson: the cards of a typical answer serialise many times faster than with json (same JSON, UTF-8)
    return Response(orjson.dumps(body), answer.status, mimetype="application/json")


FIXTURE_FHIR_PATH = "CDS_FIXTURE_FHIR_PATH"
"""App config key: where ``serve --dev`` mounts the fixture FHIR API (set by the sandbox add-on)."""


def use_own_fixture_server(body: Any) -> None:
    """``--dev``: a ``fhirServer`` on loopback at the fixture FHIR API's path is this service's own.

    The README's examples name http://127.0.0.1:8080/sandbox/fhir; sent to ``make run PORT=18181`` they
    would call a port nothing listens on. Both ends on loopback, that URL can only mean the fixtures this
    service mounts, so the call reads them here, on whatever port it runs, and the log says so.
    """
    mount = current_app.config.get(FIXTURE_FHIR_PATH)
    server = body.get("fhirServer") if isinstance(body, dict) else None
    if (
        not mount
        or not isinstance(server, str)
        or not _on_loopback(urlsplit(request.host_url).hostname or "")
    ):
        return
    parts = urlsplit(server)
    own = request.host_url.rstrip("/") + mount
    if parts.scheme != "http" or parts.path.rstrip("/") != mount or server.rstrip("/") == own:
        return
    if _on_loopback(parts.hostname or ""):
        log.info("fhirServer names the fixture FHIR API on another port: reading this service's own")
        body["fhirServer"] = own


def _on_loopback(host: str) -> bool:
    return host.lower() in LOOPBACK_NAMES or host.startswith("127.")


def with_held_back(body: dict[str, Any], held: list[HeldBack]) -> dict[str, Any]:
    """The answer with an ``extension`` naming what the alert memory held back (``--dev`` answers only).

    CDS Hooks reserves ``extension`` on every object for this; production answers never carry it, since
    what a clinician was shown before is not the EHR's business. The sandbox page shows it, and so does the
    README's ``curl`` of an example sent twice.
    """
    if not held:
        return body
    items = [
        {"id": h.id, "indicator": h.indicator, "summary": shorten(h.summary), "why": h.why} for h in held
    ]
    return {**body, "extension": {HELD_BACK_EXTENSION: items}}


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> tuple[Response, int]:
    rt = runtime()
    if rt.service(service_id) is None:
        raise ProtocolError(404, None, f"no CDS service with id {service_id!r}")
    body = json_body()
    validate_feedback(body)
    valid, problems = [], []
    for index, item in enumerate(body["feedback"]):
        error = feedback_item_errors(item, index=index)
        if error:
            problems.append(error)
        else:
            valid.append(item)
    assert rt.store is not None  # Runtime.from_config always opens the database
    stored = rt.store.save_feedback(service_id, caller_tenant(), valid) if valid else 0
    log.log(
        logging.WARNING if problems else logging.INFO,
        "feedback",
        extra={
            "service": service_id,
            "tenant": caller_tenant(),
            "stored": stored,
            "rejected": len(problems),
            **({"problems": problems} if problems else {}),  # "feedback[0].outcome: ...": fields, no values
        },
    )
    if problems:
        return jsonify(
            {"error": "some feedback items are invalid", "problems": problems, "stored": stored}
        ), 400
    return jsonify({"stored": stored}), 200


@bp.after_request
def count_hook_call(response: Response) -> Response:
    """``cds_hook_calls_total`` by service and status, for every answer (4xx and 5xx too)."""
    if request.endpoint == "cds.call_service":
        service_id = (request.view_args or {}).get("service_id")
        known = service_id if runtime().service(service_id or "") is not None else "unknown"
        metrics.HOOK_CALLS.labels(service=known, status=str(response.status_code)).inc()
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Says nothing about the database (that is ``/readyz``)."""
    return jsonify({"status": "ok", "version": __version__, "services": sorted(runtime().config.services)})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: 200 when the configuration is loaded and the database answers, else 503.

    A load balancer or Kubernetes stops sending calls to an instance that is not ready, and sends them
    again when it is. ``database`` names the kind answering (``sqlite``, ``postgresql``), never its address.
    """
    holder = current_app.extensions.get("cds_runtime")
    rt = holder() if holder is not None else None
    if rt is None or rt.store is None:
        return jsonify({"status": "not ready", "reason": "configuration not loaded"}), 503
    try:
        rt.store.ping()
    except Exception as error:  # any failure to answer is "not ready"; the reason goes to the log
        metrics.DB_ERRORS.labels(operation="readyz").inc()
        log.warning("not ready: database does not answer", extra={"error": type(error).__name__})
        response = jsonify({"status": "not ready", "reason": "database does not answer"})
        response.headers["Retry-After"] = "5"
        return response, 503
    database = rt.store.engine.dialect.name
    return jsonify({"status": "ready", "database": database, "services": sorted(rt.config.services)}), 200


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus text format; no patient data in any label. Keep it off the public side of the balancer."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
