"""Answer one hook call: validate → trigger → gather the record → rules → cards.

The one straight road of the service. Everything it calls is either pure (trigger, record, rules, cards) or
bounded by the request's FHIR deadline (gather).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service import metrics
from cds_service.alert_memory import HeldBack, hold_back, repeat_settings
from cds_service.auth import Caller
from cds_service.card_text import shorten
from cds_service.cards import apply_finding_settings, build_cards
from cds_service.config import Service
from cds_service.evaluations import Evaluated
from cds_service.fhir_client import FhirClient, FhirError
from cds_service.fhir_json import path
from cds_service.gather import Gathered, gather, run_parallel
from cds_service.prefetch import KEY_BY_NAME
from cds_service.protocol import ProtocolError, validate_request
from cds_service.record_builder import build_record
from cds_service.rules import evaluate
from cds_service.rules.model import INDICATOR_RANK, Evaluation, Finding, RuleInput
from cds_service.rules.orders import order_notes
from cds_service.runtime import Runtime
from cds_service.services import ServiceSpec, spec_for
from cds_service.smart.links import add_course_links, course_context
from cds_service.trigger import (
    MedicationIndex,
    bundle_entries,
    draft_resources,
    readable_reference,
)

log = logging.getLogger("cds_service.hook_call")

MAX_MEDICATION_READS = 50
"""Medications read from the FHIR server per request; orders naming others are left out and named."""

DATA_NAMES = {
    "patient": "patient demographics",
    "conditions": "problem list (Condition)",
    "medications": "medication orders (MedicationRequest)",
    "observations": "lab results and vital signs (Observation)",
    "allergies": "allergy list (AllergyIntolerance)",
    "procedures": "procedures (Procedure)",
    "immunizations": "vaccines given (Immunization)",
}


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    evaluation: Evaluation | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    """PHI-free facts for the log line: trigger count, fetched keys, unavailable keys, findings held back."""
    held: list[HeldBack] = field(default_factory=list)
    """Findings that fired but were not shown again (``alert_memory``): what ``explain`` reports."""
    to_remember: Callable[[], int] | None = None
    """Remembers the findings shown (order-select); called by the HTTP endpoint, never by ``explain``."""
    below: list[Finding] = field(default_factory=list)
    """Findings that fired below the service's ``min_indicator`` (patient-view: info), so not shown."""


def operation_outcome(
    issues: Mapping[str, str], code: str = "not-found", server: object = None
) -> dict[str, Any]:
    """The 412 answer: each required key that could not be had, and why; ``server`` (the request's
    ``fhirServer``, a string) is named, so a caller sees which FHIR base it could not reach."""
    at = f" (fhirServer {shorten(server, 300)})" if isinstance(server, str) and server else ""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code,
                "diagnostics": f"{DATA_NAMES.get(key, key)}: {why}{at}",
                "expression": [f"prefetch.{key}"],
            }
            for key, why in issues.items()
        ],
    }


def longest_lookback(thresholds: Mapping[str, Any]) -> int:
    """The longest look-back window (``*_days``) of the rule catalog's settings."""
    return max((int(v) for k, v in thresholds.items() if k.endswith("_days")), default=365)


def fhir_client_for(
    body: Mapping,
    runtime: Runtime,
    deadline: float,
    caller: Caller | None = None,
    request_id: str | None = None,
) -> tuple[FhirClient | None, str]:
    """A client for the request's fhirServer, or None with the reason it cannot be used.

    ``fhir_policy`` decides which server may be called for this caller; a refused one is logged and treated
    as no server at all (so missing data gives 412), and the caller learns no more than that it was refused.
    """
    server = body.get("fhirServer")
    auth = body.get("fhirAuthorization") if isinstance(body.get("fhirAuthorization"), Mapping) else None
    if not isinstance(server, str) or not server:
        return None, "no fhirServer in the request"
    refusal = runtime.fhir_policy.refusal(server, caller, timeout=deadline - time.monotonic())
    if refusal:
        log.warning(
            "fhirServer refused",
            extra={
                "reason": refusal.reason,
                "host": refusal.host,
                "issuer": caller.issuer if caller else None,
            },
        )
        return None, refusal.public
    token = auth.get("access_token") if auth else None
    if not token and not runtime.dev:
        return None, "no fhirAuthorization in the request"
    fhir = runtime.config.section("fhir")
    client = FhirClient(
        server,
        token,
        runtime.session,
        deadline,
        page_cap=fhir["page_cap"],
        max_bytes=fhir["max_response_bytes"],
        request_id=request_id,
        max_resources=fhir.get("max_resources_per_key", 50_000),
    )
    return client, ""


