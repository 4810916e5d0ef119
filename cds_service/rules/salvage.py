"""Salvage context (S0-S4, S7): why tacrolimus now, for a patient with lupus nephritis? (The card, titled
"Regimen and salvage context" since rule catalog version 3, also holds R1-R4 of ``regimen.py``.)

The source article sees tacrolimus's place after mycophenolate or cyclophosphamide has failed, when rituximab
cannot be used, or in pregnancy, and calls it "a bridge, not a destination". These findings put that context
on the card; they never apply without active lupus nephritis. S0-S4 ask "why start it?", so they speak only
for a new start: a renewal or dose change gets no salvage lecture. (S5 and S6 of version 1 are N12 and N13.)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps

from cds_service.record import Allergy
from cds_service.rules.common import (
    PREGNANCY_NEEDS,
    active_orders,
    condition_evidence,
    continuing_because,
    day,
    day_start,
    exposure,
    finding,
    has_lupus_nephritis,
    in_months,
    lab_evidence,
    lactation_status,
    medication_evidence,
    merge_needs,
    months_as_days,
    names,
    newest_number,
    num,
    number,
    on,
    percent,
    pregnancy_status,
    quiet,
    threshold,
    unavailable,
    unusable_in,
    words,
)
from cds_service.rules.model import Evidence, Finding, Quiet, RuleInput
from cds_service.rules.pregnancy import BREASTFEEDING, BREASTFEEDING_READS, PREGNANCY_SETTINGS
from cds_service.rules.registry import NEW_START_ONLY, Family, setting

ANTI_CD20 = ("rituximab", "obinutuzumab")
"""The anti-CD20 drug classes whose allergy is an S3 barrier (obinutuzumab: FDA-approved for LN in 2025)."""

NO_LUPUS_NEPHRITIS = (
    "no active lupus nephritis condition: the salvage context applies only to lupus nephritis"
)


def needs_lupus_nephritis(
    rule: Callable[[RuleInput], Finding | Quiet],
) -> Callable[[RuleInput], Finding | Quiet]:
    """Every salvage finding is about lupus nephritis; without it the rule stays quiet and says why."""
    rule_id = rule.__name__[:2].upper()

    @wraps(rule)
    def checked(inp: RuleInput) -> Finding | Quiet:
        if not has_lupus_nephritis(inp.record):
            return quiet(rule_id, NO_LUPUS_NEPHRITIS, unavailable(inp.record, "Condition"))
        return rule(inp)

    return checked


def new_start_only(
    rule: Callable[[RuleInput], Finding | Quiet],
) -> Callable[[RuleInput], Finding | Quiet]:
    """S0-S4 are questions about starting tacrolimus; for continuing therapy the rule stays quiet."""
    rule_id = rule.__name__[:2].upper()

    @wraps(rule)
    def checked(inp: RuleInput) -> Finding | Quiet:
        continuing = continuing_because(inp)
        if continuing:
            return quiet(rule_id, f"{continuing}; the salvage questions are asked only for a new start")
        return rule(inp)

    return checked


@needs_lupus_nephritis
@new_start_only
def s0_first_agent(inp: RuleInput) -> Finding | Quiet:
    """Tacrolimus before either anchor drug: the North American debate."""
    record = inp.record
    anchors = exposure(record, "mycophenolate", "cyclophosphamide")
    if anchors.any:
        return quiet("S0", f"earlier anchor-drug exposure on record: {names(anchors.orders)}")
    drafted = active_orders(record, "mycophenolate")
    alongside = (
        f"; {names(drafted)} is ordered alongside, which fits"
        if drafted
        else "; consider whether mycophenolate belongs in the plan"
    )
    combined = (
        " KDIGO 2024, ACR 2024 and EULAR 2023 place a calcineurin inhibitor together with mycophenolate "
        f"rather than alone{alongside}."
    )
    pregnancy = pregnancy_status(record, inp.thresholds)
    lactation = lactation_status(record, inp.thresholds)
    if pregnancy.present or lactation.present:  # mycophenolate is stopped on purpose (rules.md v3 R2)
        combined = ""
    return finding(
        "S0",
        "info",
        "Tacrolimus as first agent for lupus nephritis is debated",
        "No earlier mycophenolate or cyclophosphamide is on record, so tacrolimus would be a first agent. "
        "The source article notes that this role is debated for North American patients (the trials "
        f"enrolled mainly Chinese patients).{combined}",
        ("fomin-roberts-2016", "kdigo-2024", "acr-2024-ln", "eular-2023"),
        evidence=[medication_evidence(m) for m in drafted],
        missing=unavailable(record, "MedicationRequest"),
    )


@needs_lupus_nephritis
@new_start_only
def s1_mycophenolate_failure(inp: RuleInput) -> Finding | Quiet:
    """Inadequate response after at least 6 months of mycophenolate (interpretation 9)."""
    record = inp.record
    mmf = exposure(record, "mycophenolate")
    if not mmf.any:
        return quiet("S1", "no mycophenolate exposure on record", unavailable(record, "MedicationRequest"))
    months = threshold(inp, "mycophenolate_failure_months")
    needed = months_as_days(inp.now, months)
    if mmf.days < needed:
        return quiet(
            "S1",
            f"mycophenolate exposure totals {mmf.days} days ({in_months(mmf.days)}), less than "
            f"{num(months)} months ({num(needed)} days)",
        )
    series = record.lab("upcr")
    started = day_start(mmf.first_day, inp.now)
    after, gaps = newest_number(series, since=started)
    if after is None:
        return quiet("S1", f"no UPCR since mycophenolate began on {day(mmf.start)}", gaps)
    limit = threshold(inp, "upcr_response")
    if after.value < limit:
        return quiet("S1", f"UPCR {on(after)} is below {num(limit)} g/g: response on mycophenolate")
    before, before_gaps = newest_number(series, until=started - timedelta(microseconds=1))
    gaps += before_gaps
    evidence = [*mmf.evidence(), lab_evidence("UPCR on mycophenolate", after)]
    pre_text = "; no earlier UPCR is on record to judge the fall"
    if before is not None:
        reduction = round((number(before) - number(after)) / number(before), 6) if before.value else 0.0
        wanted = threshold(inp, "upcr_reduction")
        if reduction >= wanted:
            return quiet(
                "S1",
                f"UPCR {on(after)} is {percent(reduction)} below {on(before)} before mycophenolate (at "
                f"least {percent(wanted)}): partial response",
            )
        evidence.append(lab_evidence("UPCR before mycophenolate", before))
        change = f"only {percent(reduction)} lower" if reduction >= 0 else f"{percent(-reduction)} higher"
        pre_text = f", {change} than the {on(before)} before it"
    return finding(
        "S1",
        "info",
        f"Inadequate response to mycophenolate: UPCR {num(after.value)} g/g after {in_months(mmf.days)}",
        f"UPCR is still {on(after)} after {in_months(mmf.days)} of mycophenolate (since "
        f"{day(mmf.start)}){pre_text}. This fits an inadequate response: the source article sees "
        "tacrolimus's place after mycophenolate has failed, and KDIGO 2024 / ACR 2024 list adding a "
        "calcineurin inhibitor or switching as options. Check adherence first and consider a repeat biopsy.",
        ("fomin-roberts-2016", "kdigo-2024", "acr-2024-ln"),
        evidence=evidence,
        missing=[*gaps, *([] if before else ["no UPCR from before mycophenolate began"])],
    )


@needs_lupus_nephritis
@new_start_only
def s2_both_anchors_used(inp: RuleInput) -> Finding | Quiet:
    """Both anchor drugs (cyclophosphamide and mycophenolate) already used."""
    record = inp.record
    cyc = exposure(record, "cyclophosphamide")
    mmf = exposure(record, "mycophenolate")
    if not (cyc.any and mmf.any):
        lacking = words(
            [n for n, e in (("cyclophosphamide", cyc), ("mycophenolate", mmf)) if not e.any], "or"
        )
        return quiet("S2", f"no {lacking} exposure on record", unavailable(record, "MedicationRequest"))
    return finding(
        "S2",
        "info",
        "Both anchor drugs used before: cyclophosphamide and mycophenolate",
        f"Cyclophosphamide (from {day(cyc.start)}) and mycophenolate (from {day(mmf.start)}) "
        "have both been used. The source article sees tacrolimus's place after mycophenolate or "
        "cyclophosphamide has failed, but the multitarget evidence (Liu 2015) and the "
        "tacrolimus-versus-mycophenolate trial (Mok 2016) come from Chinese cohorts; North American data "
        "are limited.",
        ("fomin-roberts-2016", "liu-2015", "mok-2016", "eular-2023"),
        evidence=[*cyc.evidence(), *mmf.evidence()],
    )


@needs_lupus_nephritis
@new_start_only
def s3_rituximab_barrier(inp: RuleInput) -> Finding | Quiet:
    """A reason anti-CD20 therapy (rituximab, obinutuzumab) cannot be used (interpretations 10, 52)."""
    record = inp.record
    barriers: list[str] = []
    evidence = []
    checked: list[str] = []
    missing: list[str] = unavailable(record, "Condition", "Observation", "AllergyIntolerance")

    hbv = record.active_conditions("hepatitis-b")
    hbsag = record.lab("hbsag").newest()
    missing += unusable_in(record.lab("hbsag"), None, hbsag)
    hbv_positive = hbsag is not None and hbsag.answer == "positive"
    if hbv or hbv_positive:
        barriers.append("hepatitis B")
        evidence += [condition_evidence(c) for c in hbv]
        evidence += [lab_evidence("HBsAg", hbsag)] if hbsag is not None and hbv_positive else []
    else:
        checked.append(f"no hepatitis B condition{f', HBsAg {on(hbsag)}' if hbsag else ''}")
        if hbsag is None:
            missing.append("no HBsAg result on record")

    low_igg = threshold(inp, "igg_low")
    hypogamma = record.active_conditions("hypogammaglobulinemia")
    igg, igg_gaps = newest_number(record.lab("igg"))
    missing += igg_gaps
    low = igg if igg is not None and number(igg) < low_igg else None
    if hypogamma or low is not None:
        barriers.append(f"hypogammaglobulinaemia{f' (IgG {on(low)})' if low is not None else ''}")
        evidence += [condition_evidence(c) for c in hypogamma]
        evidence += [lab_evidence("IgG", low)] if low is not None else []
    else:
        checked.append(
            f"IgG {on(igg)} is not below {num(low_igg)} mg/dL"
            if igg
            else "no hypogammaglobulinaemia condition"
        )
        if igg is None:
            missing.append("no IgG result on record")

    allergies = {a.id: a for drug in ANTI_CD20 for a in record.active_allergies(drug)}.values()
    if allergies:
        drugs = [drug for drug in ANTI_CD20 if any(drug in a.concepts for a in allergies)]
        barriers.append(f"{words(drugs, 'or')} allergy or infusion reaction")
        evidence += [allergy_evidence(a) for a in allergies]
    else:
        checked.append("no rituximab or obinutuzumab allergy")

    pregnancy = pregnancy_status(record, inp.thresholds)
    if pregnancy.present:
        barriers.append(f"pregnancy ({pregnancy.text})")
        evidence += pregnancy.evidence
    else:
        checked.append("pregnancy not documented")
    missing += pregnancy.missing

    if not barriers:
        return quiet("S3", "no anti-CD20 barrier recorded: " + "; ".join(checked), missing)
    hbv_text = (
        " Hepatitis B is a barrier to anti-CD20 therapy only: what it needs under tacrolimus is on the "
        "monitoring card (N14)."
        if "hepatitis B" in barriers
        else ""
    )
    return finding(
        "S3",
        "info",
        f"Anti-CD20 barrier recorded: {barriers[0].split(' (')[0]}",
        f"A reason anti-CD20 therapy may not be usable is recorded: {words(barriers)}. This covers rituximab "
        "and obinutuzumab (FDA-approved for lupus nephritis in October 2025), which carry the same boxed "
        "warning (hepatitis B reactivation, PML). The source article sees a place for tacrolimus when "
        f"rituximab cannot be used, so it is a reasonable alternative here.{hbv_text}",
        ("fomin-roberts-2016", "livertox-rituximab", "regency-2025", "kdigo-2024")
        + (("acr-2020-reproductive",) if pregnancy.present else ()),
        evidence=evidence,
        missing=missing,
    )


@needs_lupus_nephritis
@new_start_only
def s4_membranous(inp: RuleInput) -> Finding | Quiet:
    """Class V (membranous) lupus nephritis."""
    record = inp.record
    class_v = record.active_conditions("lupus-nephritis-class-v")
    if not class_v:
        return quiet("S4", "no active class V (membranous) lupus nephritis condition")
    return finding(
        "S4",
        "info",
        "Class V (membranous) lupus nephritis recorded",
        f"{class_v[0].name} is on the problem list. Calcineurin inhibitors have historically been most "
        "valued with a membranous component, and KDIGO 2024 / ACR 2024 list calcineurin-inhibitor regimens "
        "for nephrotic-range proteinuria.",
        ("kdigo-2024", "acr-2024-ln", "fomin-roberts-2016"),
        evidence=[condition_evidence(c) for c in class_v],
    )


@needs_lupus_nephritis
def s7_long_term(inp: RuleInput) -> Finding | Quiet:
    """Long tacrolimus exposure without a documented proteinuria response (interpretation 11)."""
    record = inp.record
    tacrolimus = exposure(record, "tacrolimus")
    if not tacrolimus.any:
        return quiet(
            "S7", "no earlier tacrolimus exposure on record", unavailable(record, "MedicationRequest")
        )
    months = threshold(inp, "tacrolimus_long_term_months")
    needed = months_as_days(inp.now, months)
    if tacrolimus.days <= needed:
        return quiet(
            "S7",
            f"tacrolimus exposure totals {tacrolimus.days} days ({in_months(tacrolimus.days)}), not more "
            f"than {num(months)} months ({num(needed)} days)",
        )
    limit = threshold(inp, "upcr_response")
    series = record.lab("upcr")
    started = day_start(tacrolimus.first_day, inp.now)
    during = [v for v in series.values(since=started) if v.value is not None and tacrolimus.covers(v.when)]
    responses = [v for v in during if v.value < limit]
    if responses:
        return quiet("S7", f"UPCR {on(responses[0])} during tacrolimus is below {num(limit)} g/g: response")
    newest = during[0] if during else None
    upcr_text = f"the newest is {on(newest)}" if newest else "no UPCR was recorded during that time"
    return finding(
        "S7",
        "info",
        f"Tacrolimus for {in_months(tacrolimus.days)} without a proteinuria response",
        f"Tacrolimus since {day(tacrolimus.start)} ({in_months(tacrolimus.days)} in total) with no "
        f'UPCR below {num(limit)} g/g in that time ({upcr_text}). The source article calls tacrolimus "a '
        'bridge, not a destination": about 17% of patients lose significant kidney function within 3 years, '
        "so reassess whether to continue it.",
        ("fomin-roberts-2016", "kdigo-2024"),
        evidence=[*tacrolimus.evidence(), *([lab_evidence("UPCR", newest)] if newest else [])],
        missing=[
            *([] if during else ["no UPCR during tacrolimus exposure"]),
            *unusable_in(series, started, newest),
        ],
    )


def allergy_evidence(allergy: Allergy) -> Evidence:
    return Evidence("Allergy", allergy.name, None, allergy.reference)


LUPUS_NEPHRITIS_READS = {
    "Condition": ("lupus-nephritis", "lupus-nephritis-class-v"),
    "MedicationRequest": ("tacrolimus",),
}
ANCHOR_DRUGS = {"MedicationRequest": ("mycophenolate", "cyclophosphamide")}
UPCR_RESPONSE = setting("upcr_response", "number", 0, 20, "S1/S7: g/g")
NEW_START_CITATIONS = ("acr-2024-ln", "fomin-roberts-2016", "kdigo-2024")

SALVAGE = Family("salvage", "salvage-context")

DECLARATIONS = (
    SALVAGE.declare(
        "S0",
        s0_first_agent,
        ("info",),
        "Tacrolimus as first agent",
        settings=(*PREGNANCY_SETTINGS, BREASTFEEDING),  # pregnant or lactating: no mycophenolate sentence
        citations=(*NEW_START_CITATIONS, "eular-2023"),
        runs_in=NEW_START_ONLY,
        needs=merge_needs(LUPUS_NEPHRITIS_READS, ANCHOR_DRUGS, PREGNANCY_NEEDS, BREASTFEEDING_READS),
    ),
    SALVAGE.declare(
        "S1",
        s1_mycophenolate_failure,
        ("info",),
        "Inadequate response to mycophenolate",
        settings=(
            setting("mycophenolate_failure_months", "integer", 1, 120, "S1: months"),
            UPCR_RESPONSE,
            setting("upcr_reduction", "number", 0, 1, "S1: fraction (0.5 = 50 %)"),
        ),
        citations=NEW_START_CITATIONS,
        runs_in=NEW_START_ONLY,
        needs=merge_needs(
            LUPUS_NEPHRITIS_READS, {"Observation": ("upcr",), "MedicationRequest": ("mycophenolate",)}
        ),
        course=("upcr", "mycophenolate"),
    ),
    SALVAGE.declare(
        "S2",
        s2_both_anchors_used,
        ("info",),
        "Mycophenolate and cyclophosphamide both used",
        citations=("eular-2023", "fomin-roberts-2016", "liu-2015", "mok-2016"),
        runs_in=NEW_START_ONLY,
        needs=merge_needs(LUPUS_NEPHRITIS_READS, ANCHOR_DRUGS),
        course=("cyclophosphamide", "mycophenolate"),
    ),
    SALVAGE.declare(
        "S3",
        s3_rituximab_barrier,
        ("info",),
        "Rituximab cannot be used",
        settings=(setting("igg_low", "number", 0, 5000, "S3: mg/dL"), *PREGNANCY_SETTINGS),
        citations=(
            "acr-2020-reproductive",
            "fomin-roberts-2016",
            "kdigo-2024",
            "livertox-rituximab",
            "regency-2025",
        ),
        runs_in=NEW_START_ONLY,
        needs=merge_needs(
            LUPUS_NEPHRITIS_READS,
            PREGNANCY_NEEDS,
            {
                "Condition": ("hepatitis-b", "hypogammaglobulinemia"),
                "Observation": ("hbsag", "igg"),
                "AllergyIntolerance": ANTI_CD20,
            },
        ),
        course=("rituximab",),
    ),
    SALVAGE.declare(
        "S4",
        s4_membranous,
        ("info",),
        "Lupus nephritis class V",
        citations=NEW_START_CITATIONS,
        runs_in=NEW_START_ONLY,
        needs=LUPUS_NEPHRITIS_READS,
    ),
    SALVAGE.declare(
        "S7",
        s7_long_term,
        ("info",),
        "Long-term tacrolimus without remission",
        settings=(setting("tacrolimus_long_term_months", "integer", 1, 240, "S7: months"), UPCR_RESPONSE),
        citations=("fomin-roberts-2016", "kdigo-2024"),
        needs=merge_needs(LUPUS_NEPHRITIS_READS, {"Observation": ("upcr",)}),
        course=("upcr", "tacrolimus"),
    ),
)
RULES = {d.id: d.rule for d in DECLARATIONS}
NEEDS = merge_needs(*(d.needs for d in DECLARATIONS))
