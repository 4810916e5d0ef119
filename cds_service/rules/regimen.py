"""Regimen context (R1-R4, rule catalog version 3): what the rest of the regimen says at a tacrolimus start.

Shown on the ``salvage-context`` card, now titled "Regimen and salvage context": hydroxychloroquine missing
(R1, for every SLE or LN patient), mycophenolate missing from a class III/IV regimen (R2), and belimumab or
cyclophosphamide active or given recently (R3, R4), a combination outside the studied regimens. All four ask
"what else is she taking at this start?", so they speak only for a new start. R1 and R2 read "an order or
statement": a home or over-the-counter medicine recorded as an active MedicationStatement counts as taking it
(rules.md v3 § Reading the record; interpretation 93). rules.md v3 § Regimen and salvage context; clinical.md
§6.2; interpretations 93-106.
"""

from __future__ import annotations

from datetime import date

from cds_service.record import Condition, Medication, PatientRecord
from cds_service.rules.common import (
    PREGNANCY_NEEDS,
    capital,
    condition_evidence,
    day,
    exposure,
    finding,
    has_lupus_nephritis,
    lactation_status,
    medication_evidence,
    merge_needs,
    names,
    num,
    pregnancy_status,
    quiet,
    threshold,
    unavailable,
    window_start,
    words,
)
from cds_service.rules.model import Finding, Quiet, RuleInput
from cds_service.rules.pregnancy import BREASTFEEDING, BREASTFEEDING_READS, PREGNANCY_SETTINGS
from cds_service.rules.registry import NEW_START_ONLY, Setting, setting
from cds_service.rules.salvage import (
    LUPUS_NEPHRITIS_READS,
    SALVAGE,
    needs_lupus_nephritis,
    new_start_only,
)

HYDROXYCHLOROQUINE = "hydroxychloroquine"
"""The drug class of hydroxychloroquine and chloroquine (``valuesets/hydroxychloroquine.json``)."""
MEDICATIONS = ("MedicationRequest", "MedicationStatement")


def ended_on(order: Medication) -> date | None:
    """The last day of a stored order's exposure (rules.md § Data rules), None without one."""
    return order.exposure.end.date() if order.exposure is not None else None


def _taking_words(meds: list[Medication]) -> str:
    """``rituximab (active order)``, ``aspirin 81 mg (home medicine, statement)``."""
    return words(
        [f"{m.name} ({'home medicine, statement' if m.is_statement else m.status + ' order'})" for m in meds]
    )


# --- R1 -----------------------------------------------------------------------------------------------------
def _hydroxychloroquine_contraindications(record: PatientRecord) -> tuple[list, list[Condition]]:
    """A hydroxychloroquine or chloroquine allergy or intolerance, and Conditions that name the drug (its
    retinopathy, maculopathy or toxicity: interpretation 95)."""
    return record.active_allergies(HYDROXYCHLOROQUINE), record.confirmed_conditions(HYDROXYCHLOROQUINE)


@new_start_only
def r1_no_hydroxychloroquine(inp: RuleInput) -> Finding | Quiet:
    """SLE or LN, no active hydroxychloroquine or chloroquine order or statement, and no contraindication on
    record (interpretations 94, 95)."""
    record = inp.record
    if not (record.has_condition("lupus") or has_lupus_nephritis(record)):
        return quiet(
            "R1",
            "no active systemic lupus erythematosus or lupus nephritis condition",
            unavailable(record, "Condition"),
        )
    taking = record.taking(HYDROXYCHLOROQUINE)
    if taking:
        return quiet("R1", f"hydroxychloroquine or chloroquine is taken: {_taking_words(taking)}")
    allergies, conditions = _hydroxychloroquine_contraindications(record)
    if allergies or conditions:
        recorded = [a.name for a in allergies] + [c.name for c in conditions]
        return quiet("R1", f"a contraindication is recorded: {words(recorded)}")
    earlier = exposure(record, HYDROXYCHLOROQUINE)
    before = (
        f" {capital(names(earlier.orders))} ended on {day(ended_on(earlier.orders[-1]))}: if it was stopped "
        "for a reason (retinopathy, intolerance), record that reason."
        if earlier.any
        else ""
    )
    return finding(
        "R1",
        "info",
        "No hydroxychloroquine on record: KDIGO (1C) and EULAR advise it for every SLE and LN patient",
        "No active hydroxychloroquine or chloroquine order or home-medicine statement is on record, and no "
        "hydroxychloroquine allergy, intolerance or retinopathy. KDIGO 2024 (1C) and EULAR advise "
        "hydroxychloroquine for every patient with SLE or lupus nephritis unless it is contraindicated: it "
        "lowers flares and improves kidney outcomes. Dose at most 5 mg/kg/day of actual body weight, less "
        f"when eGFR is below 30.{before} If the patient takes it, record it; if it is contraindicated or not "
        "tolerated, recording that stops this reminder.",
        ("kdigo-2024", "eular-2019-ln", "eular-2023"),
        evidence=earlier.evidence(),
        missing=unavailable(record, *MEDICATIONS, "AllergyIntolerance"),
    )


