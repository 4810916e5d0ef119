"""N19 of rule catalog version 3: a live vaccine beside tacrolimus.

A live attenuated vaccine can cause the disease it protects from in an immunosuppressed patient, and the
tacrolimus and voclosporin labels say to avoid them. The finding reads three things (rules.md v3 N19;
clinical.md §6.2; interpretations 83-92): a live vaccine ordered (a MedicationRequest or ServiceRequest
drafted in ``draftOrders``, or a stored active or on-hold order) while tacrolimus is active or being
started; for a new start, a live vaccine given in the 28 days before; on continuing therapy, one given since
tacrolimus began and in the last 42 days. In the co-prescribing services the drafted vaccine is "the
order" and only it is discussed.
"""

from __future__ import annotations

from datetime import datetime

from cds_service.record import Immunization, Medication, PatientRecord
from cds_service.rules.common import (
    active_orders,
    capital,
    continuing_because,
    day,
    exposure,
    finding,
    medication_evidence,
    names,
    num,
    quiet,
    threshold,
    unavailable,
    window_start,
    words,
)
from cds_service.rules.model import Evidence, Finding, Quiet, RuleInput
from cds_service.rules.monitoring import MONITORING, TACROLIMUS, remove_drafts
from cds_service.rules.registry import CO_PRESCRIBING, SERVICE_KINDS, Wording, setting

LIVE_VACCINES = "live-vaccines"
CITED = ("prograf-label", "lupkynis-label", "idsa-2013-vaccination", "acr-2022-vaccination")

AVOID = (
    "Live vaccines are to be avoided during immunosuppression (tacrolimus and voclosporin labels): the "
    "vaccine strain can cause the infection it protects from."
)
NEW_START = (
    "Give a needed live vaccine at least 4 weeks before immunosuppression and not within 2 weeks of starting "
    "it (IDSA 2013): remove the vaccine order, or give the vaccine first and start tacrolimus 4 weeks later "
    "where the nephritis allows. A recombinant or inactivated vaccine needs no such gap (recombinant zoster, "
    "Shingrix; inactivated influenza)."
)
CONTINUING = (
    "Remove the vaccine order and choose a recombinant or inactivated vaccine where one exists (recombinant "
    "zoster, Shingrix; inactivated influenza); where only a live vaccine will do, plan it with the "
    "clinicians managing the immunosuppression (ACR 2022)."
)
CO_PRESCRIBING_WORDS = (
    "This patient takes tacrolimus, an immunosuppressant: remove this live vaccine order and choose a "
    "recombinant or inactivated vaccine where one exists (recombinant zoster, Shingrix; inactivated "
    "influenza); where only a live vaccine will do, plan it with the tacrolimus prescriber."
)
GIVEN_BEFORE_START = (
    "Live vaccines are advised at least 4 weeks before immunosuppression and not within 2 weeks of starting "
    "it (IDSA 2013): where the nephritis allows, start tacrolimus 4 weeks after the vaccine; otherwise "
    "watch for infection by the vaccine strain."
)
GIVEN_ON_TACROLIMUS = (
    "Watch for infection by the vaccine strain (fever, rash or vesicles, diarrhoea after a rotavirus or "
    "typhoid vaccine) and treat it early; record why a live vaccine was given."
)


def _ordered(inp: RuleInput) -> list[Medication]:
    """Live-vaccine orders: drafts of this session and stored active or on-hold orders; in the co-prescribing
    services the drafted vaccine is "the order" itself (interpretation 83)."""
    found = active_orders(inp.record, LIVE_VACCINES)
    found += [o for o in inp.orders if LIVE_VACCINES in o.concepts and o not in found]
    return found


def _given(record: PatientRecord, since: datetime, not_before: datetime | None = None) -> list[Immunization]:
    """Live vaccines given from ``since`` (and from ``not_before``) to now, newest first."""
    start = max(since, not_before) if not_before is not None else since
    return [
        i for i in record.immunizations if LIVE_VACCINES in i.concepts and start <= i.occurred <= record.now
    ]


def _days_ago(record: PatientRecord, when: datetime) -> str:
    days = (record.now.date() - when.date()).days
    return "today" if days == 0 else f"{days} day{'s' if days != 1 else ''} ago"


def _evidence(i: Immunization) -> Evidence:
    return Evidence(i.name, "live vaccine given", i.occurred, i.reference)


def _unreadable(record: PatientRecord) -> list[str]:
    """Vaccines given whose date could not be read (one might be a live vaccine given last week)."""
    return [f"{u.reference}: {u.reason}" for u in record.skipped if u.reference.startswith("Immunization/")]


def _tacrolimus_named(inp: RuleInput) -> str:
    """The tacrolimus being taken or started, for the clinician ordering the vaccine."""
    taken = [m for m in inp.record.active_medications("tacrolimus") if not m.is_draft] or [
        m for m in inp.record.active_medications("tacrolimus")
    ]
    if not taken:
        return "tacrolimus"
    first = taken[0]
    since = f", since {day(first.authored)}" if first.authored and not first.is_draft else ""
    return f"{first.name} ({first.reference}{since})"


