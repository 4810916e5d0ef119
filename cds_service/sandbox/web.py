"""``/sandbox`` (``serve --dev`` only): a small EHR page for testers, and the fixture FHIR API it reads.

The page holds no card logic: it asks ``/sandbox/api/request`` for the CDS Hooks request built from the
fixture and the draft orders on the page (``build_request_from_bundle``), posts it to the real
``/cds-services/<id>`` endpoint, shows the cards, and posts feedback to the real feedback endpoint. Card
Markdown is rendered here, with raw HTML off, so nothing a card says can run in the page.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from markdown_it import MarkdownIt

from cds_service.admin import DEV_TOKEN, dev_token_in_use
from cds_service.api import FIXTURE_FHIR_PATH
from cds_service.app import create_app
from cds_service.config import Config
from cds_service.fixtures import load_bundle, manifest
from cds_service.hook_names import HOOKS_WITH_DRAFTS, opens_chart
from cds_service.prefetch import FHIR_ID
from cds_service.sandbox.fhir_server import create_fhir_app
from cds_service.sandbox.requests import HOOKS, build_request_from_bundle
from cds_service.sandbox.store import FhirStore

log = logging.getLogger("cds_service.sandbox")
FHIR_PATH = "/sandbox/fhir"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAX_DRAFTS = 50
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")

bp = Blueprint(
    "sandbox",
    __name__,
    url_prefix="/sandbox",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


def _markdown() -> MarkdownIt:
    """CommonMark without raw HTML (it shows as text) and without images (a card cannot load anything)."""
    return MarkdownIt("commonmark", {"html": False}).disable("image")


_MARKDOWN = _markdown()


class BadInput(ValueError):
    """A sandbox API call the page should not have made; answered 400 with the message."""


def create_dev_app(
    config_dir: str | Path | None = None, config: Config | None = None, announced: bool = False
) -> Flask:
    """``serve --dev``: the service in dev mode with the sandbox page and the fixture FHIR API added.

    ``announced``: the start-up line already said DEV MODE (``serve``), so the app does not log it again.
    """
    return create_app(
        config_dir=config_dir, dev=True, config=config, add_ons=(install,), dev_announced=announced
    )


def install(app: Flask) -> None:
    """Add the sandbox page and mount the fixture FHIR API at ``/sandbox/fhir`` (dev mode only)."""
    app.register_blueprint(bp)
    app.config[FIXTURE_FHIR_PATH] = FHIR_PATH  # a loopback fhirServer there is this service (api.py)
    # Browsers ask for /favicon.ico on every page of the origin; answer with the sandbox's icon.
    app.add_url_rule("/favicon.ico", "favicon", lambda: bp.send_static_file("favicon.svg"))
    app.add_url_rule("/", "landing", landing)
    app.wsgi_app = FixtureFhirMount(app.wsgi_app)  # type: ignore[method-assign]


class FixtureFhirMount:
    """WSGI middleware: ``/sandbox/fhir/...`` goes to the read-only fixture FHIR server, the rest to the app.

    The fixture dates follow today, so the store is rebuilt when the day changes. No token is checked: the
    data are synthetic and this only runs with ``--dev``.
    """

    def __init__(self, app: Callable, today: Callable[[], date] | None = None):
        self.app = app
        self.today = today or (lambda: datetime.now().astimezone().date())
        self._lock = threading.Lock()
        self._day: date | None = None
        self._fhir: Callable | None = None
        self._fhir_app()  # build now: the first --via fhir call must not wait for it

    def _fhir_app(self) -> Callable:
        with self._lock:
            today = self.today()
            if self._fhir is None or self._day != today:
                store = FhirStore.from_fixtures(today=today)
                self._fhir, self._day = create_fhir_app(store, base_path=FHIR_PATH).wsgi_app, today
            return self._fhir

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == FHIR_PATH or path.startswith(FHIR_PATH + "/"):
            return self._fhir_app()(environ, start_response)
        return self.app(environ, start_response)


# ---------------------------------------------------------------------------------------------------------


def _runtime():
    return current_app.extensions["cds_runtime"]()


def _codings(concept: Any) -> list[Mapping]:
    return (
        [c for c in (concept or {}).get("coding", []) if isinstance(c, Mapping)]
        if isinstance(concept, Mapping)
        else []
    )


def _medication_codings(order: Mapping, resources: Mapping[str, Mapping]) -> list[Mapping]:
    """The codings naming the order's drug: its CodeableConcept, or the Medication it references."""
    codings = _codings(order.get("medicationCodeableConcept"))
    ref = (order.get("medicationReference") or {}).get("reference", "")
    if ref.startswith("#"):
        contained = {r.get("id"): r for r in order.get("contained", []) if isinstance(r, Mapping)}
        codings += _codings((contained.get(ref[1:]) or {}).get("code"))
    elif ref in resources:
        codings += _codings(resources[ref].get("code"))
    return codings


