"""Findings → CDS Hooks cards, conformant by construction (rules.md "Card contract").

One card per topic, read in ten seconds in a narrow EHR sidebar. Its indicator is the highest of its findings;
its summary names the most serious one and counts the others in words; its detail lists the findings from the
most serious down, each with the patient's data and the numbers of its sources, then the data that was missing
or unusable. Each source is cited once per card, as a numbered ``absolute`` link. Uuids are derived from the
card's content, so the same request gives the same uuids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from cds_service.card_text import clean, markdown, plain, shorten
from cds_service.fhir_json import MAX_RESOURCE_DEPTH, nested_deeper_than
from cds_service.record import PatientRecord, Unusable
from cds_service.rules.citations import CITATIONS
from cds_service.rules.model import (
    INDICATOR_RANK,
    TOPICS,
    Evidence,
    Finding,
    OrderLabs,
    StopMedication,
)

FINDINGS_EXTENSION = "org.example.tacrolimus-cds.findings"
TOPIC_SYSTEM = "https://example.org/tacrolimus-cds/CodeSystem/card-topic"
LOINC = "http://loinc.org"
UUID_NAMESPACE = uuid.UUID("6f1c2a1e-9d4b-5c1e-8f5e-7a3b2c1d0e9f")
SUMMARY_LIMIT = 139
WHERE = "Where in the record"
"""The closing section of a card's detail that names the resource ids, once."""
ON_RECORD = "\n*On record:*"
"""Heads the values a finding about missing data did find (N1's recent eGFR beside a missing potassium)."""
MAX_NAMED_SKIPPED = 20
"""Resources left out are named on a card up to this many (a hostile request could send thousands)."""
NOTE_LIMIT = 400
"""A note on a card (what was missing, why a resource was left out) is cut to this many characters."""
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
    """A uuid that depends on the content alone (uuid5 of its canonical JSON)."""
    canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS, default=str)
    return str(uuid.uuid5(UUID_NAMESPACE, canonical.decode("utf-8")))


def most_serious_first(findings: Iterable[Finding]) -> list[Finding]:
    """Critical, then warning, then info; catalog order within an indicator (the sort is stable)."""
    return sorted(findings, key=lambda f: -INDICATOR_RANK[f.indicator])


def others_text(count: int) -> str:
    """How a summary counts the findings after the first: words that cannot be read as more of the same."""
    return f"and {count} other finding{'s' if count != 1 else ''}"


def card_summary(most_serious: Finding, others: int) -> str:
    """The most serious finding's summary (< 140 characters), then "; and 2 other findings" if any.

    When it is too long, the finding's own text is shortened, never the count of the others. The text is
    plain (``card_text.plain``): a drug name cannot make it a link or HTML.
    """
    text = clean(most_serious.summary).strip().rstrip(".")
    tail = f"; {others_text(others)}" if others else ""
    room = SUMMARY_LIMIT - len(tail)
    if len(plain(text)) > room:
        text = text[:room]
        while len(plain(text)) > room - 1:
            text = text[:-1]
        text = text.rstrip(" ,;:") + "…"
    return plain(text) + tail


def citation_numbers(findings: Iterable[Finding]) -> dict[str, int]:
    """Citation key → its number on the card, in order of first use: each source is listed once per card."""
    keys = dict.fromkeys(k for f in findings for k in f.citations if k in CITATIONS)
    return {key: number for number, key in enumerate(keys, start=1)}


def _note(text: str, limit: int = NOTE_LIMIT) -> str:
    """Rule or record text as card Markdown: escaped, one line, cut when overlong (``card_text``)."""
    return markdown(shorten(text, limit))


def _evidence_line(item: Evidence) -> str:
    """``- Creatinine: 1.6 mg/dL on 2026-11-02``; the resource id is named once, under ``WHERE``."""
    when = f" on {item.when.date().isoformat()}" if item.when else ""
    return f"- {_note(item.label)}: {_note(item.value)}{when}"


