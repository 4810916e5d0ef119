"""Two monitoring findings of rule catalog version 3: an extended-release order given more than once a day
(N18) and nirmatrelvir/ritonavir (Paxlovid) beside tacrolimus (N21).

Both are about a dose that silently doubles or multiplies exposure: an immediate-release regimen transcribed
onto a once-daily product, or a 5-day ritonavir course whose CYP3A inhibition outlasts it. rules.md v3 §
Nephrotoxicity and safety monitoring; clinical.md §6.2; interpretations 57-62.
"""

from __future__ import annotations

from datetime import date, timedelta

from cds_service.dosage import timings
from cds_service.drug_forms import EXTENDED_RELEASE_CAPSULE, EXTENDED_RELEASE_TABLET
from cds_service.record import Medication
from cds_service.rules.common import (
    active_orders,
    capital,
    continuing_because,
    day,
    finding,
    medication_evidence,
    names,
    num,
    quiet,
    threshold,
    unavailable,
    window_start,
)
from cds_service.rules.model import Finding, OrderLabs, Quiet, RuleInput, StopMedication
from cds_service.rules.monitoring import MONITORING, NIRMATRELVIR_RITONAVIR, TACROLIMUS, labs
from cds_service.rules.registry import setting

EXTENDED_RELEASE = (EXTENDED_RELEASE_TABLET, EXTENDED_RELEASE_CAPSULE)
PAXLOVID = NIRMATRELVIR_RITONAVIR
"""The drug class of nirmatrelvir/ritonavir: recognised by name; its pack codes are partial (clinical.md
§6.6) and ship in ``valuesets/unverified/``."""
COURSE_DAYS = 5
"""A Paxlovid order with no end information counts as the 5-day course from ``authoredOn`` (rules.md v3)."""
TACROLIMUS_LEVEL = ("11253-2", "Tacrolimus [Mass/volume] in Blood")


# --- N18 ----------------------------------------------------------------------------------------------------
def _times_a_day(order: Medication, split: bool = False) -> str:
    if split:
        return "at more than one time of day"
    times = order.administrations_per_day or 0
    return "twice a day" if times == 2 else f"{num(times)} times a day"


def split_over_the_day(extended: list[Medication]) -> list[Medication]:
    """Drafts of one extended-release class, each once a day or less, whose timings differ: one regimen whose
    doses fall at more than one time of day (3 mg every morning + 2 mg every evening; interpretation 68)."""
    found: list[Medication] = []
    for form in EXTENDED_RELEASE:
        regimen = [o for o in extended if o.is_draft and o.formulation == form]
        daily = [
            o for o in regimen if o.administrations_per_day is not None and o.administrations_per_day <= 1
        ]
        if len(daily) > 1 and len({timing for o in daily for timing in timings(o.dosing)}) > 1:
            found += daily
    return found


def n18_extended_release_more_than_daily(inp: RuleInput) -> Finding | Quiet:
    """An extended-release order (the triggering draft(s), or in patient-view the active order) given more
    than once a day: a draft on its own timing (interpretation 58), or a regimen of once-daily drafts at
    different times of day (interpretation 68); an order whose formulation or timing cannot be told is not
    evaluated, and the quiet reason says so (interpretation 57)."""
    extended = [o for o in inp.orders if o.formulation in EXTENDED_RELEASE]
    if not extended:
        told = sorted({o.formulation or "unknown" for o in inp.orders}) or ["no tacrolimus order"]
        return quiet("N18", f"no extended-release tacrolimus order (formulation: {', '.join(told)})")
    untimed = [o for o in extended if o.administrations_per_day is None]
    each = [o for o in extended if (o.administrations_per_day or 0) > 1]
    split = split_over_the_day(extended)
    often = [*each, *split]
    if not often:
        reason = "the extended-release order is given once a day or less"
        if untimed:
            reason = f"how often {names(untimed)} is given could not be read from dosageInstruction.timing"
        return quiet("N18", reason)
    first = often[0]
    how = _times_a_day(first, not each)
    if inp.continuing or not first.is_draft:
        action = (
            "Check the product and the total daily dose with the patient and the pharmacy: if the patient "
            "has been taking it more than once a day, check a trough now."
        )
    else:
        action = (
            "Check the product and the total daily dose before signing: re-enter it as one morning dose, "
            "or order the immediate-release product if a twice-daily regimen was meant."
        )
        if continuing_because(inp):
            action += " If the patient already takes it this way, check a trough."
    return finding(
        "N18",
        "warning",
        f"{first.name}: a once-daily product ordered {how}",
        f"{capital(names(often))} {'is' if len(often) == 1 else 'are'} extended-release tacrolimus ordered "
        f"{how}. Extended-release tacrolimus (Envarsus XR, Astagraf XL) is taken once daily, "
        "in the morning; twice daily usually means an immediate-release regimen transcribed onto an "
        f"extended-release product, and doubles exposure. {action}",
        ("envarsus-label", "prograf-label"),
        evidence=[medication_evidence(o) for o in often],
        suggestions=[
            StopMedication(
                o,
                f"Remove the draft {o.name} order (re-enter it once daily)",
                reason="Extended-release tacrolimus ordered more than once a day",
                drafts_only=True,
            )
            for o in each
            if o.is_draft
        ]
        + [
            StopMedication(
                split[0],
                f"Remove the draft {names(split)} orders (re-enter them as one daily dose)",
                reason="Extended-release tacrolimus ordered at more than one time of day",
                drafts_only=True,
                together=tuple(split[1:]),
            )
            for _ in split[:1]
        ],
    )


