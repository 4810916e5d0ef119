"""Low-dose aspirin in a lupus pregnancy (P8, rule catalog version 3), shown on the ``pregnancy`` card.

SLE and kidney disease are high-risk factors for pre-eclampsia, and low-dose aspirin from 12 weeks lowers that
risk; over-the-counter aspirin is often missing from the medication list, so a home-medicine statement counts
as taking it (rules.md v3 § Reading the record, "an order or statement"). The gestational age comes from the
record (§ Pregnancy and lactation status, Gestational age). rules.md v3 P8; clinical.md §6.2;
interpretations 102-106.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds_service.record import PatientRecord
from cds_service.rules.common import (
    PREGNANCY_NEEDS,
    capital,
    day,
    finding,
    has_lupus_nephritis,
    lab_evidence,
    merge_needs,
    num,
    pregnancy_status,
    quiet,
    threshold,
    unavailable,
    unusable_in,
    words,
)
from cds_service.rules.model import Evidence, Finding, Quiet, RuleInput
from cds_service.rules.pregnancy import PREGNANCY, PREGNANCY_SETTINGS
from cds_service.rules.registry import ORDER, pair_setting

ASPIRIN = "aspirin"
FULL_TERM_DAYS = 280
"""An estimated delivery date is 280 days (40 weeks) after the start of gestation."""
LONGEST_GESTATION_DAYS = 44 * 7
"""A gestational age advanced past 44 weeks belongs to an earlier pregnancy and is not used (interpretation
103)."""


@dataclass(frozen=True)
class GestationalAge:
    """Gestational age today, in days, and what it was worked out from."""

    days: int
    source: str
    evidence: Evidence

    @property
    def text(self) -> str:
        weeks, days = divmod(self.days, 7)
        return f"{weeks} weeks {days} days ({self.source})"


def _from_observation(record: PatientRecord, today: date) -> tuple[GestationalAge | None, list[str]]:
    """The newest gestational-age Observation advanced to today (interpretation 103)."""
    series = record.lab("gestational-age")
    gaps: list[str] = []
    for value in series.values():
        if value.value is None:
            continue
        days = round(value.value) + (today - value.when.date()).days
        if days > LONGEST_GESTATION_DAYS:
            gaps.append(
                f"gestational age {value.shown()} on {day(value.when)} would be {days // 7} weeks today: "
                "from an earlier pregnancy, not used"
            )
            break
        said = f"{value.shown()} on {day(value.when)}, advanced to today"
        return GestationalAge(days, said, lab_evidence("Gestational age", value)), gaps
    return None, gaps + unusable_in(series, None)


def _from_due_date(record: PatientRecord, today: date) -> GestationalAge | None:
    """280 days minus the days to the newest estimated delivery date."""
    edd = record.lab("edd").newest()
    if edd is None:
        return None
    try:
        due = date.fromisoformat((edd.answer or edd.original or "")[:10])
    except ValueError:
        return None
    days = FULL_TERM_DAYS - (due - today).days
    return GestationalAge(days, f"estimated delivery date {due.isoformat()}", lab_evidence("EDD", edd))


def gestational_age(record: PatientRecord) -> tuple[GestationalAge | None, list[str]]:
    """Gestational age today from a gestational-age Observation, else the estimated delivery date; None when
    unknown, with what was missing (interpretations 103, 104)."""
    today = record.now.date()
    found, gaps = _from_observation(record, today)
    if found is None:
        found = _from_due_date(record, today)
    if found is None:
        gaps.append("gestational age unknown: no gestational-age result or estimated delivery date")
    return found, gaps


def p8_no_aspirin(inp: RuleInput) -> Finding | Quiet:
    """Pregnant with SLE or LN, gestational age in [12, 28) weeks or unknown, no active aspirin order or
    statement and no aspirin allergy (interpretations 102-106)."""
    record = inp.record
    status = pregnancy_status(record, inp.thresholds)
    if not status.present:
        return quiet("P8", status.why_not("pregnancy"), status.missing)
    if not (record.has_condition("lupus") or has_lupus_nephritis(record)):
        return quiet("P8", "pregnant, but no active SLE or lupus nephritis condition", status.missing)
    low, high = threshold(inp, "aspirin_gestation_weeks")
    age, gaps = gestational_age(record)
    if age is not None and not low * 7 <= age.days < high * 7:
        return quiet(
            "P8",
            f"gestational age {age.text} is outside {num(low)}–{num(high)} weeks, when aspirin is started",
        )
    taking = record.taking(ASPIRIN)
    if taking:
        return quiet("P8", f"aspirin is taken: {words([m.name for m in taking])}")
    allergies = record.active_allergies(ASPIRIN)
    if allergies:
        return quiet("P8", f"an aspirin allergy is recorded: {words([a.name for a in allergies])}")
    when = f"gestational age {age.text}" if age else "gestational age unknown"
    return finding(
        "P8",
        "info",
        "Pregnant with lupus and no low-dose aspirin on record: 81 mg daily from 12 weeks lowers "
        "pre-eclampsia risk",
        f"Pregnant ({status.text}; {when}), with no active aspirin order or home-medicine statement and no "
        "aspirin allergy on record. SLE and kidney disease are high-risk factors for pre-eclampsia: USPSTF "
        "2021 recommends low-dose aspirin (81 mg/day) after 12 weeks of gestation, ideally before 16 weeks, "
        f"continued to delivery; ACOG starts it between {num(low)} and {num(high)} weeks, and ACR 2020 "
        "advises it in SLE pregnancies. If she already takes over-the-counter aspirin, record it.",
        ("uspstf-2021-aspirin", "acog-743", "acr-2020-reproductive"),
        evidence=[*status.evidence, *([age.evidence] if age else [])],
        missing=[
            *status.missing,
            *(capital(g) for g in gaps),
            *unavailable(record, "MedicationRequest", "MedicationStatement", "AllergyIntolerance"),
        ],
    )


DECLARATIONS = (
    PREGNANCY.declare(
        "P8",
        p8_no_aspirin,
        ("info",),
        "Pregnant, no low-dose aspirin",
        settings=(
            pair_setting(
                "aspirin_gestation_weeks",
                "integer",
                0,
                45,
                "P8: [from, before) weeks of gestation in which aspirin is started (ACOG: 12 to 28); an "
                "unknown gestational age counts",
            ),
            *PREGNANCY_SETTINGS,
        ),
        citations=("acog-743", "acr-2020-reproductive", "uspstf-2021-aspirin"),
        runs_in=frozenset({ORDER}),  # info, and not for patient-view (clinical.md §6.2 P8)
        needs=merge_needs(
            PREGNANCY_NEEDS,
            {
                "Condition": ("lupus", "lupus-nephritis"),
                "Observation": ("gestational-age", "edd"),
                "MedicationRequest": ("tacrolimus", ASPIRIN),
                "MedicationStatement": (ASPIRIN,),
                "AllergyIntolerance": (ASPIRIN,),
            },
        ),
    ),
)