# --- R2 -----------------------------------------------------------------------------------------------------
def _class_iii_iv(record: PatientRecord) -> tuple[list[Condition], str | None]:
    """The class III/IV Conditions, or None with the reason when the nephritis is pure class V
    (interpretation 97)."""
    proliferative = record.active_conditions("lupus-nephritis-class-iii-iv")
    if proliferative:
        return proliferative, None
    class_v = record.active_conditions("lupus-nephritis-class-v")
    if class_v:
        return [], f"{class_v[0].name} is on record and no class III or IV: pure membranous nephritis"
    return record.active_conditions("lupus-nephritis"), None


@needs_lupus_nephritis
@new_start_only
def r2_no_mycophenolate(inp: RuleInput) -> Finding | Quiet:
    """Class III/IV (or unclassified) LN, mycophenolate used before but not taken now, no allergy or
    intolerance, not pregnant or lactating (interpretations 96-98)."""
    record = inp.record
    conditions, pure_v = _class_iii_iv(record)
    if pure_v:
        return quiet("R2", pure_v)
    taking = record.taking("mycophenolate")
    if taking:
        return quiet("R2", f"mycophenolate is taken: {_taking_words(taking)}")
    earlier = exposure(record, "mycophenolate")
    if not earlier.any:
        return quiet(
            "R2",
            "no earlier mycophenolate exposure on record (S0 covers a patient never given it)",
            unavailable(record, "MedicationRequest"),
        )
    allergies = record.active_allergies("mycophenolate")
    if allergies:
        recorded = words([a.name for a in allergies])
        return quiet("R2", f"a mycophenolate allergy or intolerance is recorded: {recorded}")
    pregnancy = pregnancy_status(record, inp.thresholds)
    lactation = lactation_status(record, inp.thresholds)
    for status, what in ((pregnancy, "pregnancy"), (lactation, "breastfeeding")):
        if status.present:
            return quiet("R2", f"{what} is documented ({status.text}): mycophenolate is stopped on purpose")
    classes = "class III/IV" if record.active_conditions("lupus-nephritis-class-iii-iv") else "unclassified"
    last = ended_on(earlier.orders[-1])
    return finding(
        "R2",
        "info",
        f"Tacrolimus without mycophenolate for {classes} lupus nephritis: guideline CNI regimens are "
        "triple therapy",
        f"Mycophenolate was used from {day(earlier.start)} (last order ended {day(last)}), but no "
        "mycophenolate order or statement is active now, and no mycophenolate allergy or intolerance is "
        "recorded. Guideline calcineurin-inhibitor regimens for class III/IV lupus nephritis are triple "
        "therapy: a glucocorticoid, mycophenolate and the calcineurin inhibitor (KDIGO 2024, with eGFR above "
        "45; ACR 2024, favoured with proteinuria of 3 g/g or more). If tacrolimus replaces mycophenolate, "
        "record why (intolerance, adherence, pregnancy plans).",
        ("kdigo-2024", "acr-2024-ln"),
        evidence=[*(condition_evidence(c) for c in conditions), *earlier.evidence()],
        missing=[
            *unavailable(record, *MEDICATIONS, "AllergyIntolerance"),
            *pregnancy.missing,
            *lactation.missing,
        ],
    )


# --- R3, R4 -------------------------------------------------------------------------------------------------
def active_or_recent(inp: RuleInput, concept: str, window: str) -> tuple[list[Medication], list[Medication]]:
    """Orders and statements of ``concept`` taken now (active, on hold, drafted, or an active statement), and
    stored orders whose exposure ended within ``window`` days (interpretation 99)."""
    record = inp.record
    current = record.taking(concept)
    since = window_start(inp.now, threshold(inp, window)).date()
    current_ids = {m.id for m in current}
    ended = [
        m
        for m in record.exposures(concept)
        if m.id not in current_ids and (end := ended_on(m)) is not None and end >= since
    ]
    return current, ended


def _state(m: Medication) -> str:
    if m.is_statement:
        return "home medicine (statement)"
    if m.is_draft:
        return "drafted now"
    if m.active:
        return f"{m.status} since {day(m.authored)}"
    return f"{m.status}, last given {day(ended_on(m))}"


def _co_therapy(
    inp: RuleInput,
    rule_id: str,
    concept: str,
    window: str,
    summary: str,
    advice: str,
    citations: tuple[str, ...],
) -> Finding | Quiet:
    """R3/R4: ``concept`` taken now or given within ``window`` days, with the catalog's words."""
    current, ended = active_or_recent(inp, concept, window)
    meds = [*current, *ended]
    if not meds:
        return quiet(
            rule_id,
            f"no {concept} order or statement active, nor an order ended in the last "
            f"{num(threshold(inp, window))} days",
            unavailable(inp.record, *MEDICATIONS),
        )
    return finding(
        rule_id,
        "info",
        summary,
        capital("; ".join(f"{m.name} ({_state(m)})" for m in meds)) + f". {advice}",
        citations,
        evidence=[medication_evidence(m) for m in meds],
        missing=unavailable(inp.record, *MEDICATIONS),
    )