def _editable(order: Mapping, resources: Mapping[str, Mapping]) -> bool:
    """The product/dose editor is offered for tacrolimus orders and for orders named by text only."""
    if order.get("resourceType") != "MedicationRequest":
        return False
    codings = _medication_codings(order, resources)
    terminology = _runtime().terminology
    return not codings or any(
        terminology.contains("tacrolimus", c.get("system"), c.get("code")) for c in codings
    )


def _patient_banner(patient: Mapping) -> dict:
    names = patient.get("name") or [{}]
    name = names[0].get("text") or " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip()
    return {
        "id": patient.get("id"),
        "name": name or patient.get("id"),
        "gender": patient.get("gender"),
        "birthDate": patient.get("birthDate"),
    }


def _fixture_entry(name: str) -> dict:
    entry = manifest().get(name)
    if entry is None:
        raise BadInput(f"unknown fixture {name!r}")
    return entry


def _refs(resources: Iterable[Mapping]) -> dict[str, Mapping]:
    return {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}


def _today() -> date:
    return datetime.now().astimezone().date()


def landing() -> Response:
    """``/`` in dev mode: the pages a newcomer opens first (``serve --dev`` prints the same list)."""
    runtime = _runtime()
    dev_token = DEV_TOKEN if dev_token_in_use(runtime.config, dev=True) else None
    html = render_template("landing.html", dev_token=dev_token)
    return Response(html, mimetype="text/html", headers={"Content-Security-Policy": PAGE_CSP})


@bp.errorhandler(BadInput)
def bad_input(error: BadInput) -> tuple[Response, int]:
    return jsonify({"error": str(error)}), 400


@bp.get("")
@bp.get("/")
def page() -> Response:
    fixtures = [
        {"name": name, "description": entry.get("description", "")}
        for name, entry in sorted(manifest().items())
    ]
    products = [
        {"system": s, "code": c, "display": d} for s, c, d in _runtime().terminology.codes("tacrolimus")
    ]
    html = render_template(
        "sandbox.html", fixtures=fixtures, products=products, hooks=HOOKS, hooks_with_drafts=HOOKS_WITH_DRAFTS
    )
    return Response(html, mimetype="text/html", headers={"Content-Security-Policy": PAGE_CSP})


@bp.get("/api/fixtures/<name>")
def fixture(name: str) -> Response | tuple[Response, int]:
    """The fixture's patient banner, its draft orders (editable or not) and what the service should say."""
    if name not in manifest():
        return jsonify({"error": f"unknown fixture {name!r}"}), 404
    entry = _fixture_entry(name)
    resources = _refs(
        e["resource"] for e in load_bundle(name, _today()).get("entry", []) if e.get("resource")
    )
    patient = next((r for r in resources.values() if r.get("resourceType") == "Patient"), {})
    drafts = [
        {"resource": resources[ref], "editable": _editable(resources[ref], resources)}
        for ref in entry.get("drafts", ())
        if ref in resources
    ]
    # Stored medication orders a draft may renew (``priorPrescription``), as the page offers them.
    stored_orders = [
        {"ref": ref, "label": _order_label(resource, resources), "status": resource.get("status")}
        for ref, resource in resources.items()
        if resource.get("resourceType") == "MedicationRequest" and ref not in entry.get("drafts", ())
    ]
    return jsonify(
        {
            "name": name,
            "description": entry.get("description", ""),
            "expected": entry.get("expected", []),
            "patient": _patient_banner(patient),
            "drafts": drafts,
            "stored_orders": stored_orders,
        }
    )


def _order_label(order: Mapping, resources: Mapping[str, Mapping]) -> str:
    concept = order.get("medicationCodeableConcept")
    text = concept.get("text") if isinstance(concept, Mapping) else None
    codings = _medication_codings(order, resources)
    return text or next((c.get("display") for c in codings if c.get("display")), None) or "(not named)"


def _checked_drafts(value: Any, hook: str) -> list[dict]:
    if opens_chart(hook):  # the chart is opened: unsigned drafts are not part of the record
        return []
    if not isinstance(value, list) or not value:
        raise BadInput("drafts must be a non-empty list of FHIR resources (the page's draft orders)")
    if len(value) > MAX_DRAFTS:
        raise BadInput(f"at most {MAX_DRAFTS} draft orders")
    for resource in value:
        if not isinstance(resource, dict):
            raise BadInput("every draft must be a FHIR resource (an object)")
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not (
            isinstance(rtype, str)
            and _RESOURCE_TYPE.match(rtype)
            and isinstance(rid, str)
            and FHIR_ID.match(rid)
        ):
            raise BadInput("every draft needs a resourceType and a FHIR id")
    if len(_refs(value)) != len(value):
        raise BadInput("two drafts have the same resourceType and id")
    return value