# --- N21 ----------------------------------------------------------------------------------------------------
def exposure_end(order: Medication) -> date | None:
    """The last day of a stored order's exposure; an order that carries no end (its exposure ends on the
    day it was authored) counts as the 5-day course (interpretation 60)."""
    if order.exposure is None:
        return None
    start, end = order.exposure.start.date(), order.exposure.end.date()
    return end if end > start else start + timedelta(days=COURSE_DAYS)


def recent_paxlovid(inp: RuleInput) -> tuple[list[Medication], list[Medication]]:
    """The Paxlovid orders that count: (drafted, active or on hold whatever their date; ended recently)."""
    record = inp.record
    current = active_orders(record, PAXLOVID)
    since = window_start(inp.now, threshold(inp, "paxlovid_window_days")).date()
    current_ids = {m.id for m in current}
    ended = [
        m
        for m in record.exposures(PAXLOVID)
        if m.id not in current_ids and (end := exposure_end(m)) is not None and end >= since
    ]
    return current, ended


def _state(order: Medication) -> str:
    if order.is_draft:
        return "drafted now"
    if order.active:
        return f"{order.status} since {day(order.authored)}"
    return f"{order.status}, its course ending {day(exposure_end(order))}"


def n21_paxlovid(inp: RuleInput) -> Finding | Quiet:
    """Nirmatrelvir/ritonavir drafted, active or on hold (whatever its date), or whose exposure ended within
    ``paxlovid_window_days``; shown instead of N9 for it (interpretation 61)."""
    current, ended = recent_paxlovid(inp)
    orders = [*current, *ended]
    if not orders:
        days = threshold(inp, "paxlovid_window_days")
        return quiet(
            "N21",
            "no nirmatrelvir/ritonavir (Paxlovid) order drafted, active or ended in the last "
            f"{num(days)} days",
            unavailable(inp.record, "MedicationRequest"),
        )
    listed = "; ".join(f"{o.name} ({_state(o)})" for o in orders)
    drafts = [o for o in orders if o.is_draft]
    continuing = inp.continuing or bool(ended) or not drafts
    advice = (
        "Transplant services hold tacrolimus for the 5-day course and check a level on about day 3 and again "
        "on days 6–8 before restarting it; the interaction lasts for days after the last dose."
        if continuing
        else "Choose another COVID-19 treatment if levels cannot be watched closely; if it goes ahead, "
        "transplant services hold tacrolimus for the 5-day course and check a level on about day 3 and "
        "again on days 6–8 before restarting it."
    )
    suggestions: list[OrderLabs | StopMedication] = [
        OrderLabs((TACROLIMUS_LEVEL,), "Order a tacrolimus level (about day 3 of the course)")
    ]
    suggestions += [
        StopMedication(
            o,
            f"Remove the draft {o.name} order: choose another COVID-19 treatment",
            reason="Nirmatrelvir/ritonavir with tacrolimus",
            drafts_only=True,
        )
        for o in drafts
    ]
    return finding(
        "N21",
        "critical",
        "Nirmatrelvir/ritonavir (Paxlovid) with tacrolimus: levels can rise to toxic",
        f"{capital(listed)}. Ritonavir blocks tacrolimus metabolism: levels can rise to toxic within days "
        "(acute kidney injury, hyperkalaemia). The label advises against the combination unless levels can "
        f"be watched closely; it is contraindicated with voclosporin. {advice}",
        ("wang-2022-paxlovid", "prograf-label", "lupkynis-label"),
        evidence=[medication_evidence(o) for o in orders],
        missing=unavailable(inp.record, "MedicationRequest"),
        suggestions=suggestions,
    )


DECLARATIONS = (
    MONITORING.declare(
        "N18",
        n18_extended_release_more_than_daily,
        ("warning",),
        "Extended-release tacrolimus more than once a day",
        citations=("envarsus-label", "prograf-label"),
        needs=TACROLIMUS,
    ),
    MONITORING.declare(
        "N21",
        n21_paxlovid,
        ("critical",),
        "Nirmatrelvir/ritonavir (Paxlovid) with tacrolimus",
        settings=(
            setting(
                "paxlovid_window_days",
                "integer",
                0,
                90,
                "N21: a nirmatrelvir/ritonavir course that ended within this many days still counts",
            ),
        ),
        citations=("wang-2022-paxlovid", "prograf-label", "lupkynis-label"),
        needs=labs("tacrolimus-level", drugs=(PAXLOVID,)),
        course=("tacrolimus-level",),
    ),
)