@needs_lupus_nephritis
@new_start_only
def r3_belimumab(inp: RuleInput) -> Finding | Quiet:
    """Belimumab active or given within ``belimumab_window_days`` (interpretations 99, 100)."""
    return _co_therapy(
        inp,
        "R3",
        "belimumab",
        "belimumab_window_days",
        "Belimumab is active: guidelines add belimumab or a CNI to mycophenolate and a steroid, not both",
        "Belimumab and a calcineurin inhibitor are each the third agent of guideline triple therapy "
        "(glucocorticoid and mycophenolate plus belimumab or a calcineurin inhibitor; ACR 2024, KDIGO 2024): "
        "the trials tested one or the other, so both together is outside the studied regimens. If both are "
        "intended, record why.",
        ("acr-2024-ln", "kdigo-2024"),
    )


@needs_lupus_nephritis
@new_start_only
def r4_cyclophosphamide(inp: RuleInput) -> Finding | Quiet:
    """Cyclophosphamide active or given within ``cyclophosphamide_window_days`` (interpretations 99, 101)."""
    return _co_therapy(
        inp,
        "R4",
        "cyclophosphamide",
        "cyclophosphamide_window_days",
        "Cyclophosphamide is active: no lupus nephritis guideline regimen pairs it with a CNI",
        "Guideline calcineurin-inhibitor regimens partner mycophenolate, and the voclosporin label says its "
        "safety with cyclophosphamide has not been established: cyclophosphamide plus a calcineurin "
        "inhibitor is outside the studied regimens. Check the plan, and record why tacrolimus is added to "
        "or replaces cyclophosphamide.",
        ("lupkynis-label", "kdigo-2024", "acr-2024-ln"),
    )


def _window(name: str, drug: str, finding_id: str) -> Setting:
    return setting(
        name,
        "integer",
        0,
        365,
        f"{finding_id}: a {drug} order whose exposure ended within this many days still counts as active",
    )


REGIMEN_CITATIONS = ("acr-2024-ln", "kdigo-2024")

DECLARATIONS = (
    SALVAGE.declare(
        "R1",
        r1_no_hydroxychloroquine,
        ("info",),
        "No hydroxychloroquine",
        citations=("eular-2019-ln", "eular-2023", "kdigo-2024"),
        runs_in=NEW_START_ONLY,
        needs={
            "Condition": ("lupus", "lupus-nephritis", HYDROXYCHLOROQUINE),
            "MedicationRequest": ("tacrolimus", HYDROXYCHLOROQUINE),
            "MedicationStatement": (HYDROXYCHLOROQUINE,),
            "AllergyIntolerance": (HYDROXYCHLOROQUINE,),
        },
    ),
    SALVAGE.declare(
        "R2",
        r2_no_mycophenolate,
        ("info",),
        "No mycophenolate in a class III/IV regimen",
        settings=(*PREGNANCY_SETTINGS, BREASTFEEDING),
        citations=REGIMEN_CITATIONS,
        runs_in=NEW_START_ONLY,
        needs=merge_needs(
            LUPUS_NEPHRITIS_READS,
            PREGNANCY_NEEDS,
            BREASTFEEDING_READS,
            {
                "Condition": ("lupus-nephritis-class-iii-iv",),
                "MedicationRequest": ("mycophenolate",),
                "MedicationStatement": ("mycophenolate",),
                "AllergyIntolerance": ("mycophenolate",),
            },
        ),
        course=("mycophenolate",),
    ),
    SALVAGE.declare(
        "R3",
        r3_belimumab,
        ("info",),
        "Belimumab active at a tacrolimus start",
        settings=(_window("belimumab_window_days", "belimumab", "R3"),),
        citations=REGIMEN_CITATIONS,
        runs_in=NEW_START_ONLY,
        needs=merge_needs(
            LUPUS_NEPHRITIS_READS,
            {"MedicationRequest": ("belimumab",), "MedicationStatement": ("belimumab",)},
        ),
    ),
    SALVAGE.declare(
        "R4",
        r4_cyclophosphamide,
        ("info",),
        "Cyclophosphamide active at a tacrolimus start",
        settings=(_window("cyclophosphamide_window_days", "cyclophosphamide", "R4"),),
        citations=("acr-2024-ln", "kdigo-2024", "lupkynis-label"),
        runs_in=NEW_START_ONLY,
        needs=merge_needs(
            LUPUS_NEPHRITIS_READS,
            {"MedicationRequest": ("cyclophosphamide",), "MedicationStatement": ("cyclophosphamide",)},
        ),
        course=("cyclophosphamide",),
    ),
)