class MedicationResolver:
    """Resolves a ``medicationReference``: inside the request first, then (bounded) from the FHIR server.

    Inside the request: a Medication in ``draftOrders`` or the prefetch, by ``Medication/id`` or by its
    entry's ``fullUrl`` (``urn:uuid:…`` or absolute; rules.md v3 § Reading the record, References). Only
    a relative ``Medication/id``, or an absolute URL on the request's own ``fhirServer``, is ever read from
    the server; ``urn:uuid:`` and another server's URL never are. Built once per call from the draft orders;
    ``learn`` adds the gathered stored orders (and the Medications included with them) and reads what they
    reference and nobody sent, so a Medication read for the trigger is never read a second time.
    ``fetched`` is what was read from the server.
    """

    def __init__(self, body: Mapping, client: FhirClient | None, runtime: Runtime):
        context = body.get("context") or {}
        server = body.get("fhirServer")
        self.client, self.runtime = client, runtime
        self.index = MedicationIndex(
            client.base_url if client else (server if isinstance(server, str) and server else None),
            more=lambda: _prefetch_entries(body.get("prefetch")),
            can_fetch=client is not None,
        )
        self.index.add_bundle(context.get("draftOrders") or context.get("medications"))
        self.known: list[Mapping] = []
        self.fetched: dict[str, object] = {}
        self._read_missing(draft_resources(context))

    def learn(self, resources: Iterable[Mapping]) -> None:
        """Stored orders and Medications gathered from the medication key (the only one that holds them)."""
        resources = list(resources)
        for included in resources:
            self.index.add(included)
        self._read_missing(resources)

    def _read_missing(self, resources: Iterable[Mapping]) -> None:
        self.known += resources
        client = self.client
        if client is None:
            return
        wanted = set()
        for resource in self.known:
            ref = path(resource, "medicationReference", "reference")
            if not isinstance(ref, str) or ref.startswith("#") or self.index.find(ref):
                continue
            if readable := readable_reference(ref, client.base_url):
                wanted.add(readable)
        wanted -= self.fetched.keys()
        if wanted:
            # bounded: a request naming 10,000 Medications must not make the service send 10,000 reads
            budget = max(0, MAX_MEDICATION_READS - len(self.fetched))
            jobs = {ref: (lambda r=ref: client.read(r)) for ref in sorted(wanted)[:budget]}
            read, _ = run_parallel(jobs, client.deadline, self.runtime.executors.for_url(client.base_url))
            self.fetched.update(read)

    def __call__(self, ref: str) -> Mapping | None:
        found = self.index.find(ref)
        client = self.client
        if found is None and client is not None and (readable := readable_reference(ref, client.base_url)):
            found = self.fetched.get(readable)  # type: ignore[assignment]
        return found if isinstance(found, Mapping) else None


def _prefetch_entries(prefetch: object) -> list[tuple[str | None, Mapping]]:
    """(fullUrl, resource) of the prefetch's medications Bundle, where Medications come with their orders: a
    ``urn:uuid:`` reference may name one of its entries. Only that key is decoded, and only when asked."""
    try:
        return bundle_entries(prefetch.get("medications")) if isinstance(prefetch, Mapping) else []
    except ProtocolError:  # a malformed value is refused, naming it, when the medications are gathered
        return []