def n19_live_vaccine(inp: RuleInput) -> Finding | Quiet:
    """A live vaccine ordered with tacrolimus (warning); given ≤ ``live_vaccine_before_start_days`` before a
    new start (info); given on tacrolimus ≤ ``live_vaccine_on_tacrolimus_days`` ago (warning)."""
    record = inp.record
    if not inp.orders and not record.active_medications("tacrolimus"):
        return quiet("N19", "no tacrolimus active or being started")
    ordered = _ordered(inp)
    continuing = continuing_because(inp)
    co_prescribing = inp.service_kind == CO_PRESCRIBING
    before_start: list[Immunization] = []
    on_tacrolimus: list[Immunization] = []
    if co_prescribing:
        pass  # only the watched draft is discussed (rules.md v3 § The other prescriber)
    elif continuing is None:
        days = threshold(inp, "live_vaccine_before_start_days")
        before_start = _given(record, window_start(inp.now, days))
    else:
        began = exposure(record, "tacrolimus").start
        since = window_start(inp.now, threshold(inp, "live_vaccine_on_tacrolimus_days"))
        not_before = datetime.combine(began, since.timetz()) if began is not None else None
        on_tacrolimus = _given(record, since, not_before)
    missing = unavailable(record, "MedicationRequest") + ([] if co_prescribing else _gaps(record))
    if not ordered and not before_start and not on_tacrolimus:
        return quiet("N19", _quiet_reason(inp, continuing, co_prescribing), missing)

    sentences: list[str] = []
    if ordered:
        state = "being started" if continuing is None else "taken"
        verb = "is" if len(ordered) == 1 else "are"
        if co_prescribing:
            sentences.append(
                f"{capital(names(ordered))} {verb} a live vaccine; this patient takes "
                f"{_tacrolimus_named(inp)}. {AVOID} {CO_PRESCRIBING_WORDS}"
            )
        else:
            advice = NEW_START if continuing is None else CONTINUING
            sentences.append(
                f"{capital(names(ordered))} {verb} a live vaccine ordered while tacrolimus is {state}. "
                f"{AVOID} {advice}"
            )
    if before_start:
        given = words(
            [f"{i.name} on {day(i.occurred)} ({_days_ago(record, i.occurred)})" for i in before_start]
        )
        sentences.append(
            f"A live vaccine was given before this tacrolimus start: {given}. {GIVEN_BEFORE_START}"
        )
    if on_tacrolimus:
        given = words(
            [f"{i.name} on {day(i.occurred)} ({_days_ago(record, i.occurred)})" for i in on_tacrolimus]
        )
        sentences.append(f"A live vaccine was given while on tacrolimus: {given}. {GIVEN_ON_TACROLIMUS}")
    warning = bool(ordered or on_tacrolimus)
    return finding(
        "N19",
        "warning" if warning else "info",
        _summary(inp, ordered, before_start, on_tacrolimus, continuing),
        " ".join(sentences),
        CITED,
        evidence=[*(medication_evidence(o) for o in ordered), *map(_evidence, before_start + on_tacrolimus)],
        missing=missing,
        suggestions=remove_drafts(ordered, "Live vaccine with tacrolimus"),
    )


def _gaps(record: PatientRecord) -> list[str]:
    return unavailable(record, "Immunization") + _unreadable(record)


def _short(name: str) -> str:
    """A vaccine's name for the summary: without the by-name note (the detail says it) and, when long,
    without what follows its first parenthesis ("Zostavax (zoster vaccine live) injection" -> "Zostavax")."""
    name = name.split(" (recognised by its name")[0]
    return name.split(" (")[0] if len(name) > 30 and not name.startswith("(") else name


def _summary(
    inp: RuleInput,
    ordered: list[Medication],
    before_start: list[Immunization],
    on_tacrolimus: list[Immunization],
    continuing: str | None,
) -> str:
    if ordered:
        where = "as tacrolimus is started" if continuing is None else "for a patient on tacrolimus"
        return f"Live vaccine ({_short(ordered[0].name)}) ordered {where}: avoid during immunosuppression"
    if on_tacrolimus:
        first = on_tacrolimus[0]
        ago = _days_ago(inp.record, first.occurred)
        watch = "watch for vaccine-strain infection"
        return f"Live vaccine ({_short(first.name)}) given {ago} on tacrolimus: {watch}"
    first = before_start[0]
    ago = _days_ago(inp.record, first.occurred)
    return f"Live vaccine ({_short(first.name)}) given {ago}, before this tacrolimus start"


def _quiet_reason(inp: RuleInput, continuing: str | None, co_prescribing: bool) -> str:
    reason = "no live vaccine drafted or ordered"
    if co_prescribing:
        return reason
    if continuing is None:
        days = num(threshold(inp, "live_vaccine_before_start_days"))
        return f"{reason}, and none given in the {days} days before this new start"
    days = num(threshold(inp, "live_vaccine_on_tacrolimus_days"))
    return f"{reason}, and none given on tacrolimus in the last {days} days"


DECLARATIONS = (
    MONITORING.declare(
        "N19",
        n19_live_vaccine,
        ("warning", "info"),
        "Live vaccine with tacrolimus",
        settings=(
            setting(
                "live_vaccine_before_start_days",
                "integer",
                0,
                365,
                "N19: a live vaccine given within this many days before a new tacrolimus start (info)",
            ),
            setting(
                "live_vaccine_on_tacrolimus_days",
                "integer",
                0,
                365,
                "N19: a live vaccine given on tacrolimus within this many days (warning)",
            ),
        ),
        citations=CITED,
        runs_in=frozenset(SERVICE_KINDS),
        needs={
            **TACROLIMUS,
            "MedicationRequest": ("tacrolimus", LIVE_VACCINES),
            "Immunization": (LIVE_VACCINES,),
        },
        wording=Wording(
            new_start=f"{AVOID} {NEW_START}",
            continuing=f"{AVOID} {CONTINUING}",
            co_prescribing=CO_PRESCRIBING_WORDS,
        ),
    ),
)