def _finding_markdown(finding: Finding, numbers: Mapping[str, int], listed: set[Evidence]) -> str:
    """``**Critical · P2.** What was found, why, what to do. [1, 2]`` then the data it used.

    Data already listed under a more serious finding of the card is named, not repeated. A finding about
    data that is missing (N1) heads what it did find "On record:", so a present value is not read as the
    problem.
    """
    cited = sorted({numbers[k] for k in finding.citations if k in numbers})
    marks = f" [{', '.join(map(str, cited))}]" if cited else ""
    lines = [
        f"**{finding.indicator.capitalize()} · {finding.id}.** {markdown(finding.detail.strip())}{marks}"
    ]
    again = []
    if finding.missing and any(item not in listed for item in finding.evidence):
        lines.append(ON_RECORD)
    for item in finding.evidence:
        if item in listed:
            again.append(_note(item.label))
            continue
        listed.add(item)
        lines.append(_evidence_line(item))
    if again:
        lines.append(f"- Also uses: {', '.join(dict.fromkeys(again))} (above)")
    return "\n".join(lines)


def _detail(
    ranked: list[Finding],
    numbers: Mapping[str, int],
    record: PatientRecord,
    not_checked: Mapping[str, str],
    order_notes: Sequence[str] = (),
) -> str:
    """The findings from the most serious down, then what was missing, unreadable or not checked.

    The sources are the card's numbered ``links``; a finding names them by number.
    """
    listed: set[Evidence] = set()
    parts = [_finding_markdown(f, numbers, listed) for f in ranked]
    unusable = record.skipped
    if order_notes:  # said once on every card (rules.md v3 Card contract)
        parts.append("**About this order:** " + " ".join(map(_note, order_notes)))
    missing = list(dict.fromkeys(m for f in ranked for m in f.missing))
    if missing:
        parts.append("**Not found in the record:** " + "; ".join(map(_note, missing)) + ".")
    if unusable:  # resources that could not be read; lab units are named by the rules that read them
        count = f"{len(unusable)} item{'' if len(unusable) == 1 else 's'}"
        parts.append(f"**Left out:** {count} of the record, named with the reason under {WHERE}.")
    if not_checked:
        parts.append(
            "**Not checked:** "
            + "; ".join(f"{_note(what)}: {_note(why)}" for what, why in not_checked.items())
            + "."
        )
    if where := _where_in_the_record(ranked, unusable):
        parts.append(where)
    if numbers:
        parts.append("**Sources:** the numbered links below.")
    return "\n\n".join(parts)


def _where_in_the_record(ranked: Sequence[Finding], unusable: Sequence[Unusable]) -> str:
    """The resource ids the card's data came from, each once, and what was left out (unreadable, cut), why.

    Kept out of the clinician's sentences (an id is for finding the entry in the chart, not for reading);
    said once, at the end: ``Where in the record: hCG: Observation/hcg-1; Condition: Condition/preg-1.``
    """
    labels: dict[str, list[str]] = {}
    for finding in ranked:
        for item in finding.evidence:
            if item.reference:
                labels.setdefault(item.reference, [])
                if item.label not in labels[item.reference]:
                    labels[item.reference].append(item.label)
    named = [f"{', '.join(map(_note, names))}: {_note(ref)}" for ref, names in labels.items()]
    if unusable:
        left_out = [f"{_note(u.reference)}: {_note(u.reason)}" for u in unusable[:MAX_NAMED_SKIPPED]]
        if len(unusable) > MAX_NAMED_SKIPPED:
            left_out.append(f"and {len(unusable) - MAX_NAMED_SKIPPED} more")
        named.append("left out: " + "; ".join(left_out))
    return f"**{WHERE}:** " + "; ".join(named) + "." if named else ""


def override_reason_display(code: str | None, system: str | None = None) -> str | None:
    """The display of one of the cards' override reasons, for feedback that names it by code alone."""
    if system not in (None, NON_ADHERENCE):
        return None
    return dict(OVERRIDE_REASONS).get(code or "")


