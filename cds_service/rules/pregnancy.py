"""Pregnancy suitability (P1-P7): is tacrolimus right for a patient who is or may become pregnant, or nurses?

Tacrolimus itself is pregnancy-compatible; the findings are about what comes with it: teratogens still active,
mycophenolate without a negative pregnancy test, breastfeeding (and drugs that are not compatible with it),
hypertension and the falling trough of pregnancy.
"""

from __future__ import annotations

from cds_service.rules.common import (
    PREGNANCY_NEEDS,
    active_orders,
    bp_readings,
    capital,
    condition_evidence,
    day,
    exposure,
    finding,
    flag_only_hcg,
    hcg_indeterminate,
    hcg_result,
    lab_evidence,
    lactation_status,
    medication_evidence,
    merge_needs,
    names,
    num,
    on,
    pregnancy_status,
    quiet,
    threshold,
    unavailable,
    unusable_in,
    window_start,
    words,
)
from cds_service.rules.model import Finding, OrderLabs, Quiet, RuleInput, StopMedication
from cds_service.rules.other_prescriber import considered, speaks_to_other_prescriber, to_other_prescriber
from cds_service.rules.registry import WITH_OTHER_PRESCRIBER, Family, Wording, pair_setting, setting

TERATOGEN_CONCEPTS = ("teratogens", "mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide")
HCG_GROUPS = ("hcg-qualitative", "hcg-quantitative")
URINE_HCG = ("2106-3", "Choriogonadotropin (pregnancy test) [Presence] in Urine")
TACROLIMUS_LEVEL = ("11253-2", "Tacrolimus [Mass/volume] in Blood")
REMS_CADENCE = (
    "The mycophenolate REMS asks for a pregnancy test immediately before starting mycophenolate and another "
    "8–10 days later, repeated at follow-up visits, and acceptable contraception during mycophenolate "
    "therapy and for 6 weeks after stopping it."
)
"""P3's testing cadence (rules.md v3 P3; clinical.md §6.2 "P3 (text change)": CellCept label and REMS)."""


def p1_pregnant(inp: RuleInput) -> Finding | Quiet:
    status = pregnancy_status(inp.record, inp.thresholds)
    if not status.present:
        return quiet("P1", status.why_not("pregnancy"), status.missing)
    return finding(
        "P1",
        "info",
        "Pregnancy documented: tacrolimus is compatible but needs closer monitoring",
        f"Pregnancy is documented ({status.text}). Tacrolimus is considered compatible with pregnancy (ACR "
        "2020, BSR 2022), and the source article sees a place for it in lupus nephritis flares during "
        "pregnancy. Levels fall as pregnancy advances and low albumin raises the unbound fraction, so "
        "check the trough, blood pressure, glucose, potassium and creatinine more often (trough every 2–4 "
        "weeks) and coordinate care with maternal-fetal medicine.",
        ("acr-2020-reproductive", "bsr-2022", "fomin-roberts-2016", "hebert-2013"),
        evidence=status.evidence,
        missing=status.missing,
    )


