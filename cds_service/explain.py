"""``cds-service explain``: why each finding did or did not fire for one request.

The request runs in-process through ``hook_call.answer_hook``, the code path of a real call, on the chosen
configuration and tenant. The rules return every finding that fired (with the data it used) and a reason for
every one that did not; this module lays them out finding by finding with the settings each one reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from cds_service.alert_memory import AlertMemory, longest_window
from cds_service.cards import FINDINGS_EXTENSION
from cds_service.config import Config, Service
from cds_service.fhir_policy import LOOPBACK_NAMES, REFUSED
from cds_service.fixtures import FIXTURES_DIR, manifest
from cds_service.hook_call import Answer, answer_hook
from cds_service.rules import FINDING_IDS, REGISTRY, RETIRED, retired_message
from cds_service.rules.model import Finding
from cds_service.runtime import Runtime
from cds_service.services import ServiceSpec, spec_for
from cds_service.storage import Store, make_engine


class ExplainError(ValueError):
    """The request could not be found or built; the message says what to give instead."""


@dataclass(frozen=True)
class Source:
    body: dict[str, Any]
    label: str


def _drafts_of(bundle: Mapping[str, Any]) -> list[str]:
    """The draft orders: MedicationRequests, and ServiceRequests (a vaccine ordered as a service, N19)."""
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", ())
        if (e.get("resource") or {}).get("resourceType") in ("MedicationRequest", "ServiceRequest")
        and e["resource"].get("status") == "draft"
    ]


def load_source(source: str, hook: str) -> Source:
    """A CDS Hooks request from a fixture name, a fixture or FHIR Bundle file, or a request JSON file.

    A fixture (by name or as its file in ``fhir_fixtures/``) is sent as its manifest says, dates moved to
    today. Another Bundle's draft MedicationRequests and ServiceRequests (a vaccine ordered as a service)
    become ``context.draftOrders``, the rest its prefetch.
    Both are built by the sandbox's request builder, which a source checkout has and the production image
    does not: there, give a request file.
    """
    path = Path(source)
    name = path.name.removesuffix(".json")
    is_fixture = name in _fixtures() and (
        not path.is_file() or path.resolve().parent == FIXTURES_DIR.resolve()
    )
    if is_fixture:
        return Source(_request_builder().build_request(name, hook=hook), f"fixture {name} ({hook})")
    if not path.is_file():
        raise ExplainError(f"{source}: neither a file nor a fixture name of fhir_fixtures/manifest.json")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExplainError(f"{source}: not a readable JSON file: {error}") from None
    if not isinstance(document, dict):
        raise ExplainError(f"{source}: expected a JSON object (a CDS Hooks request or a FHIR Bundle)")
    if document.get("resourceType") == "Bundle":
        drafts = _drafts_of(document)
        if not any(d.startswith("MedicationRequest/") for d in drafts):
            raise ExplainError(f"{source}: a Bundle without a draft MedicationRequest to order")
        try:
            body = _request_builder().build_request_from_bundle(document, drafts, hook=hook)
        except ValueError as error:
            raise ExplainError(f"{source}: {error}") from None
        return Source(body, f"bundle {path} ({hook}, drafts {', '.join(drafts)})")
    if "hook" not in document or "context" not in document:
        raise ExplainError(f"{source}: not a CDS Hooks request (no hook/context) and not a FHIR Bundle")
    return Source(document, f"request {path} ({document.get('hook')})")


FIXTURE_API_PATH = "/sandbox/fhir"
"""Where ``serve --dev`` mounts the fixture FHIR API; the README's example requests name it."""


def names_fixture_api(body: Mapping[str, Any]) -> bool:
    """Does the request's ``fhirServer`` name the fixture FHIR API of a ``serve --dev`` on this machine?"""
    server = body.get("fhirServer")
    if not isinstance(server, str):
        return False
    try:
        parts = urlsplit(server)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    loopback = host in LOOPBACK_NAMES or host.startswith("127.")
    return parts.scheme == "http" and loopback and parts.path.rstrip("/") == FIXTURE_API_PATH


@contextmanager
def fixture_api_in_process(source: Source) -> Iterator[tuple[Source, bool]]:
    """A request naming the fixture FHIR API of ``serve --dev`` reads the same fixtures here, on a loopback
    server of its own: ``explain examples/order-select.json`` needs no running service and no ``--dev``.

    Yields the request to run and whether its ``fhirServer`` is now that in-process server.
    """
    if not names_fixture_api(source.body) or not (FIXTURES_DIR / "manifest.json").is_file():
        yield source, False
        return
    try:
        from cds_service.sandbox import FhirStore, serve_in_thread
    except ImportError:  # the production image has no sandbox: the request is sent as it is
        yield source, False
        return
    with serve_in_thread(FhirStore.from_fixtures(), base_path=FIXTURE_API_PATH) as base_url:
        body = {**source.body, "fhirServer": base_url}
        label = f"{source.label}; its fhirServer {source.body['fhirServer']} read from fhir_fixtures/"
        yield Source(body, label), True


