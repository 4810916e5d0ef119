"""Plain data passed into and out of the rules: no Flask, no HTTP, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.record import Medication, PatientRecord

INDICATOR_RANK = {"info": 0, "warning": 1, "critical": 2}

TOPICS = ("pregnancy", "salvage-context", "nephrotoxicity-monitoring")


@dataclass(frozen=True)
class Evidence:
    """One datum a finding used; the card shows ``Creatinine: 1.6 mg/dL on 2026-11-02 (Observation/cr-3)``."""

    label: str
    value: str
    when: datetime | None = None
    reference: str | None = None


@dataclass(frozen=True)
class OrderLabs:
    """Suggest ordering these labs: each a (LOINC code, display) pair."""

    labs: tuple[tuple[str, str], ...]
    label: str


@dataclass(frozen=True)
class StopMedication:
    """Suggest stopping an order: a draft is deleted, a stored order is updated to ``stopped``.

    ``reason`` becomes the stopped order's ``statusReason.text``; ``drafts_only`` offers the suggestion only
    when the order is a draft of this session (N9, N10, N12: which of two stored drugs to stop is a choice
    the card leaves to the clinician). ``together``: more drafts the same suggestion deletes (one regimen
    ordered in several drafts is removed at once, N17).
    """

    medication: Medication
    label: str
    reason: str = ""
    drafts_only: bool = False
    together: tuple[Medication, ...] = ()


Suggestion = OrderLabs | StopMedication


@dataclass(frozen=True)
class Finding:
    """A rule that fired. ``id`` is the catalog id (P1...N15) that tests, feedback and configuration use."""

    id: str
    topic: str
    indicator: str
    summary: str
    """One clause naming the problem (< 120 chars); the card's summary is the most serious finding's."""
    detail: str
    """Plain sentence(s): what was found, why it matters, what to do. Rules never write Markdown: the card
    escapes all of a finding's text (``card_text``), so a drug name quoted here stays text."""
    citations: tuple[str, ...]
    """Keys of ``cds_service.rules.citations.CITATIONS``."""
    evidence: tuple[Evidence, ...] = ()
    missing: tuple[str, ...] = ()
    """Data that was looked for and not found, in words: ``"no potassium in the last 30 days"``."""
    suggestions: tuple[Suggestion, ...] = ()


@dataclass(frozen=True)
class Quiet:
    """A rule that did not fire, and why: what ``cds-service explain`` prints."""

    id: str
    reason: str


@dataclass(frozen=True)
class RuleInput:
    record: PatientRecord
    orders: tuple[Medication, ...]
    """The tacrolimus orders the request is about: the triggering drafts (in ``record.medications`` with
    ``is_trigger``), or for patient-view the active stored order (with ``continuing=True``)."""
    thresholds: Mapping[str, Any]
    scope: str = "lupus"
    continuing: bool = False
    """Treat the order as continuing therapy whatever the record says (patient-view: the active order)."""
    only: frozenset[str] | None = None
    """Run only these finding ids (a service spec's ``findings``); None runs the whole catalog."""
    service_kind: str = "order"
    """The kind of service asking (``rules.registry.ORDER``, ``MONITORING``, ``CO_PRESCRIBING``): which of a
    declaration's wording variants speaks to its clinician."""

    @property
    def now(self) -> datetime:
        return self.record.now


@dataclass
class Evaluation:
    findings: list[Finding] = field(default_factory=list)
    quiet: list[Quiet] = field(default_factory=list)