def p2_teratogen_in_pregnancy(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    status = pregnancy_status(record, inp.thresholds)
    if not status.present:
        return quiet("P2", status.why_not("pregnancy"), status.missing)
    teratogens = considered(inp, *TERATOGEN_CONCEPTS)
    if not teratogens:
        return quiet(
            "P2",
            "pregnant, but no active mycophenolate, cyclophosphamide, methotrexate or leflunomide order",
            unavailable(record, "MedicationRequest"),
        )
    them = "it" if len(teratogens) == 1 else "them"
    washout = (
        " Leflunomide also needs a cholestyramine washout."
        if any("leflunomide" in m.concepts or "leflunomide" in m.name.lower() for m in teratogens)
        else ""
    )
    if speaks_to_other_prescriber(inp):
        return to_other_prescriber(
            inp,
            "P2",
            "critical",
            f"{_short(teratogens)}: not compatible with pregnancy",
            P2_WORDING,
            teratogens,
            ("acr-2020-reproductive", "bsr-2022"),
            evidence=status.evidence,
            missing=status.missing,
            suggestions=_remove(
                teratogens, "Not compatible with pregnancy (ACR 2020 reproductive health guideline)"
            ),
            status=status.text,
            washout=washout,
        )
    return finding(
        "P2",
        "critical",
        f"Teratogen active in pregnancy: {_short(teratogens)}",
        f"Pregnancy is documented ({status.text}) while {names(teratogens)} "
        f"{'is' if len(teratogens) == 1 else 'are'} active. Mycophenolate, cyclophosphamide, methotrexate "
        f"and leflunomide are not compatible with pregnancy (ACR 2020): stop {them} and agree the plan with "
        "maternal-fetal medicine; tacrolimus and azathioprine are pregnancy-compatible "
        f"alternatives.{washout}",
        ("acr-2020-reproductive", "bsr-2022"),
        evidence=[*status.evidence, *(medication_evidence(m) for m in teratogens)],
        missing=status.missing,
        suggestions=[
            StopMedication(
                m,
                f"Remove the draft {m.name} order" if m.is_draft else f"Stop {m.name}",
                reason="Not compatible with pregnancy (ACR 2020 reproductive health guideline)",
            )
            for m in teratogens
        ],
    )


def p3_mycophenolate_without_hcg(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    patient = record.patient
    missing: list[str] = unavailable(record, "Patient")
    sex = patient.gender if patient else None
    if sex == "male":
        return quiet("P3", "the patient's recorded sex is male")
    if sex != "female":
        missing.append("sex not recorded as female or male")
    low, high = threshold(inp, "pregnancy_capable_age")
    age = patient.age_on(inp.now.date()) if patient else None
    if age is not None and not low <= age <= high:
        return quiet("P3", f"age {age} is outside the {num(low)}–{num(high)} band")
    if age is None:
        missing.append("birth date not recorded")
    status = pregnancy_status(record, inp.thresholds)
    if status.present:
        return quiet("P3", f"pregnancy is documented ({status.text}); P1/P2 apply instead")
    mycophenolate = active_orders(record, "mycophenolate")
    if not mycophenolate:
        return quiet(
            "P3", "no active or drafted mycophenolate order", unavailable(record, "MedicationRequest")
        )
    days = threshold(inp, "mycophenolate_hcg_days")
    since = window_start(inp.now, days)
    tests = sorted(
        (v for group in HCG_GROUPS for v in record.lab(group).values(since=since)),
        key=lambda v: v.when,
        reverse=True,
    )
    negative = [v for v in tests if hcg_result(v, inp.thresholds) == "negative"]
    if negative:
        return quiet("P3", f"negative hCG {on(negative[0])} is within the last {num(days)} days")
    indeterminate = [v for v in tests if hcg_result(v, inp.thresholds) == "indeterminate"]
    missing = [
        f"no negative hCG in the last {num(days)} days",
        *(hcg_indeterminate(v) for v in indeterminate[:1]),
        *(flag_only_hcg(v) for v in tests if v.flag_only),
        *(reason for group in HCG_GROUPS for reason in unusable_in(record.lab(group), since)),
        *unavailable(record, "Observation"),
        *missing,
    ]
    who = "a woman" if sex == "female" else "a patient"
    who += f" aged {age}" if age is not None else ""
    ended = [line for line in status.checked if " was ended by " in line]
    ended_text = f" A recorded pregnancy has ended: {'; '.join(ended)}." if ended else ""
    return finding(
        "P3",
        "info",
        f"Mycophenolate without a negative pregnancy test in the last {num(days)} days",
        f"{capital(names(mycophenolate))} is "
        f"{'being ordered' if all(m.is_draft for m in mycophenolate) else 'active'} for {who}, with no "
        f"negative hCG in the last {num(days)} days. Mycophenolate must be stopped at least 6 weeks before "
        "conception (ACR 2020): confirm a negative pregnancy test and review contraception and pregnancy "
        f"plans. {REMS_CADENCE} A urine test is suggested: it is quick and uses the urine sample the UPCR "
        "needs." + ended_text,
        ("acr-2020-reproductive", "cellcept-label"),
        evidence=[medication_evidence(m) for m in mycophenolate],
        missing=missing,
        suggestions=[OrderLabs((URINE_HCG,), "Order a urine pregnancy test (hCG)")],
    )


def p4_breastfeeding(inp: RuleInput) -> Finding | Quiet:
    status = lactation_status(inp.record, inp.thresholds)
    if not status.present:
        return quiet("P4", status.why_not("breastfeeding"), status.missing)
    return finding(
        "P4",
        "info",
        "Breastfeeding: tacrolimus is compatible per ACR 2020 and BSR 2022",
        f"Breastfeeding is documented ({status.text}). Tacrolimus is compatible with breastfeeding per ACR "
        "2020 and BSR 2022, as very little passes into breast milk (Hebert 2013). The older Prograf label "
        "advised against breastfeeding, so label and guidelines disagree; this advice follows the "
        "guidelines.",
        ("acr-2020-reproductive", "bsr-2022", "hebert-2013", "prograf-label"),
        evidence=status.evidence,
        missing=status.missing,
    )


def p5_hypertension_in_pregnancy(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    status = pregnancy_status(record, inp.thresholds)
    if not status.present:
        return quiet("P5", status.why_not("pregnancy"), status.missing)
    systolic_limit, diastolic_limit = threshold(inp, "bp_info")
    days = threshold(inp, "pregnancy_bp_days")
    readings, gaps = bp_readings(record, window_start(inp.now, days))
    high = [
        r
        for r in readings
        if (r.sbp is not None and r.sbp >= systolic_limit) or (r.dbp is not None and r.dbp >= diastolic_limit)
    ]
    conditions = record.active_conditions("pregnancy-hypertension")
    limit = f"{num(systolic_limit)}/{num(diastolic_limit)}"
    if not high and not conditions:
        if readings:
            reason = f"pregnant; newest blood pressure {readings[0].on()} is below {limit}"
        else:
            reason = f"pregnant, but no blood pressure in the last {num(days)} days"
        reason += " and no pre-eclampsia or gestational hypertension condition"
        return quiet("P5", reason, [*gaps, *unavailable(record, "Observation")])
    found = [f"blood pressure {r.on()}" for r in high[:3]]
    found += [f"{c.name} on the problem list" for c in conditions]
    return finding(
        "P5",
        "warning",
        f"Hypertension in pregnancy: {found[0]}",
        f"Pregnant ({status.text}) with {words(found)}. Calcineurin inhibitors can raise blood pressure: "
        "assess for pre-eclampsia versus a lupus nephritis flare (proteinuria, blood pressure and "
        "complement/anti-dsDNA trends together) and involve maternal-fetal medicine before adjusting "
        "tacrolimus.",
        ("prograf-label", "acr-2020-reproductive"),
        evidence=[
            *status.evidence,
            *(e for r in high[:3] for e in r.evidence()),
            *(condition_evidence(c) for c in conditions),
        ],
        missing=[*status.missing, *gaps],
    )


def p6_pregnancy_trough(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    status = pregnancy_status(record, inp.thresholds)
    if not status.present:
        return quiet("P6", status.why_not("pregnancy"), status.missing)
    tacrolimus = exposure(record, "tacrolimus")
    if not tacrolimus.any:
        return quiet(
            "P6",
            "pregnant, but no earlier tacrolimus exposure on record (a new start)",
            unavailable(record, "MedicationRequest"),
        )
    days = threshold(inp, "pregnancy_trough_days")
    since = window_start(inp.now, days)
    series = record.lab("tacrolimus-level")
    level = series.newest(since=since)
    if level is not None:
        return quiet("P6", f"pregnant; tacrolimus level {on(level)} is within the last {num(days)} days")
    last = series.newest()
    last_text = f" (last: {on(last)})" if last else ""
    return finding(
        "P6",
        "info",
        f"Pregnant on tacrolimus with no trough in {num(days)} days",
        f"Pregnant ({status.text}) and on tacrolimus since {day(tacrolimus.start)}, with no "
        f"tacrolimus level in the last {num(days)} days{last_text}. Whole-blood levels fall as pregnancy "
        "advances (transplant series needed dose increases of 20–25% or more) while low albumin raises the "
        "unbound fraction: check a trough now and every 2–4 weeks, and read it together with the albumin.",
        ("hebert-2013", "pregnancy-dose-cohort"),
        evidence=[
            *status.evidence,
            *tacrolimus.evidence(),
            *([] if last is None else [lab_evidence("Tacrolimus level", last)]),
        ],
        missing=[
            f"no tacrolimus level in the last {num(days)} days",
            *unusable_in(series, since),
            *unavailable(record, "Observation"),
            *status.missing,
        ],
        suggestions=[OrderLabs((TACROLIMUS_LEVEL,), "Order a tacrolimus trough level")],
    )


def p7_teratogen_while_breastfeeding(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    status = lactation_status(record, inp.thresholds)
    if not status.present:
        return quiet("P7", status.why_not("breastfeeding"), status.missing)
    drugs = considered(inp, *TERATOGEN_CONCEPTS)
    if not drugs:
        return quiet(
            "P7",
            "breastfeeding, but no active mycophenolate, cyclophosphamide, methotrexate or leflunomide order",
            unavailable(record, "MedicationRequest"),
        )
    if speaks_to_other_prescriber(inp):
        return to_other_prescriber(
            inp,
            "P7",
            "warning",
            f"{_short(drugs)}: not compatible with breastfeeding",
            P7_WORDING,
            drugs,
            ("acr-2020-reproductive", "bsr-2022"),
            evidence=status.evidence,
            missing=status.missing,
            suggestions=_remove(
                drugs, "Not compatible with breastfeeding (ACR 2020 reproductive health guideline)"
            ),
            status=status.text,
        )
    return finding(
        "P7",
        "warning",
        f"Not compatible with breastfeeding: {_short(drugs)}",
        f"Breastfeeding is documented ({status.text}) while {names(drugs)} "
        f"{'is' if len(drugs) == 1 else 'are'} active. Mycophenolate, cyclophosphamide, methotrexate and "
        "leflunomide are not compatible with breastfeeding (ACR 2020; BSR 2022): stop "
        f"{'it' if len(drugs) == 1 else 'them'} or stop breastfeeding. Tacrolimus, cyclosporine, "
        "azathioprine and hydroxychloroquine are compatible with breastfeeding.",
        ("acr-2020-reproductive", "bsr-2022"),
        evidence=[*status.evidence, *(medication_evidence(m) for m in drugs)],
        missing=status.missing,
        suggestions=[
            StopMedication(
                m,
                f"Remove the draft {m.name} order" if m.is_draft else f"Stop {m.name}",
                reason="Not compatible with breastfeeding (ACR 2020 reproductive health guideline)",
            )
            for m in drugs
        ],
    )


def _remove(drafts, reason: str) -> list[StopMedication]:
    """The other prescriber's suggestions: delete the drafted drug (their own order), nothing else."""
    return [
        StopMedication(m, f"Remove the draft {m.name} order", reason=reason) for m in drafts if m.is_draft
    ]


def _short(meds) -> str:
    first = meds[0].name
    return first if len(meds) == 1 else f"{first} and {len(meds) - 1} more"


PREGNANCY_SETTINGS = (
    setting("pregnancy_status_days", "integer", 1, 3650, "pregnancy-status look-back"),
    setting(
        "hcg_days",
        "integer",
        1,
        3650,
        "P*: a positive hCG counts as pregnancy for this many days, until a later result ends it",
    ),
    setting(
        "hcg_unconfirmed_days",
        "integer",
        1,
        3650,
        "P*: a positive hCG older than this, with nothing later confirming it, is flagged as unconfirmed",
    ),
    setting("hcg_positive_iu_per_l", "number", 0, 100000, "quantitative hCG above this is positive, IU/L"),
    pair_setting(
        "hcg_indeterminate_iu_per_l",
        "number",
        0,
        100000,
        "P*: [from, to] IU/L, inclusive: a quantitative hCG in this band is indeterminate (neither starts "
        "nor ends a pregnancy, not the negative test P3 asks for); below it negative",
    ),
    setting(
        "edd_overdue_days",
        "integer",
        0,
        365,
        "P*: an estimated delivery date more than this many days past ends the pregnancy",
    ),
)
"""What every pregnancy reading uses (``common.pregnancy_status``): S3 reads them too."""
PREGNANCY_READS = merge_needs(PREGNANCY_NEEDS, {"Patient": (), "MedicationRequest": ("tacrolimus",)})
BREASTFEEDING = setting(
    "breastfeeding_status_days", "integer", 1, 3650, "P4/P7: breastfeeding-status (63895-7) look-back"
)
BREASTFEEDING_READS = {
    "Patient": (),
    "Condition": ("lactation",),
    "Observation": ("breastfeeding-status",),
    "MedicationRequest": ("tacrolimus",),
}
TERATOGENS = {"MedicationRequest": TERATOGEN_CONCEPTS}
BLOOD_PRESSURE = ("blood-pressure", "systolic-bp", "diastolic-bp")

P2_WORDING = Wording(
    co_prescribing=(
        "Pregnancy is documented ({status}). {Drug} {is_} not compatible with pregnancy (ACR 2020): do "
        "not start it, and agree the plan with the clinicians who manage the lupus and with "
        "maternal-fetal medicine; azathioprine is a pregnancy-compatible alternative, as is the "
        "tacrolimus already taken.{washout}"
    )
)
P7_WORDING = Wording(
    co_prescribing=(
        "Breastfeeding is documented ({status}). {Drug} {is_} not compatible with breastfeeding (ACR "
        "2020; BSR 2022): choose another drug, or agree with the patient to stop breastfeeding first. "
        "Tacrolimus, cyclosporine, azathioprine and hydroxychloroquine are compatible with "
        "breastfeeding."
    )
)
PREGNANCY = Family("pregnancy", "pregnancy")

DECLARATIONS = (
    PREGNANCY.declare(
        "P1",
        p1_pregnant,
        ("info",),
        "Pregnant: compatible, monitor more closely",
        settings=PREGNANCY_SETTINGS,
        citations=("acr-2020-reproductive", "bsr-2022", "fomin-roberts-2016", "hebert-2013"),
        needs=PREGNANCY_READS,
    ),
    PREGNANCY.declare(
        "P2",
        p2_teratogen_in_pregnancy,
        ("critical",),
        "Teratogen active in pregnancy",
        settings=PREGNANCY_SETTINGS,
        citations=("acr-2020-reproductive", "bsr-2022"),
        needs=merge_needs(PREGNANCY_READS, TERATOGENS),
        runs_in=WITH_OTHER_PRESCRIBER,
        wording=P2_WORDING,
    ),
    PREGNANCY.declare(
        "P3",
        p3_mycophenolate_without_hcg,
        ("info",),
        "Mycophenolate, no negative pregnancy test",
        settings=(
            pair_setting("pregnancy_capable_age", "integer", 0, 120, "P3: [from, to] years, inclusive"),
            setting("mycophenolate_hcg_days", "integer", 1, 3650, "P3: hCG look-back"),
            *PREGNANCY_SETTINGS,
        ),
        citations=("acr-2020-reproductive", "cellcept-label"),
        needs=merge_needs(PREGNANCY_READS, {"MedicationRequest": ("mycophenolate",)}),
    ),
    PREGNANCY.declare(
        "P4",
        p4_breastfeeding,
        ("info",),
        "Breastfeeding: tacrolimus compatible",
        settings=(BREASTFEEDING,),
        citations=("acr-2020-reproductive", "bsr-2022", "hebert-2013", "prograf-label"),
        needs=BREASTFEEDING_READS,
    ),
    PREGNANCY.declare(
        "P5",
        p5_hypertension_in_pregnancy,
        ("warning",),
        "High blood pressure in pregnancy",
        settings=(setting("pregnancy_bp_days", "integer", 1, 3650, "P5: BP look-back"), *PREGNANCY_SETTINGS),
        citations=("acr-2020-reproductive", "prograf-label"),
        needs=merge_needs(
            PREGNANCY_READS, {"Condition": ("pregnancy-hypertension",), "Observation": BLOOD_PRESSURE}
        ),
        course=("systolic-bp", "diastolic-bp"),
    ),
    PREGNANCY.declare(
        "P6",
        p6_pregnancy_trough,
        ("info",),
        "Pregnant, no recent tacrolimus level",
        settings=(
            setting("pregnancy_trough_days", "integer", 1, 3650, "P6: tacrolimus level look-back"),
            *PREGNANCY_SETTINGS,
        ),
        citations=("hebert-2013", "pregnancy-dose-cohort"),
        needs=merge_needs(PREGNANCY_READS, {"Observation": ("tacrolimus-level",)}),
        course=("tacrolimus-level",),
    ),
    PREGNANCY.declare(
        "P7",
        p7_teratogen_while_breastfeeding,
        ("warning",),
        "Drug not compatible with breastfeeding",
        settings=(BREASTFEEDING,),
        citations=("acr-2020-reproductive", "bsr-2022"),
        needs=merge_needs(BREASTFEEDING_READS, TERATOGENS),
        runs_in=WITH_OTHER_PRESCRIBER,
        wording=P7_WORDING,
    ),
)
RULES = {d.id: d.rule for d in DECLARATIONS}
NEEDS = merge_needs(*(d.needs for d in DECLARATIONS))