def refusal_hint(answer: Answer, body: Mapping[str, Any], dev: bool) -> str | None:
    """What to add when the request's ``fhirServer`` was refused: ``--dev`` for plain http on loopback."""
    refused = any(REFUSED in str(i.get("diagnostics")) for i in answer.body.get("issue", ()))
    server = body.get("fhirServer")
    if answer.status != 412 or not refused or dev or not isinstance(server, str):
        return None
    if server.startswith("http://"):
        return f"fhirServer {server} is plain http: add --dev to allow a FHIR server on loopback"
    return (
        f"fhirServer {server} is not in any caller's fhir_servers (settings.yaml callers:); "
        "add --dev to allow an https server on a public address"
    )


def _fixtures() -> dict[str, dict]:
    """The fixtures' manifest; empty where there are none (the production image ships no fixtures)."""
    return manifest() if (FIXTURES_DIR / "manifest.json").is_file() else {}


def _request_builder() -> Any:
    """``cds_service.sandbox.requests``, imported only for a fixture or a Bundle (the production image has no
    sandbox)."""
    try:
        from cds_service.sandbox import requests
    except ImportError:
        raise ExplainError(
            "building a request from a fixture or a Bundle needs a source checkout (the sandbox); "
            "give a CDS Hooks request file"
        ) from None
    return requests


def request_hook(source: str) -> str | None:
    """The hook named by a CDS Hooks request file or by a fixture's manifest entry (patient-view fixtures);
    None for another fixture or a Bundle."""
    path = Path(source)
    entry = _fixtures().get(path.name.removesuffix(".json"))
    in_fixtures = not path.is_file() or path.resolve().parent == FIXTURES_DIR.resolve()
    if entry and entry.get("hook") and in_fixtures:
        return str(entry["hook"])
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    hook = document.get("hook") if isinstance(document, dict) else None
    return hook if isinstance(hook, str) else None


def pick_service(config: Config, service_id: str | None, hook: str | None) -> Service:
    if service_id:
        if service_id not in config.services:
            raise ExplainError(f"no service {service_id!r}; configured: {', '.join(sorted(config.services))}")
        return config.services[service_id]
    for wanted in (hook, "order-sign"):
        for service in config.services.values():
            if service.hook == wanted:
                return service
    if not config.services:
        raise ExplainError("the configuration offers no service")
    return next(iter(config.services.values()))


@dataclass(frozen=True)
class Verdict:
    id: str
    status: str
    """``fired``, ``fired-off`` (turned off by configuration), ``held-back`` (already shown),
    ``below-minimum`` (under the service's ``min_indicator``), ``not-run`` (not a rule of this service's hook)
    or ``quiet``."""
    indicator: str | None
    card: str | None
    why: list[str]
    settings: dict[str, Any]


def _evidence_lines(finding: Finding) -> list[str]:
    lines = []
    for item in finding.evidence:
        when = f" on {item.when.date().isoformat()}" if item.when else ""
        ref = f" ({item.reference})" if item.reference else ""
        lines.append(f"{item.label}: {item.value}{when}{ref}")
    lines += [f"not found: {m}" for m in finding.missing]
    return lines


def pick_findings(wanted: Sequence[str]) -> tuple[str, ...]:
    """The finding ids asked for (all when none), refusing unknown and retired (version 1) ids by name."""
    for finding_id in wanted:
        if finding_id in RETIRED:
            raise ExplainError(retired_message(finding_id))
        if finding_id not in FINDING_IDS:
            raise ExplainError(f"{finding_id!r} is not a finding id of the catalog: {', '.join(FINDING_IDS)}")
    return tuple(wanted) or FINDING_IDS


def verdicts(
    answer: Answer, settings: Mapping[str, Any], spec: ServiceSpec, only: Sequence[str] = FINDING_IDS
) -> list[Verdict]:
    """One verdict per catalog finding (or per id in ``only``), in catalog order, for a call of ``spec``."""
    evaluation = answer.evaluation
    fired = {f.id: f for f in evaluation.findings} if evaluation else {}
    quiet = {q.id: q.reason for q in evaluation.quiet} if evaluation else {}
    on_card = {
        item["id"]: (card["source"]["topic"]["code"], item["indicator"])
        for card in answer.body.get("cards", ())
        for item in card.get("extension", {}).get(FINDINGS_EXTENSION, ())
    }
    held = {h.id: h for h in answer.held}
    below = {f.id for f in answer.below}
    minimum = settings.get("min_indicator", "info")
    runs = spec.findings
    thresholds = settings.get("thresholds") or {}
    out = []
    for finding_id in (f for f in FINDING_IDS if f in only):
        read = {key: thresholds.get(key) for key in REGISTRY.settings_read_by(finding_id)}
        options = (settings.get("findings") or {}).get(finding_id) or {}
        if finding_id in fired:
            finding = fired[finding_id]
            card, indicator = on_card.get(finding_id, (None, finding.indicator))
            why = _evidence_lines(finding)
            if indicator != finding.indicator:
                why.append(f"indicator {finding.indicator} re-graded to {indicator} by configuration")
            status = "fired" if card else "fired-off"
            if finding_id in held:
                status = "held-back"
                why.insert(0, f"held back, not on a card: {held[finding_id].why}")
            elif finding_id in below:
                status = "below-minimum"
                why.insert(0, f"{indicator}, below this service's min_indicator ({minimum}): not on a card")
            elif not card and options.get("enabled", True) is False:
                why.append(
                    f"turned off by configuration (findings.{finding_id}.enabled: false): not on a card"
                )
            out.append(Verdict(finding_id, status, indicator, card, why, read))
        elif finding_id not in runs:
            out.append(Verdict(finding_id, "not-run", None, None, [spec.not_run_reason()], read))
        else:
            reason = quiet.get(finding_id) or quiet.get("scope") or _no_evaluation_reason(answer, spec)
            out.append(Verdict(finding_id, "quiet", None, None, [reason], read))
    return out


