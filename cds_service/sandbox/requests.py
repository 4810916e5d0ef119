"""CDS Hooks 2.0 requests built from a fixture patient, as an EHR would send them.

The prefetch part is reusable on its own: ``cds_service.prefetch.substitute_tokens`` (shared with the service,
which fills the same templates when it fetches a missing key itself) fills a template's tokens,
``parse_query`` splits the result into a read or a search, and ``fill_prefetch`` runs templates against a
``FhirStore``.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from urllib.parse import parse_qsl

from cds_service.fixtures import FIXTURES_DIR, load_bundle, manifest
from cds_service.hook_names import HOOKS, HOOKS_WITH_DRAFTS
from cds_service.prefetch import TemplateError, substitute_tokens
from cds_service.sandbox.store import (
    FhirStore,
    SearchError,
    UnsupportedResourceType,
    fhir_date_range,
    operation_outcome,
)

VIAS = ("prefetch", "fhir", "both")
"""``prefetch``: data in ``prefetch`` only; ``fhir``: ``fhirServer`` + token only; ``both``: both at once."""

OFFLINE_BASE = "https://fhir.sandbox.invalid"
"""Base of the links in prefetch Bundles when no FHIR server runs (``.invalid`` never resolves)."""

CLIENT_ID = "tacrolimus-cds"
DEFAULT_USER = "Practitioner/sandbox-clinician"

DEFAULT_PREFETCH_TEMPLATES: dict[str, str] = {
    # Stand-in until callers pass the templates the service publishes in discovery.
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&_count=1000",
    "medications": "MedicationRequest?patient={{context.patientId}}&_count=1000",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}&_count=1000",
    "observations": "Observation?patient={{context.patientId}}&_sort=-date&_count=1000",
    "immunizations": "Immunization?patient={{context.patientId}}&status=completed&_count=1000",
}


def parse_query(query: str) -> tuple[str, str | None, dict[str, list[str]]]:
    """``Type/id`` -> (Type, id, {}); ``Type?a=1&a=2`` -> (Type, None, {"a": ["1", "2"]})."""
    path, _, query_string = query.lstrip("/").partition("?")
    parts = path.split("/")
    if not parts[0] or len(parts) > 2 or ":" in path or (len(parts) == 2 and query_string):
        raise TemplateError(f"not a relative FHIR read or search: {query!r}")
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        params.setdefault(key, []).append(value)
    return parts[0], (parts[1] if len(parts) == 2 else None), params


def run_query(store: FhirStore, query: str, base_url: str) -> dict | None:
    """What a FHIR server answers: the resource or None for a read, a searchset Bundle for a search, and an
    OperationOutcome for a search it cannot run (sent as the prefetch value, as the spec asks clients to)."""
    resource_type, resource_id, params = parse_query(query)
    if resource_id is not None:
        return store.read(resource_type, resource_id)
    try:
        return store.search(resource_type, params, base_url)
    except UnsupportedResourceType:
        return operation_outcome("not-supported", f"resource type {resource_type} is not supported")
    except SearchError as e:
        return operation_outcome(e.code, str(e), expression=e.parameter)


def fill_prefetch(
    store: FhirStore, templates: Mapping[str, str], context: Mapping, base_url: str = OFFLINE_BASE
) -> dict[str, dict | None]:
    """Prefetch values keyed like ``templates``; a template whose tokens cannot be filled is left out."""
    prefetch: dict[str, dict | None] = {}
    for key, template in templates.items():
        query = substitute_tokens(template, context)
        if query is not None:
            prefetch[key] = copy.deepcopy(run_query(store, query, base_url))
    return prefetch


# ---------------------------------------------------------------------------------------------------------
# Requests


def _ref(resource: Mapping) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _resources(bundle: Mapping) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]


def _user_id(drafts: Sequence[Mapping], resources: Sequence[Mapping]) -> str:
    for draft in drafts:
        requester = draft.get("requester", {}).get("reference", "")
        if requester.partition("/")[0] in ("Practitioner", "PractitionerRole"):
            return requester
    practitioner = next((r for r in resources if r["resourceType"] == "Practitioner"), None)
    return _ref(practitioner) if practitioner else DEFAULT_USER


def _encounter_id(drafts: Sequence[Mapping], resources: Sequence[Mapping]) -> str | None:
    encounters = {r["id"]: r for r in resources if r["resourceType"] == "Encounter"}
    for draft in drafts:
        ref = draft.get("encounter", {}).get("reference", "")
        if ref.startswith("Encounter/") and ref[len("Encounter/") :] in encounters:
            return ref[len("Encounter/") :]
    if not encounters:
        return None

    def start(encounter: Mapping) -> str:
        begin = encounter.get("period", {}).get("start")
        return fhir_date_range(begin)[0].isoformat() if begin else ""

    return max(encounters.values(), key=start)["id"]


def _draft_orders(drafts: Sequence[dict], resources: Sequence[dict]) -> dict:
    """The drafts, plus every Medication they reference that is not contained in them."""
    by_ref = {_ref(r): r for r in resources}
    entries: list[dict] = [copy.deepcopy(d) for d in drafts]
    for draft in drafts:
        ref = draft.get("medicationReference", {}).get("reference", "")
        med = by_ref.get(ref)
        if med is not None and not any(_ref(e) == ref for e in entries):
            entries.append(copy.deepcopy(med))
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in entries]}


def build_request_from_bundle(
    bundle: Mapping,
    drafts: Sequence[str],
    *,
    selections: Sequence[str] | None = None,
    hook: str = "order-select",
    via: str = "prefetch",
    fhir_base: str | None = None,
    prefetch_templates: Mapping[str, str] | None = None,
    token: str | None = None,
    store: FhirStore | None = None,
) -> dict:
    """A CDS Hooks request for the patient in ``bundle`` whose ``drafts`` (``Type/id``) are being ordered.

    ``store`` answers the prefetch queries; by default the bundle without its drafts. With ``via="fhir"``
    or ``"both"``, ``fhir_base`` must be a server holding the same data, accepting ``token`` (generated
    when not given; read it back from ``fhirAuthorization.access_token``).
    """
    if hook not in HOOKS:
        raise ValueError(f"unsupported hook {hook!r} (supported: {', '.join(HOOKS)})")
    if via not in VIAS:
        raise ValueError(f"unsupported via {via!r} (supported: {', '.join(VIAS)})")
    if via != "prefetch" and not fhir_base:
        raise ValueError(f"via={via!r} needs fhir_base")
    resources = _resources(bundle)
    by_ref = {_ref(r): r for r in resources}
    if missing := [d for d in drafts if d not in by_ref]:
        raise ValueError(f"draft orders not in the bundle: {', '.join(missing)}")
    draft_resources = [by_ref[d] for d in drafts]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    if len(patients) != 1:
        raise ValueError(f"the bundle must hold exactly one Patient, not {len(patients)}")

    context: dict = {"userId": _user_id(draft_resources, resources), "patientId": patients[0]["id"]}
    if (encounter_id := _encounter_id(draft_resources, resources)) is not None:
        context["encounterId"] = encounter_id
    if hook == "order-select":
        chosen = list(selections) if selections is not None else list(drafts)
        if stray := [s for s in chosen if s not in drafts]:
            raise ValueError(f"selections must be draft orders: {', '.join(stray)}")
        context["selections"] = chosen
    if hook in HOOKS_WITH_DRAFTS:
        context["draftOrders"] = _draft_orders(draft_resources, resources)

    request: dict = {"hook": hook, "hookInstance": str(uuid.uuid4())}
    if via in ("fhir", "both"):
        request["fhirServer"] = fhir_base
        request["fhirAuthorization"] = {
            "access_token": token or secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": CLIENT_ID,
            "patient": context["patientId"],
        }
    request["context"] = context
    if via in ("prefetch", "both"):
        if store is None:
            store = FhirStore()
            store.add_bundle(bundle, exclude=drafts)
        templates = DEFAULT_PREFETCH_TEMPLATES if prefetch_templates is None else prefetch_templates
        prefetch = fill_prefetch(store, templates, context, fhir_base or OFFLINE_BASE)
        if prefetch:
            request["prefetch"] = prefetch
    return request


def build_request(
    fixture: str,
    hook: str = "order-select",
    via: str = "prefetch",
    fhir_base: str | None = None,
    prefetch_templates: Mapping[str, str] | None = None,
    token: str | None = None,
    today: date | None = None,
    *,
    store: FhirStore | None = None,
    directory: Path = FIXTURES_DIR,
) -> dict:
    """The request an EHR sends when the fixture's draft orders are selected (or signed), or, for
    ``patient-view``, when the fixture patient's chart is opened (its drafts stay out of the record).

    Dates are moved to ``today``; a ``store`` passed in must have been loaded with the same ``today``.
    """
    entry = manifest(directory).get(fixture)
    if entry is None:
        raise KeyError(f"unknown fixture {fixture!r}")
    bundle = load_bundle(fixture, today, directory)
    drafts: Iterable[str] = entry.get("drafts", ())
    return build_request_from_bundle(
        bundle,
        list(drafts),
        selections=entry.get("selections"),
        hook=hook,
        via=via,
        fhir_base=fhir_base,
        prefetch_templates=prefetch_templates,
        token=token,
        store=store,
    )
