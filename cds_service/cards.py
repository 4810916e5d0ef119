"""Findings → CDS Hooks cards, conformant by construction (rules.md "Card contract").

One card per topic. Its indicator is the highest of its findings, its summary names the most serious one,
its detail lists every finding with the patient's data and the citation, then the data that was missing or
unusable. Uuids are derived from the card's content, so the same request gives the same uuids.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cds_service.record import PatientRecord
from cds_service.rules.citations import CITATIONS
from cds_service.rules.model import INDICATOR_RANK, TOPICS, Finding, OrderLabs, StopMedication

FINDINGS_EXTENSION = "org.example.tacrolimus-cds.findings"
TOPIC_SYSTEM = "https://example.org/tacrolimus-cds/CodeSystem/card-topic"
LOINC = "http://loinc.org"
UUID_NAMESPACE = uuid.UUID("6f1c2a1e-9d4b-5c1e-8f5e-7a3b2c1d0e9f")
SUMMARY_LIMIT = 139
MAX_NAMED_SKIPPED = 20
"""Resources left out are named on a card up to this many (a hostile request could send thousands)."""
TOPIC_DISPLAY = {
    "pregnancy": "Pregnancy and breastfeeding suitability",
    "salvage-context": "Why tacrolimus now (salvage context)",
    "nephrotoxicity-monitoring": "Nephrotoxicity monitoring",
}
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
OVERRIDE_REASONS = (
    ("patient-ineligible", "Patient does not meet eligibility for recommended action"),
    ("indication-order-exists", "Patient has indication/order for intended action"),
    ("risk-benefit-ratio", "Recipient assessment of risk/benefit ratio"),
    ("expert-contradicts", "Advice from expert contradicts the recommended action"),
    ("policy-contradicts", "Institutional policy/guideline contradicts the recommended action"),
)


def apply_finding_settings(findings: Iterable[Finding], settings: Mapping[str, Any]) -> list[Finding]:
    """Drop findings an administrator turned off; apply indicator overrides (e.g. P2 critical → warning)."""
    configured = settings.get("findings") or {}
    kept = []
    for finding in findings:
        options = configured.get(finding.id) or {}
        if options.get("enabled", True) is False:
            continue
        indicator = options.get("indicator", finding.indicator)
        if indicator != finding.indicator:
            finding = Finding(**{**finding.__dict__, "indicator": indicator})
        kept.append(finding)
    return kept


def _stable_uuid(content: Any) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, json.dumps(content, sort_keys=True, default=str)))


def _summary(most_serious: Finding, others: int) -> str:
    text = most_serious.summary.strip().rstrip(".")
    if others:
        text += f" (+{others} more)"
    if len(text) > SUMMARY_LIMIT:
        text = text[: SUMMARY_LIMIT - 1].rstrip() + "…"
    return text


def _finding_markdown(finding: Finding) -> str:
    lines = [f"**{finding.id} ({finding.indicator})**: {finding.detail.strip()}"]
    for item in finding.evidence:
        when = f" on {item.when.date().isoformat()}" if item.when else ""
        ref = f" ({item.reference})" if item.reference else ""
        lines.append(f"- {item.label}: {item.value}{when}{ref}")
    sources = [CITATIONS[key][0] for key in finding.citations if key in CITATIONS]
    if sources:
        lines.append(f"- Source: {'; '.join(sources)}")
    return "\n".join(lines)


def _detail(findings: list[Finding], record: PatientRecord, not_checked: Mapping[str, str]) -> str:
    parts = [_finding_markdown(f) for f in findings]
    missing = list(dict.fromkeys(m for f in findings for m in f.missing))
    if missing:
        parts.append("**Not found in the record:** " + "; ".join(missing) + ".")
    if record.skipped:  # resources that could not be read; lab units are named by the rules that read them
        named = [f"{u.reference}: {u.reason}" for u in record.skipped[:MAX_NAMED_SKIPPED]]
        if len(record.skipped) > MAX_NAMED_SKIPPED:
            named.append(f"and {len(record.skipped) - MAX_NAMED_SKIPPED} more")
        parts.append("**Left out:** " + "; ".join(named) + ".")
    if not_checked:
        parts.append(
            "**Not checked:** " + "; ".join(f"{what}: {why}" for what, why in not_checked.items()) + "."
        )
    return "\n\n".join(parts)


def _actions(
    suggestion: OrderLabs | StopMedication, patient_ref: str | None, stored: Mapping[str, Mapping]
) -> list[dict]:
    if isinstance(suggestion, OrderLabs):
        return [
            {
                "type": "create",
                "description": f"Order {display} (LOINC {code})",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "proposal",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://snomed.info/sct",
                                    "code": "108252007",
                                    "display": "Laboratory procedure",
                                }
                            ]
                        }
                    ],
                    "code": {
                        "coding": [{"system": LOINC, "code": code, "display": display}],
                        "text": display,
                    },
                    **({"subject": {"reference": patient_ref}} if patient_ref else {}),
                },
            }
            for code, display in suggestion.labs
        ]
    medication = suggestion.medication
    if medication.is_draft:
        return [
            {
                "type": "delete",
                "description": f"Remove the draft order for {medication.name}",
                "resourceId": medication.reference,
            }
        ]
    resource = stored.get(medication.reference)
    if resource is None or suggestion.drafts_only:
        return []
    reason = {"statusReason": {"text": suggestion.reason}} if suggestion.reason else {}  # why it was stopped
    return [
        {
            "type": "update",
            "description": f"Stop {medication.name}"
            + (f" ({suggestion.reason})" if suggestion.reason else ""),
            "resource": {**resource, "status": "stopped", **reason},
        }
    ]


def build_cards(
    findings: list[Finding],
    record: PatientRecord,
    settings: Mapping[str, Any],
    stored_orders: Mapping[str, Mapping] | None = None,
    not_checked: Mapping[str, str] | None = None,
) -> list[dict]:
    """One card per topic with findings, in catalog topic order."""
    cards_settings = settings.get("cards") or {}
    patient_ref = f"Patient/{record.patient.id}" if record.patient and record.patient.id else None
    cards = []
    for topic in TOPICS:
        on_topic = [f for f in findings if f.topic == topic]
        if not on_topic:
            continue
        ranked = sorted(on_topic, key=lambda f: -INDICATOR_RANK[f.indicator])
        card: dict[str, Any] = {
            "summary": _summary(ranked[0], len(on_topic) - 1),
            "indicator": ranked[0].indicator,
            "detail": _detail(on_topic, record, not_checked or {}),
            "source": {
                "label": cards_settings.get("source_label", "Tacrolimus CDS"),
                **({"url": cards_settings["source_url"]} if cards_settings.get("source_url") else {}),
                "topic": {"system": TOPIC_SYSTEM, "code": topic, "display": TOPIC_DISPLAY[topic]},
            },
            "overrideReasons": [
                {"system": NON_ADHERENCE, "code": c, "display": d} for c, d in OVERRIDE_REASONS
            ],
            "extension": {FINDINGS_EXTENSION: [{"id": f.id, "indicator": f.indicator} for f in on_topic]},
        }
        suggestions = []
        for finding in on_topic:
            for suggestion in finding.suggestions:
                actions = _actions(suggestion, patient_ref, stored_orders or {})
                if actions:
                    item = {"label": suggestion.label, "actions": actions}
                    suggestions.append({"uuid": _stable_uuid([topic, finding.id, item]), **item})
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        citation_keys = dict.fromkeys(k for f in on_topic for k in f.citations if k in CITATIONS)
        if citation_keys:
            targets = cards_settings.get("links") or {}  # an administrator's own link for a source
            card["links"] = [
                {"label": CITATIONS[k][0], "url": targets.get(k, CITATIONS[k][1]), "type": "absolute"}
                for k in citation_keys
            ]
        cards.append({"uuid": _stable_uuid(card), **card})
    return cards