def _no_evaluation_reason(answer: Answer, spec: ServiceSpec) -> str:
    if answer.status == 412:
        return "not evaluated: required patient data could not be obtained (412)"
    if not answer.notes.get("triggers") and spec.trigger.on_record:
        return "not evaluated: no active systemic tacrolimus order on record"
    if not answer.notes.get("triggers"):
        return "not evaluated: no systemic tacrolimus order in this request"
    return "not evaluated"


def explain(
    source: Source,
    config: Config,
    service: Service,
    tenant: str | None = None,
    dev: bool = False,
    now: datetime | None = None,
    only: Sequence[str] = FINDING_IDS,
) -> tuple[Answer, list[Verdict], Mapping[str, Any]]:
    """Run the request like a real call (no database writes) and return the answer and the verdicts.

    What was already shown (``alert_memory``) is read from the configured database, never written.
    """
    try:  # read only: no migration, no secret made; without a usable database nothing counts as shown
        engine = make_engine(config.section("feedback")["database_url"], migrate=False)
        memory: AlertMemory | None = AlertMemory(engine, keep=longest_window(config), create_secret=False)
    except SQLAlchemyError:
        memory = None
    runtime = Runtime.from_config(config, dev=dev, store=Store(make_engine("sqlite://")), alert_memory=memory)
    try:
        answer = answer_hook(source.body, service, runtime, now=now, tenant=tenant)
    finally:
        runtime.close()
    settings = config.settings_for(service, tenant)
    return answer, verdicts(answer, settings, spec_for(service.id, service.hook), only), settings


def as_text(
    source: Source,
    service: Service,
    tenant: str | None,
    answer: Answer,
    found: list[Verdict],
    settings: Mapping[str, Any],
) -> str:
    lines = [
        f"request:  {source.label}",
        f"service:  {service.id} (hook {service.hook}), tenant {tenant or '(none)'}",
        f"scope:    {settings.get('scope')}; cards show {settings.get('min_indicator', 'info')} and above",
        f"answer:   HTTP {answer.status}, {len(answer.body.get('cards', ()))} card(s)",
    ]
    for card in answer.body.get("cards", ()):
        ids = ", ".join(i["id"] for i in card.get("extension", {}).get(FINDINGS_EXTENSION, ()))
        lines.append(f"  card {card['source']['topic']['code']} ({card['indicator']}): {ids}")
    if answer.status != 200:
        for issue in answer.body.get("issue", ()):
            lines.append(f"  {issue.get('diagnostics')}")
    lines.append("")
    labels = {
        "fired": "FIRED",
        "fired-off": "fired, off",
        "held-back": "held back",
        "below-minimum": "fired, below min_indicator",
        "not-run": "not run",
        "quiet": "quiet",
    }
    for verdict in found:
        head = labels[verdict.status]
        if verdict.status == "fired":
            head += f" ({verdict.indicator}, card {verdict.card})"
        elif verdict.status in ("held-back", "below-minimum"):
            head += f" ({verdict.indicator})"
        lines.append(f"{verdict.id:<4} {head}")
        lines += [f"       {line}" for line in verdict.why]
        if verdict.settings:
            lines.append(
                "       settings: " + ", ".join(f"{k}={_value(v)}" for k, v in verdict.settings.items())
            )
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, list) else str(value)


def as_json(
    source: Source,
    service: Service,
    tenant: str | None,
    answer: Answer,
    found: list[Verdict],
    settings: Mapping[str, Any],
) -> str:
    return json.dumps(
        {
            "request": source.label,
            "service": service.id,
            "tenant": tenant,
            "scope": settings.get("scope"),
            "status": answer.status,
            "cards": [
                {
                    "topic": c["source"]["topic"]["code"],
                    "indicator": c["indicator"],
                    "findings": [i["id"] for i in c.get("extension", {}).get(FINDINGS_EXTENSION, ())],
                }
                for c in answer.body.get("cards", ())
            ],
            "findings": [v.__dict__ for v in found],
        },
        indent=2,
        default=str,
    )