def answer_hook(
    body: Any,
    service: Service,
    runtime: Runtime,
    now: datetime | None = None,
    tenant: str | None = None,
    caller: Caller | None = None,
    request_id: str | None = None,
    laps: metrics.Laps | None = None,
    smart_app_url: str | Callable[[], str | None] | None = None,
) -> Answer:
    """The answer to one hook call; ``tenant`` (the caller's organisation) picks its overrides.

    Order hooks trigger on a tacrolimus draft order; patient-view (rules.md § Patients already on tacrolimus)
    on an active tacrolimus order on record, so it reads the medications first and the rest only if one is
    there.

    With ``smart_app_url`` (the course app's launch URL, or how to find it once there are cards) the
    monitoring and salvage cards link to the app.
    ``laps`` times the stages into ``cds_stage_seconds``; ``request_id`` goes on every FHIR call.
    """
    laps = laps or metrics.Laps()
    validate_request(body, service.hook)
    laps.lap("parse")
    now = now or datetime.now(UTC)
    context = body["context"]
    deadline = time.monotonic() + runtime.config.section("fhir")["deadline_seconds"]
    client, client_problem = fhir_client_for(body, runtime, deadline, caller, request_id)
    spec = spec_for(service.id, service.hook)
    templates = runtime.templates_for(service)

    def gather_keys(keys: Iterable[str]) -> Gathered:
        return gather(
            body.get("prefetch"),
            {k: templates[k] for k in keys},
            context,
            client,
            runtime.executors,
            client_problem or "no fhirServer in the request",
            runtime.config.section("fhir").get("max_resources_per_key", 50_000),
        )

    first = spec.trigger.reads_first
    gathered = gather_keys(first) if first else None  # what the trigger reads, before anything else
    if gathered is not None and gathered.missing_required:
        unread = {"triggers": 0, "fetched": gathered.fetched, "unavailable": sorted(gathered.unavailable)}
        outcome = operation_outcome(gathered.missing_required, server=body.get("fhirServer"))
        return Answer(412, outcome, notes=unread)
    resolve = MedicationResolver(body, client, runtime)
    if gathered is not None:
        resolve.learn(gathered.resources.get("medications", ()))
    stored = _stored_orders(gathered) if gathered is not None else []
    try:
        triggers = spec.trigger.find(context, service.hook, stored, runtime.terminology, resolve)
    except FhirError:
        triggers = []
    if not triggers:
        notes: dict[str, Any] = {"triggers": 0}
        if gathered is not None:
            notes["fetched"] = gathered.fetched
        return Answer(200, {"cards": []}, notes=notes)

    settings = runtime.config.settings_for(service, tenant)
    key = runtime.evaluations.key(service.id, tenant, body, client is not None, now)
    evaluated = runtime.evaluations.get(key)
    if evaluated is None:
        rest = gather_keys(k for k in templates if k not in first)
        resolve.learn(rest.resources.get("medications", ()))
        gathered = gathered.merged(rest) if gathered is not None else rest
        laps.lap("gather")
        if gathered.missing_required:
            notes = {"triggers": len(triggers), **_fetch_notes(gathered)}
            outcome = operation_outcome(gathered.missing_required, server=body.get("fhirServer"))
            return Answer(412, outcome, notes=notes)
        evaluated = _evaluate(
            body,
            gathered,
            triggers,
            runtime,
            settings,
            now,
            spec,
            resolve,
            laps=laps,
        )
        runtime.evaluations.put(key, evaluated)
        notes = dict(evaluated.notes)
    else:
        notes = {**evaluated.notes, "evaluation_reused": True}
    findings, below = at_or_above(
        apply_finding_settings(evaluated.evaluation.findings, settings), settings.get("min_indicator", "info")
    )
    if below:
        notes["below_min_indicator"] = [f.id for f in below]
    about = (tenant, str(context.get("patientId")), [str(t.get("id")) for t in triggers])
    findings, held, to_remember = _repeats(findings, spec, runtime, settings, about, now)
    if held:
        notes["held_back"] = [h.id for h in held]
        notes["held_back_why"] = sorted({h.why for h in held})
    cards = build_cards(
        findings,
        evaluated.record,
        settings,
        stored_orders=evaluated.stored_orders,
        not_checked=evaluated.not_checked,
        order_notes=evaluated.order_notes,
    )
    launch_url = smart_app_url() if callable(smart_app_url) else smart_app_url
    if cards and launch_url:  # the course app, launched from the monitoring and salvage cards
        cards = add_course_links(cards, launch_url, evaluated.course)
    laps.lap("cards")
    return Answer(
        200,
        {"cards": cards},
        evaluation=evaluated.evaluation,
        notes=notes,
        held=held,
        to_remember=to_remember,
        below=below,
    )