def _checked_staged(value: Any, stored: Mapping[str, Mapping]) -> dict[str, dict | None]:
    """Accepted changes to stored resources, ``Type/id`` → the new resource (update) or None (delete)."""
    if value is None:
        return {}
    if not isinstance(value, list) or len(value) > MAX_DRAFTS:
        raise BadInput(f"staged must be a list of at most {MAX_DRAFTS} changes")
    changes: dict[str, dict | None] = {}
    for change in value:
        if not isinstance(change, dict) or change.get("type") not in ("update", "delete"):
            raise BadInput("every staged change needs type update or delete")
        ref, resource = change.get("ref"), change.get("resource")
        if not isinstance(ref, str) or ref not in stored:
            raise BadInput(f"staged changes apply to stored resources only, not {ref!r}")
        if change["type"] == "delete":
            changes[ref] = None
        elif isinstance(resource, dict) and f"{resource.get('resourceType')}/{resource.get('id')}" == ref:
            changes[ref] = resource
        else:
            raise BadInput(f"a staged update of {ref} needs the resource with that resourceType and id")
    return changes


def _touched_prefetch_keys(templates: Mapping[str, str], changed_refs: Iterable[str]) -> set[str]:
    """Prefetch keys whose query reads a resource type that a staged change touches."""
    types = {ref.partition("/")[0] for ref in changed_refs}
    return {key for key, template in templates.items() if re.split(r"[/?]", template, maxsplit=1)[0] in types}


@bp.post("/api/request")
def build() -> Response:
    """The CDS Hooks request for the fixture's patient with the page's draft orders, and its service.

    patient-view (service ``tacrolimus-monitoring``) sends no draft orders: the patient's chart is opened.
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadInput("send a JSON object: {fixture, hook, via, drafts}")
    name, hook, via = body.get("fixture"), body.get("hook"), body.get("via", "prefetch")
    if not isinstance(name, str):
        raise BadInput("fixture must be a fixture name")
    entry = _fixture_entry(name)
    if hook not in HOOKS:
        raise BadInput(f"hook must be one of {', '.join(HOOKS)}")
    if via not in ("prefetch", "fhir"):
        raise BadInput("via must be prefetch or fhir")
    drafts = _checked_drafts(body.get("drafts"), hook)

    bundle = load_bundle(name, _today())
    original = set(entry.get("drafts", ()))
    stored = [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]
    stored = [r for r in stored if f"{r['resourceType']}/{r['id']}" not in original]
    # Accepted suggestions that change the stored record ("Stop mycophenolate") hold for the next calls.
    staged = _checked_staged(body.get("staged"), _refs(stored))
    stored = [staged.get(ref, r) for ref, r in _refs(stored).items() if staged.get(ref, r) is not None]
    if clash := set(_refs(stored)) & set(_refs(drafts)):
        raise BadInput(f"drafts may not reuse the id of a stored resource: {', '.join(sorted(clash))}")
    refs = list(_refs(drafts))
    chosen = [ref for ref in entry.get("selections", entry.get("drafts", ())) if ref in refs]
    chosen = chosen or [ref for ref in refs if ref.startswith("MedicationRequest/")]
    if hook == "order-select" and not chosen:
        raise BadInput("order-select needs a draft MedicationRequest to select")

    store = FhirStore()
    store.add_bundle({"entry": [{"resource": r} for r in stored]})
    editing = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in stored + drafts],
    }
    runtime = _runtime()
    service = next((s for s in runtime.config.services.values() if s.hook == hook), None)
    if service is None:
        raise BadInput(f"no service is configured for {hook}")
    try:
        built = build_request_from_bundle(
            editing,
            refs,
            selections=chosen,
            hook=hook,
            via="both" if via == "fhir" and staged else via,
            fhir_base=request.host_url.rstrip("/") + FHIR_PATH if via == "fhir" else None,
            prefetch_templates=runtime.templates_for(service),
            store=store,
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    if via == "fhir" and staged:
        # /sandbox/fhir serves the fixture as stored; what the staged changes touch travels as prefetch,
        # as an EHR sends its uncommitted changes, and the service fetches the rest.
        touched = _touched_prefetch_keys(runtime.templates_for(service), staged)
        built["prefetch"] = {k: v for k, v in built.get("prefetch", {}).items() if k in touched}
    return jsonify({"service": {"id": service.id, "url": f"/cds-services/{service.id}"}, "request": built})


@bp.post("/api/alert-memory/clear")
def clear_alert_memory() -> Response | tuple[Response, int]:
    """Forget every finding shown (order-select → order-sign, patient-view's 24 hours): a tester starts over.

    Only this page may ask (``Sec-Fetch-Site``): in dev mode every origin may call the service, and another
    site must not be able to make the next fire show what it held back.
    """
    if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        return jsonify({"error": "cross-site request refused"}), 403
    memory = _runtime().alert_memory
    forgotten = memory.forget_all() if memory is not None else 0
    log.info("alert memory cleared from the sandbox", extra={"rows": forgotten})
    return jsonify({"forgotten": forgotten})


@bp.post("/api/markdown")
def markdown() -> Response:
    """Card Markdown as HTML with raw HTML escaped, unsafe link schemes dropped and no images."""
    body = request.get_json(silent=True)
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadInput("send {texts: [markdown, ...]}")
    return jsonify({"html": [_MARKDOWN.render(text) for text in texts]})