def _actions(
    suggestion: OrderLabs | StopMedication, patient_ref: str | None, stored: Mapping[str, Mapping]
) -> list[dict]:
    if isinstance(suggestion, OrderLabs):
        return [
            {
                "type": "create",
                "description": plain(f"Order {display} (LOINC {code})"),
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
                "description": plain(f"Remove the draft order for {shorten(draft.name)}"),
                "resourceId": draft.reference,
            }
            for draft in (medication, *suggestion.together)
            if draft.is_draft
        ]
    resource = stored.get(medication.reference)
    if resource is None or suggestion.drafts_only or nested_deeper_than(resource, MAX_RESOURCE_DEPTH):
        return []  # an order too deep to send back whole gets no update; the card still says to stop it
    reason = {"statusReason": {"text": suggestion.reason}} if suggestion.reason else {}  # why it was stopped
    return [
        {
            "type": "update",
            "description": plain(
                f"Stop {shorten(medication.name)}" + (f" ({suggestion.reason})" if suggestion.reason else "")
            ),
            "resource": {**resource, "status": "stopped", **reason},
        }
    ]


def build_cards(
    findings: list[Finding],
    record: PatientRecord,
    settings: Mapping[str, Any],
    stored_orders: Mapping[str, Mapping] | None = None,
    not_checked: Mapping[str, str] | None = None,
    order_notes: Sequence[str] = (),
) -> list[dict]:
    """One card per topic with findings, in catalog topic order; each card's findings most serious first.

    ``order_notes``: what every card says once about the order the answer is about (recognised by its name,
    an unresolved medication reference, an earlier order not found)."""
    cards_settings = settings.get("cards") or {}
    patient_ref = f"Patient/{record.patient.id}" if record.patient and record.patient.id else None
    cards = []
    for topic in TOPICS:
        ranked = most_serious_first(f for f in findings if f.topic == topic)
        if not ranked:
            continue
        numbers = citation_numbers(ranked)
        card: dict[str, Any] = {
            "summary": card_summary(ranked[0], len(ranked) - 1),
            "indicator": ranked[0].indicator,
            "detail": _detail(ranked, numbers, record, not_checked or {}, order_notes),
            "source": {
                "label": cards_settings.get("source_label", "Tacrolimus CDS"),
                **({"url": cards_settings["source_url"]} if cards_settings.get("source_url") else {}),
                "topic": {"system": TOPIC_SYSTEM, "code": topic, "display": TOPIC_DISPLAY[topic]},
            },
            "overrideReasons": [
                {"system": NON_ADHERENCE, "code": c, "display": d} for c, d in OVERRIDE_REASONS
            ],
            "extension": {FINDINGS_EXTENSION: [{"id": f.id, "indicator": f.indicator} for f in ranked]},
        }
        suggestions = []
        for finding in ranked:
            for suggestion in finding.suggestions:
                actions = _actions(suggestion, patient_ref, stored_orders or {})
                if actions:
                    item = {"label": plain(shorten(suggestion.label, NOTE_LIMIT)), "actions": actions}
                    suggestions.append(
                        {
                            "uuid": _stable_uuid([topic, finding.id, item]),
                            **item,
                            # the finding this suggestion answers: feedback on it counts for that finding
                            "extension": {
                                FINDINGS_EXTENSION: [{"id": finding.id, "indicator": finding.indicator}]
                            },
                        }
                    )
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        if numbers:
            targets = cards_settings.get("links") or {}  # an administrator's own link for a source
            card["links"] = [
                {
                    "label": f"[{number}] {CITATIONS[key][0]}",
                    "url": targets.get(key, CITATIONS[key][1]),
                    "type": "absolute",
                }
                for key, number in numbers.items()
            ]
        cards.append({"uuid": _stable_uuid(card), **card})
    return cards