def _fetch_notes(gathered: Gathered) -> dict[str, Any]:
    return {"fetched": sorted(gathered.fetched), "unavailable": sorted(gathered.unavailable)}


def _evaluate(
    body: Mapping,
    gathered: Gathered,
    triggers: list[Mapping],
    runtime: Runtime,
    settings: Mapping[str, Any],
    now: datetime,
    spec: ServiceSpec,
    resolve: MedicationResolver,
    laps: metrics.Laps,
) -> Evaluated:
    """The record built from the gathered resources, and what the rules make of it."""
    context = body["context"]
    resources = gathered.resources
    stored_orders = _stored_orders(gathered)
    record = build_record(
        terminology=runtime.terminology,
        now=now,
        patient=next(iter(resources.get("patient") or ()), None),
        conditions=[r for r in resources.get("conditions", ()) if r.get("resourceType") == "Condition"],
        medications=stored_orders,
        drafts=draft_resources(context),
        trigger_ids=spec.trigger.draft_ids(triggers),
        allergies=[
            r for r in resources.get("allergies", ()) if r.get("resourceType") == "AllergyIntolerance"
        ],
        observations=[r for r in resources.get("observations", ()) if r.get("resourceType") == "Observation"],
        procedures=[r for r in resources.get("procedures", ()) if r.get("resourceType") == "Procedure"],
        immunizations=[
            r for r in resources.get("immunizations", ()) if r.get("resourceType") == "Immunization"
        ],
        resolve=resolve,
        unavailable={KEY_BY_NAME[k].resource_type for k in gathered.unavailable},
        lookback_days=longest_lookback(settings["thresholds"]),
        answer_order_ids=spec.trigger.stored_ids(triggers),
    )
    orders = spec.trigger.orders(record.medications, triggers)
    laps.lap("record")
    rule_input = RuleInput(
        record=record,
        orders=orders,
        thresholds=settings["thresholds"],
        scope=settings["scope"],
        continuing=spec.continuing,
        only=spec.only,
        service_kind=spec.kind,
    )
    evaluation = evaluate(rule_input)
    laps.lap("rules")
    unread = {**gathered.unavailable, **gathered.incomplete}
    return Evaluated(
        record=replace(record, labs={}),  # kept for the cards, which do not read lab results
        evaluation=evaluation,
        stored_orders={f"MedicationRequest/{r.get('id')}": r for r in stored_orders},
        not_checked={DATA_NAMES[k]: why for k, why in unread.items()},
        course=course_context(rule_input),
        order_notes=order_notes(rule_input),
        notes={"triggers": len(triggers), **_fetch_notes(gathered)},
        from_request_alone=not gathered.fetched and not resolve.fetched,
    )


def _stored_orders(gathered: Gathered) -> list[dict]:
    medications = gathered.resources.get("medications", ())
    return [r for r in medications if r.get("resourceType") == "MedicationRequest"]


def at_or_above(findings: list[Finding], minimum: str) -> tuple[list[Finding], list[Finding]]:
    """(findings shown, findings below ``min_indicator``): patient-view shows warning and worse by default."""
    rank = INDICATOR_RANK[minimum]
    shown = [f for f in findings if INDICATOR_RANK[f.indicator] >= rank]
    return shown, [f for f in findings if INDICATOR_RANK[f.indicator] < rank]


def _repeats(
    findings: list[Finding],
    spec: ServiceSpec,
    runtime: Runtime,
    settings: Mapping[str, Any],
    about: tuple[str | None, str, list[str]],
    now: datetime,
) -> tuple[list[Finding], list[HeldBack], Callable[[], int] | None]:
    """Hold back what this patient's clinician has just seen (rules.md "Across hooks and visits").

    Returns the findings to show, those held back, and how to remember the shown ones once the cards are sent.
    """
    rule, options = spec.memory, repeat_settings(settings)
    memory = runtime.alert_memory
    if memory is None or not options["enabled"]:
        return findings, [], None
    subject = rule.subject(*about)  # tenant, patient, the triggering orders' ids
    shown, held = hold_back(
        memory, rule, timedelta(minutes=options["window_minutes"]), subject, findings, now
    )
    namespace = rule.remember_as
    to_remember = (lambda: memory.remember(namespace, subject, shown, now)) if namespace and shown else None
    return shown, held, to_remember
