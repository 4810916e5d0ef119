"""The rule catalog, finding by finding: each fires at its threshold, stays quiet just below it, names absent
data, and never reads absent data as normal or as "not pregnant".

Records are built directly from plain data (no FHIR, no fixtures, no HTTP); the request time is fixed.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cds_service.record import (
    Allergy,
    Condition,
    LabSeries,
    LabValue,
    Medication,
    Patient,
    PatientRecord,
    Period,
    RawLab,
    Unusable,
)
from cds_service.rules import NEEDS, RULES, evaluate
from cds_service.rules.citations import CITATIONS
from cds_service.rules.common import ckd_epi_2021, months_before
from cds_service.rules.model import Finding, OrderLabs, Quiet, RuleInput, StopMedication

NOW = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
SETTINGS = Path(__file__).resolve().parent.parent / "hooks" / "settings.yaml"

# The catalog defaults, spelled out so that every boundary below is visible in the test itself.
THRESHOLDS = {
    "recent_lab_days": 30,
    "baseline_creatinine_days": 90,
    "creatinine_rise_warning": 0.20,
    "creatinine_rise_critical": 0.30,
    "creatinine_rise_critical_mg_dl": 0.3,
    "tacrolimus_level_max": 10,
    "tacrolimus_level_max_with_mycophenolate": 8,
    "potassium_max": 5.5,
    "magnesium_min": 1.6,
    "bp_info": [140, 90],
    "bp_warning": [160, 100],
    "bp_critical": [165, 105],
    "fasting_glucose": 126,
    "random_glucose": 200,
    "hba1c": 6.5,
    "include_moderate_cyp3a4": False,
    "paxlovid_window_days": 10,
    "formulation_mg_for_mg_ratio": 0.95,
    "formulation_switch_high_ratio": 1.5,
    "formulation_switch_dose_indicator": "critical",
    "live_vaccine_before_start_days": 28,
    "live_vaccine_on_tacrolimus_days": 42,
    "egfr_cni_caution": 45,
    "egfr_cni_caution_continuing": "info",
    "body_height_days": 180,
    "mycophenolate_failure_months": 6,
    "upcr_response": 0.5,
    "upcr_reduction": 0.5,
    "igg_low": 500,
    "tacrolimus_long_term_months": 12,
    "pregnancy_status_days": 280,
    "breastfeeding_status_days": 280,
    "hcg_days": 280,
    "hcg_unconfirmed_days": 14,
    "edd_overdue_days": 14,
    "hcg_positive_iu_per_l": 25,
    "hcg_indeterminate_iu_per_l": [5, 25],
    "pregnancy_capable_age": [12, 55],
    "mycophenolate_hcg_days": 30,
    "pregnancy_bp_days": 7,
    "pregnancy_trough_days": 28,
    "postpartum_days": 42,
    "postpartum_dose_rise": 1.2,
    "active_nephritis_upcr": 0.5,
    "active_nephritis_upcr_days": 90,
    "contraceptive_new_start_counts": True,
}

UNITS = {
    "creatinine": "mg/dL",
    "egfr": "mL/min/{1.73_m2}",
    "upcr": "g/g",
    "tacrolimus-level": "ng/mL",
    "potassium": "mmol/L",
    "magnesium": "mg/dL",
    "glucose": "mg/dL",
    "glucose-fasting": "mg/dL",
    "hba1c": "%",
    "systolic-bp": "mm[Hg]",
    "diastolic-bp": "mm[Hg]",
    "hcg-quantitative": "[IU]/L",
    "igg": "mg/dL",
    "body-height": "cm",
}

_ids = itertools.count(1)


# --- builders -----------------------------------------------------------------------------------------------
def ago(days: float, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def lab(
    group: str, value: float | None = None, *, days: float, hours: float = 0, answer: str | None = None, **kw
):
    """One usable result in its group's canonical unit, ``days`` before now."""
    rid = kw.pop("rid", f"{group}-{next(_ids)}")
    unit = UNITS.get(group) if value is not None else None
    original = kw.pop("original", f"{value:g} {unit}" if value is not None else (answer or ""))
    when = kw.pop("when", ago(days, hours))
    code = kw.pop("code", "")
    assert not kw, f"unknown lab() arguments: {kw}"
    return group, LabValue(rid, code, when, value, unit, answer=answer, original=original)


def unusable(group: str, *, days: float, reason: str):
    rid = f"{group}-{next(_ids)}"
    return group, (ago(days), Unusable(f"Observation/{rid}", reason))


def bp(systolic: float, diastolic: float, *, days: float):
    """A blood-pressure panel: both components share the resource and the time, as the record builder does."""
    rid, when = f"bp-{next(_ids)}", ago(days)
    return [
        lab("systolic-bp", systolic, days=days, rid=rid, when=when),
        lab("diastolic-bp", diastolic, days=days, rid=rid, when=when),
    ]


def series(entries) -> dict[str, LabSeries]:
    """LabSeries per group whose parse function hands back prebuilt LabValues / Unusables."""
    grouped: dict[str, list[RawLab]] = {}
    for group, item in entries:
        when, parsed = item if isinstance(item, tuple) else (item.when, item)
        grouped.setdefault(group, []).append(RawLab(when, {"parsed": parsed}))
    return {g: LabSeries(g, raws, lambda _g, raw: raw.resource["parsed"]) for g, raws in grouped.items()}


def cond(*concepts: str, active: bool = True, name: str | None = None) -> Condition:
    return Condition(
        id=f"cond-{next(_ids)}",
        concepts=frozenset(concepts),
        name=name or concepts[-1].replace("-", " "),
        active=active,
        onset=ago(400),
    )


LUPUS_NEPHRITIS = ("lupus", "lupus-nephritis")


def med(
    *concepts: str,
    name: str | None = None,
    status: str = "active",
    start: datetime | None = None,
    days: float = 100,
    ended_days: float | None = None,
    draft: bool = False,
    trigger: bool = False,
    prior: str | None = None,
    rid: str | None = None,
) -> Medication:
    """A MedicationRequest with its exposure period worked out as the record builder does."""
    authored = start or ago(days)
    end = ago(ended_days) if ended_days is not None else None
    if draft:
        status, exposure = "draft", None
    elif status in ("active", "on-hold"):
        exposure = Period(authored, end or NOW)
    elif status in ("stopped", "completed"):
        exposure = Period(authored, end or authored)
    else:
        exposure = None
    return Medication(
        id=rid or f"med-{next(_ids)}",
        concepts=frozenset(concepts),
        name=name or concepts[0],
        status=status,
        authored=authored,
        exposure=exposure,
        is_draft=draft,
        is_trigger=trigger,
        prior_prescription=prior,
    )


def tacrolimus_draft(rid: str = "tac-draft", prior: str | None = None) -> Medication:
    return med(
        "tacrolimus", name="tacrolimus 1 MG Oral Capsule", draft=True, trigger=True, rid=rid, prior=prior
    )


def woman(age: int = 30) -> Patient:
    return Patient("pat-1", "female", date(NOW.year - age, 1, 1))


def make(
    *,
    conditions=None,
    meds=(),
    labs=(),
    allergies=(),
    patient: Patient | None = None,
    scope: str = "lupus",
    unavailable=(),
    trigger: Medication | None = None,
    **threshold_overrides,
) -> RuleInput:
    trigger = trigger or tacrolimus_draft()
    conditions = (cond(*LUPUS_NEPHRITIS),) if conditions is None else conditions
    entries = [e for item in labs for e in (item if isinstance(item, list) else [item])]
    record = PatientRecord(
        now=NOW,
        patient=patient or woman(),
        conditions=tuple(conditions),
        medications=(*meds, trigger),
        allergies=tuple(allergies),
        labs=series(entries),
        unavailable=frozenset(unavailable),
    )
    return RuleInput(record, (trigger,), {**THRESHOLDS, **threshold_overrides}, scope)


def run(rule_id: str, inp: RuleInput) -> Finding | Quiet:
    result = RULES[rule_id](inp)
    assert result.id == rule_id
    return result


def fires(rule_id: str, inp: RuleInput) -> Finding:
    result = run(rule_id, inp)
    assert isinstance(result, Finding), f"{rule_id} stayed quiet: {result.reason}"
    return result


def stays_quiet(rule_id: str, inp: RuleInput) -> str:
    result = run(rule_id, inp)
    assert isinstance(result, Quiet), f"{rule_id} fired: {result.summary}"
    return result.reason


def full_baseline(days: float = 5):
    """Recent, unremarkable values for everything N1 asks for."""
    return [
        lab("creatinine", 0.9, days=days),
        lab("potassium", 4.2, days=days),
        lab("magnesium", 2.0, days=days),
        lab("glucose", 95, days=days),
        bp(120, 75, days=days),
        lab("upcr", 0.3, days=days),
    ]


PREGNANT = cond("pregnancy", name="Pregnancy")
MYCOPHENOLATE = "mycophenolate"


# --- catalog shape ------------------------------------------------------------------------------------------
def test_rules_run_in_catalog_order():
    assert list(RULES) == [
        *(f"P{i}" for i in (1, 2, 3, 4, 5, 6, 7, 9, 10)),
        *(f"S{i}" for i in (0, 1, 2, 3, 4, 7)),
        *(f"N{i}" for i in range(1, 16)),
        "N17",
        "N18",
        "N19",
        "N21",
    ]


def test_every_threshold_the_tests_assume_is_a_shipped_setting():
    shipped = yaml.safe_load(SETTINGS.read_text())["thresholds"]
    assert {key: shipped.get(key) for key in THRESHOLDS} == THRESHOLDS


def test_needs_names_the_value_sets_discovery_must_prefetch():
    assert set(NEEDS) == {
        "Patient", "Condition", "MedicationRequest", "Observation", "AllergyIntolerance", "Procedure",
        "Immunization",
    }  # fmt: skip
    assert NEEDS["Procedure"] == ("delivery-procedures",)  # rules.md v3: read for deliveries alone
    assert NEEDS["Immunization"] == ("live-vaccines",)  # rules.md v3: live vaccines given (N19)
    observation = set(NEEDS["Observation"])
    # The BP panel code must be fetched for its components to reach systolic-bp / diastolic-bp.
    assert {"blood-pressure", "systolic-bp", "diastolic-bp"} <= observation
    assert {
        "creatinine",
        "egfr",
        "upcr",
        "tacrolimus-level",
        "potassium",
        "magnesium",
        "glucose",
        "glucose-fasting",
        "hba1c",
        "hcg-qualitative",
        "hcg-quantitative",
        "pregnancy-status",
        "edd",
        "breastfeeding-status",
        "igg",
        "hbsag",
    } <= observation
    assert {"lupus", "lupus-nephritis", "pregnancy", "lactation", "hepatitis-b"} <= set(NEEDS["Condition"])
    assert "rituximab" in NEEDS["AllergyIntolerance"]
    for names in NEEDS.values():
        assert len(names) == len(set(names))


def test_citations_are_labelled_absolute_links():
    for key, (label, url) in CITATIONS.items():
        assert label and url.startswith("https://"), key


def kitchen_sink() -> RuleInput:
    """A patient for whom most findings fire at once."""
    return make(
        conditions=(
            cond(*LUPUS_NEPHRITIS),
            cond("lupus-nephritis", "lupus-nephritis-class-v", name="SLE glomerulonephritis, WHO class V"),
            PREGNANT,
            cond("lactation"),
            cond("hepatitis-b"),
        ),
        meds=(
            med(MYCOPHENOLATE, name="mycophenolate mofetil 500 MG", days=400),
            med("cyclophosphamide", status="completed", days=900, ended_days=700),
            med("tacrolimus", name="tacrolimus 1 MG (2025)", days=500),
            med("other-calcineurin-inhibitors", name="cyclosporine"),
            med("cyp3a4-strong-inhibitors", name="clarithromycin 500 MG"),
            med("nephrotoxins", name="ibuprofen 400 MG"),
        ),
        labs=[
            lab("creatinine", 0.8, days=520),
            lab("creatinine", 1.3, days=3),
            lab("egfr", 40, days=3),
            lab("potassium", 5.9, days=3),
            lab("magnesium", 1.3, days=3),
            lab("tacrolimus-level", 12, days=3),
            lab("hba1c", 7.0, days=3),
            lab("upcr", 2.0, days=420),
            lab("upcr", 1.8, days=3),
            bp(170, 100, days=2),
        ],
    )


def test_findings_are_complete_and_cite_known_sources():
    evaluation = evaluate(kitchen_sink())
    fired = {f.id for f in evaluation.findings}
    assert fired >= {
        "P1",
        "P2",
        "P4",
        "P5",
        "P7",
        "S7",
        "N3",
        "N4",
        "N5",
        "N6",
        "N7",
        "N8",
        "N9",
        "N10",
        "N12",
        "N13",
        "N14",
    }
    topics = {"P": "pregnancy", "S": "salvage-context", "N": "nephrotoxicity-monitoring"}
    for f in evaluation.findings:
        assert f.topic == topics[f.id[0]]
        assert f.indicator in ("info", "warning", "critical")
        assert 0 < len(f.summary) < 120, f.summary
        assert f.detail and all(key in CITATIONS for key in f.citations) and f.citations
        assert all(e.reference for e in f.evidence if e.label != "Allergy")
    assert {f.id for f in evaluation.findings} | {q.id for q in evaluation.quiet} == set(RULES)


def test_evaluate_is_deterministic():
    first, second = evaluate(kitchen_sink()), evaluate(kitchen_sink())

    def strip(ev):
        return [
            (f.id, f.summary, f.detail, f.missing, [(e.label, e.value, e.when) for e in f.evidence])
            for f in ev.findings
        ]

    assert strip(first) == strip(second)
    assert [q.reason for q in first.quiet] == [q.reason for q in second.quiet]
    inp = kitchen_sink()
    assert evaluate(inp) == evaluate(inp)


# --- scope --------------------------------------------------------------------------------------------------
def test_out_of_scope_without_lupus_gives_one_quiet_and_no_findings():
    evaluation = evaluate(make(conditions=(PREGNANT,)))
    assert evaluation.findings == []
    assert [q.id for q in evaluation.quiet] == ["scope"]
    assert "out of scope" in evaluation.quiet[0].reason


def test_inactive_lupus_is_out_of_scope():
    evaluation = evaluate(make(conditions=(cond(*LUPUS_NEPHRITIS, active=False),)))
    assert evaluation.findings == []


def test_any_indication_runs_pregnancy_and_monitoring_but_salvage_needs_lupus_nephritis():
    evaluation = evaluate(make(conditions=(PREGNANT,), scope="any-indication"))
    fired = {f.id for f in evaluation.findings}
    assert {"P1", "N1", "N11"} <= fired
    assert not any(i.startswith("S") for i in fired)
    for q in evaluation.quiet:
        if q.id.startswith("S"):
            assert "lupus nephritis" in q.reason


def test_sle_without_nephritis_gets_no_salvage_findings():
    evaluation = evaluate(make(conditions=(cond("lupus"),), labs=[lab("egfr", 30, days=2)]))
    fired = {f.id for f in evaluation.findings}
    assert "S0" not in fired
    assert {"N11", "N13"} <= fired


def test_unknown_scope_is_a_configuration_error():
    with pytest.raises(ValueError, match="scope"):
        evaluate(make(scope="transplant"))


# --- pregnancy status (decision 4) --------------------------------------------------------------------------
def test_no_pregnancy_data_is_unknown_not_negative():
    reason = stays_quiet("P1", make())
    assert "not documented" in reason
    assert "no 'pregnant' pregnancy status in the last 280 days" in reason
    assert "no positive hCG in the last 280 days" in reason


@pytest.mark.parametrize(
    ("labs", "pregnant"),
    [
        ([lab("pregnancy-status", answer="pregnant", days=100)], True),
        ([lab("pregnancy-status", answer="pregnant", days=281)], False),
        (
            [
                lab("pregnancy-status", answer="pregnant", days=100),
                lab("pregnancy-status", answer="not-pregnant", days=20),
            ],
            False,
        ),
        (
            [
                lab("pregnancy-status", answer="not-pregnant", days=100),
                lab("pregnancy-status", answer="pregnant", days=20),
            ],
            True,
        ),
        (
            [
                lab("pregnancy-status", answer="pregnant", days=100),
                lab("pregnancy-status", answer="unknown", days=20),
            ],
            True,
        ),
        ([lab("edd", answer=(NOW + timedelta(days=120)).date().isoformat(), days=60)], True),
        ([lab("edd", answer=(NOW - timedelta(days=3)).date().isoformat(), days=250)], False),
        ([lab("hcg-qualitative", answer="positive", days=280)], True),
        ([lab("hcg-qualitative", answer="positive", days=281)], False),
        (
            [
                lab("hcg-qualitative", answer="positive", days=10),
                lab("hcg-qualitative", answer="negative", days=2),
            ],
            False,
        ),
        ([lab("hcg-quantitative", 26, days=3)], True),
        ([lab("hcg-quantitative", 25, days=3)], False),  # 5-25 IU/L: indeterminate, never pregnant (v3)
        ([lab("hcg-quantitative", 900, days=10), lab("hcg-quantitative", 4, days=1)], False),
        ([lab("hcg-quantitative", 900, days=10), lab("hcg-quantitative", 12, days=1)], True),  # ends nothing
    ],
)
def test_pregnancy_is_recognised_from_each_source(labs, pregnant):
    result = run("P1", make(labs=labs))
    assert isinstance(result, Finding) is pregnant


def test_p1_pregnant_names_the_evidence_and_cites_the_source_article():
    f = fires("P1", make(labs=[lab("hcg-quantitative", 1200, days=4, rid="hcg-1")]))
    assert f.indicator == "info"
    assert "positive hCG 1200 [IU]/L on 2026-10-28" in f.detail
    assert "fomin-roberts-2016" in f.citations and "maternal-fetal medicine" in f.detail
    assert f.evidence[0].reference == "Observation/hcg-1"


# --- P2-P6 --------------------------------------------------------------------------------------------------
def test_p2_teratogens_in_pregnancy_are_each_offered_for_stopping():
    stored = med(MYCOPHENOLATE, "teratogens", name="mycophenolate mofetil 500 MG", rid="mmf-1")
    drafted = med("methotrexate", "teratogens", name="methotrexate 2.5 MG", draft=True, rid="mtx-draft")
    f = fires("P2", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), meds=(stored, drafted)))
    assert f.indicator == "critical"
    stops = [s for s in f.suggestions if isinstance(s, StopMedication)]
    assert [s.medication.id for s in stops] == ["mmf-1", "mtx-draft"]
    assert stops[1].label.startswith("Remove the draft")
    leflunomide = med("leflunomide", name="leflunomide 20 MG")
    f = fires("P2", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), meds=(leflunomide,)))
    assert "cholestyramine washout" in f.detail


def test_p2_quiet_without_teratogen_or_without_pregnancy():
    stays_quiet("P2", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT)))
    stays_quiet("P2", make(meds=(med(MYCOPHENOLATE, "teratogens"),)))
    stopped = med(MYCOPHENOLATE, "teratogens", status="stopped", days=300, ended_days=200)
    stays_quiet("P2", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), meds=(stopped,)))


@pytest.mark.parametrize(("age", "fire"), [(11, False), (12, True), (55, True), (56, False)])
def test_p3_age_band(age, fire):
    inp = make(patient=woman(age), meds=(med(MYCOPHENOLATE, draft=True),))
    assert isinstance(run("P3", inp), Finding) is fire


def test_p3_suggests_a_urine_hcg_and_stays_quiet_after_a_recent_test():
    inp = make(meds=(med(MYCOPHENOLATE),))
    f = fires("P3", inp)
    assert f.suggestions == (
        OrderLabs(
            (("2106-3", "Choriogonadotropin (pregnancy test) [Presence] in Urine"),),
            "Order a urine pregnancy test (hCG)",
        ),
    )
    assert "6 weeks before conception" in f.detail
    reason = stays_quiet(
        "P3", make(meds=(med(MYCOPHENOLATE),), labs=[lab("hcg-qualitative", answer="negative", days=30)])
    )
    assert "2026-10-02" in reason
    fires("P3", make(meds=(med(MYCOPHENOLATE),), labs=[lab("hcg-qualitative", answer="negative", days=31)]))


def test_p3_male_is_quiet_but_unknown_sex_is_not_read_as_male():
    assert "male" in stays_quiet(
        "P3", make(patient=Patient("p", "male", date(1990, 1, 1)), meds=(med(MYCOPHENOLATE),))
    )
    f = fires("P3", make(patient=Patient("p", None, None), meds=(med(MYCOPHENOLATE),)))
    assert "sex not recorded as female or male" in f.missing and "birth date not recorded" in f.missing


def test_p3_defers_to_p1_when_pregnant_and_needs_mycophenolate():
    stays_quiet("P3", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), meds=(med(MYCOPHENOLATE),)))
    stays_quiet("P3", make())


def test_p4_breastfeeding_says_the_label_disagrees():
    f = fires("P4", make(conditions=(cond(*LUPUS_NEPHRITIS), cond("lactation", name="Breastfeeding"))))
    assert "label" in f.detail and "ACR 2020" in f.detail and "BSR 2022" in f.detail
    fires("P4", make(labs=[lab("breastfeeding-status", answer="positive", days=40)]))
    stays_quiet("P4", make(labs=[lab("breastfeeding-status", answer="positive", days=300)]))


@pytest.mark.parametrize(
    ("reading", "fire"),
    [((139, 89, 3), False), ((140, 85, 3), True), ((130, 90, 7), True), ((150, 95, 8), False)],
)
def test_p5_blood_pressure_in_pregnancy(reading, fire):
    systolic, diastolic, days = reading
    inp = make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), labs=[bp(systolic, diastolic, days=days)])
    result = run("P5", inp)
    assert isinstance(result, Finding) is fire
    if fire:
        assert result.indicator == "warning" and "pre-eclampsia" in result.detail


def test_p5_pre_eclampsia_condition_fires_without_readings():
    f = fires(
        "P5",
        make(
            conditions=(
                cond(*LUPUS_NEPHRITIS),
                PREGNANT,
                cond("pregnancy-hypertension", name="Pre-eclampsia"),
            )
        ),
    )
    assert "Pre-eclampsia on the problem list" in f.detail


def test_p6_trough_in_pregnancy_for_a_patient_already_on_tacrolimus():
    on_tacrolimus = (med("tacrolimus", days=200),)
    conditions = (cond(*LUPUS_NEPHRITIS), PREGNANT)
    f = fires(
        "P6", make(conditions=conditions, meds=on_tacrolimus, labs=[lab("tacrolimus-level", 6, days=29)])
    )
    assert f.suggestions == (
        OrderLabs((("11253-2", "Tacrolimus [Mass/volume] in Blood"),), "Order a tacrolimus trough level"),
    )
    assert "no tacrolimus level in the last 28 days" in f.missing
    assert "6 ng/mL on 2026-10-03" in f.detail
    stays_quiet(
        "P6", make(conditions=conditions, meds=on_tacrolimus, labs=[lab("tacrolimus-level", 6, days=28)])
    )
    assert "new start" in stays_quiet("P6", make(conditions=conditions))


# --- salvage family -----------------------------------------------------------------------------------------
def test_s0_first_agent_names_the_north_american_debate():
    f = fires("S0", make())
    assert "North American" in f.detail and "fomin-roberts-2016" in f.citations
    with_mmf_draft = fires("S0", make(meds=(med(MYCOPHENOLATE, name="mycophenolate mofetil", draft=True),)))
    assert "ordered alongside" in with_mmf_draft.detail
    assert "earlier anchor-drug" in stays_quiet(
        "S0", make(meds=(med("cyclophosphamide", status="completed"),))
    )


def s1_input(after: float, *, start: datetime | None = None, before: float | None = 2.0) -> RuleInput:
    start = start or ago(220)
    labs = [lab("upcr", after, days=5)]
    if before is not None:
        labs.append(lab("upcr", before, when=start - timedelta(days=3), days=0))
    return make(meds=(med(MYCOPHENOLATE, name="mycophenolate mofetil", start=start),), labs=labs)


def test_s1_inadequate_response_to_mycophenolate():
    f = fires("S1", s1_input(1.5))
    assert "25% lower" in f.detail and "after mycophenolate has failed" in f.detail
    assert "1.5 g/g" in f.summary


def test_s1_quiet_on_response_or_partial_response():
    assert "below 0.5 g/g" in stays_quiet("S1", s1_input(0.4))
    assert "50%" in stays_quiet("S1", s1_input(1.0))  # exactly 50% below 2.0
    fires("S1", s1_input(1.01))


def test_s1_needs_six_calendar_months_of_mycophenolate():
    six_months = datetime.combine(months_before(NOW.date(), 6), NOW.time(), tzinfo=UTC)
    fires("S1", s1_input(1.5, start=six_months))
    reason = stays_quiet("S1", s1_input(1.5, start=six_months + timedelta(days=1)))
    assert "less than 6 months" in reason


def test_s1_without_a_pre_treatment_upcr_skips_the_fall_test_and_says_so():
    f = fires("S1", s1_input(0.6, before=None))
    assert "no UPCR from before mycophenolate began" in f.missing


def test_s2_both_anchor_drugs():
    cyc = med("cyclophosphamide", status="completed", days=900, ended_days=800)
    f = fires("S2", make(meds=(cyc, med(MYCOPHENOLATE, days=300))))
    assert "Chinese cohorts" in f.detail and {"liu-2015", "mok-2016"} <= set(f.citations)
    assert "cyclophosphamide" in stays_quiet("S2", make(meds=(med(MYCOPHENOLATE),)))


def test_s3_names_hepatitis_b_as_a_barrier_and_leaves_the_action_to_n14():
    inp = make(labs=[lab("hbsag", answer="positive", days=100)])
    f = fires("S3", inp)
    assert "hepatitis B" in f.summary
    assert "rituximab cannot be used" in f.detail and "N14" in f.detail
    assert "prophylaxis" not in f.detail
    assert "prophylaxis" in fires("N14", inp).detail


@pytest.mark.parametrize(("igg", "fire"), [(499, True), (500, False)])
def test_s3_low_igg(igg, fire):
    assert isinstance(run("S3", make(labs=[lab("igg", igg, days=50)])), Finding) is fire


def test_s3_other_barriers_and_the_quiet_reason():
    allergy = Allergy("alg-1", frozenset({"rituximab"}), "rituximab", True)
    assert "allergy" in fires("S3", make(allergies=(allergy,))).detail
    assert "pregnancy" in fires("S3", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT))).detail
    reason = stays_quiet(
        "S3", make(labs=[lab("hbsag", answer="negative", days=100), lab("igg", 900, days=50)])
    )
    assert "HBsAg negative on 2026-07-24" in reason and "IgG 900 mg/dL" in reason
    assert "no HBsAg result on record" in stays_quiet("S3", make())


def test_s4_class_v():
    f = fires("S4", make(conditions=(cond("lupus", "lupus-nephritis", "lupus-nephritis-class-v"),)))
    assert "membranous" in f.detail
    stays_quiet("S4", make())


def test_n12_duplicate_calcineurin_inhibitors():
    f = fires("N12", make(meds=(med("other-calcineurin-inhibitors", name="cyclosporine"),)))
    assert f.indicator == "critical" and "24 hours" in f.detail and f.suggestions == ()
    stored = med("tacrolimus", rid="tac-old", days=200)
    fires("N12", make(meds=(stored,)))
    assert "renews tac-old" in stays_quiet(
        "N12", make(meds=(stored,), trigger=tacrolimus_draft(prior="tac-old"))
    )
    # rules.md v3: of two identical drafts, the later one in draftOrders is the duplicate
    second = med("tacrolimus", draft=True, rid="tac-draft-2", name="tacrolimus 1 MG Oral Capsule")
    inp = make()
    inp = RuleInput(
        PatientRecord(NOW, inp.record.patient, inp.record.conditions, (inp.orders[0], second)),
        inp.orders,
        inp.thresholds,
    )
    f = fires("N12", inp)
    assert [(s.medication.id, s.drafts_only) for s in f.suggestions] == [("tac-draft-2", True)]
    assert "24 hours" not in f.detail
    stays_quiet("N12", make(meds=(med("tacrolimus", status="stopped", days=400, ended_days=300),)))


def test_n12_and_n13_do_not_need_lupus_nephritis():
    sle_only = (cond("lupus"),)
    fires("N12", make(conditions=sle_only, meds=(med("other-calcineurin-inhibitors", name="cyclosporine"),)))
    fires("N13", make(conditions=sle_only, labs=[lab("egfr", 30, days=2)]))
    fires("N13", make(conditions=(), scope="any-indication", labs=[lab("egfr", 30, days=2)]))


@pytest.mark.parametrize(("egfr", "fire"), [(46, False), (45, True)])
def test_n13_egfr(egfr, fire):
    result = run("N13", make(labs=[lab("egfr", egfr, days=10)]))
    assert isinstance(result, Finding) is fire
    if fire:
        assert result.indicator == "warning" and "45 mL/min/1.73 m²" in result.detail
        assert "calculated" not in result.summary
    else:
        assert "newest eGFR 46 mL/min/1.73 m² on 2026-10-22 is above 45" in result.reason


def test_n13_ignores_an_old_egfr_and_says_it_is_missing():
    assert "no eGFR in the last 30 days" in stays_quiet("N13", make(labs=[lab("egfr", 30, days=31)]))


def test_n13_calculates_egfr_from_creatinine_when_none_is_reported():
    patient = Patient("pat-1", "female", date(1976, 10, 1))  # 50 on the day of the creatinine
    inp = make(patient=patient, labs=[lab("creatinine", 2.0, days=5, rid="cr-1")])
    f = fires("N13", inp)
    assert "calculated (CKD-EPI 2021)" in f.summary and "eGFR 30 " in f.summary
    assert "30 mL/min/1.73 m² calculated (CKD-EPI 2021) from creatinine 2 mg/dL on 2026-10-27" in f.detail
    assert "ckd-epi-2021" in f.citations
    assert [e.reference for e in f.evidence] == [None, "Observation/cr-1"]
    assert not any("no eGFR" in m for m in f.missing)
    # A reported eGFR wins over the calculation, even when the calculated one would fire.
    reported = make(patient=patient, labs=[lab("creatinine", 2.0, days=5), lab("egfr", 50, days=5)])
    stays_quiet("N13", reported)


@pytest.mark.parametrize(
    ("patient", "gap"),
    [
        (Patient("p", None, date(1976, 1, 1)), "sex is not recorded as female or male"),
        (Patient("p", "female", None), "the birth date is not recorded"),
        (Patient("p", "male", date(2010, 1, 1)), "eGFR not calculated (under 18, no recent height)"),
    ],
)
def test_n13_does_not_guess_what_the_equation_needs(patient, gap):
    reason = stays_quiet("N13", make(patient=patient, labs=[lab("creatinine", 2.0, days=5)]))
    assert gap in reason


# Worked values: clinical.md §5 (female 50 y, 2.0 mg/dL ≈ 30); the NKF CKD-EPI 2021 calculator values quoted
# in pharmaverse/admiral tests/testthat/test-compute_kidney.R (1.09 mg/dL, 55 y, male → 80; 85 µmol/L, 65 y,
# female → 66) and in a public calculator's comparison notes (1.2 mg/dL, 55 y, male → 71).
@pytest.mark.parametrize(
    ("creatinine", "age", "female", "expected"),
    [(2.0, 50, True, 30), (1.09, 55, False, 80), (85 / 88.4, 65, True, 66), (1.2, 55, False, 71)],
)
def test_ckd_epi_2021_matches_published_worked_values(creatinine, age, female, expected):
    assert round(ckd_epi_2021(creatinine, age, female)) == expected


def test_ckd_epi_2021_is_continuous_at_kappa_and_applies_the_sex_factor():
    assert ckd_epi_2021(0.7, 40, True) == pytest.approx(142 * 0.9938**40 * 1.012)
    assert ckd_epi_2021(0.9, 40, False) == pytest.approx(142 * 0.9938**40)
    assert ckd_epi_2021(0.5, 40, True) == pytest.approx(142 * (0.5 / 0.7) ** -0.241 * 0.9938**40 * 1.012)


def test_s7_bridge_not_destination():
    twelve_months = datetime.combine(months_before(NOW.date(), 12), NOW.time(), tzinfo=UTC)
    long_course = (med("tacrolimus", start=twelve_months - timedelta(days=1)),)
    f = fires("S7", make(meds=long_course, labs=[lab("upcr", 0.9, days=10)]))
    assert "a bridge, not a destination" in f.detail and "17%" in f.detail
    assert "not more than 12 months" in stays_quiet(
        "S7", make(meds=(med("tacrolimus", start=twelve_months),))
    )
    assert "response" in stays_quiet("S7", make(meds=long_course, labs=[lab("upcr", 0.49, days=100)]))
    assert "no UPCR during tacrolimus exposure" in fires("S7", make(meds=long_course)).missing


# --- N1 -----------------------------------------------------------------------------------------------------
def test_n1_names_each_missing_baseline_and_orders_the_labs():
    f = fires("N1", make())
    codes = [code for s in f.suggestions for code, _ in s.labs]
    assert codes == ["2160-0", "2823-3", "19123-9", "2345-7", "2890-2"]
    for gap in (
        "no creatinine or eGFR",
        "no potassium",
        "no magnesium",
        "no glucose or HbA1c",
        "no blood pressure",
        "no UPCR",
    ):
        assert f"{gap} in the last 30 days" in f.missing
    assert "blood pressure" in f.detail


def test_n1_quiet_with_a_full_recent_baseline_and_egfr_stands_in_for_creatinine():
    stays_quiet("N1", make(labs=full_baseline(days=30)))
    labs = [item for item in full_baseline() if not (isinstance(item, tuple) and item[0] == "creatinine")]
    stays_quiet("N1", make(labs=[*labs, lab("egfr", 80, days=3)]))


def test_n1_only_blood_pressure_missing_has_no_lab_order():
    labs = [item for item in full_baseline() if not isinstance(item, list)]
    f = fires("N1", make(labs=labs))
    assert f.suggestions == () and "Record a blood pressure" in f.detail


def test_n1_old_or_unusable_values_do_not_count():
    labs = [item for item in full_baseline() if not (isinstance(item, tuple) and item[0] == "potassium")]
    labs += [
        lab("potassium", 4.0, days=31),
        unusable("potassium", days=2, reason="potassium on 2026-10-30 in unit 'mg/dL' could not be used"),
    ]
    f = fires("N1", make(labs=labs))
    assert "no potassium in the last 30 days" in f.missing
    assert "potassium on 2026-10-30 in unit 'mg/dL' could not be used" in f.missing


def test_missing_resource_types_are_named_not_read_as_normal():
    inp = make(unavailable={"Observation"})
    assert "lab results and vital signs (Observations) could not be retrieved" in fires("N1", inp).missing
    assert "could not be retrieved" in stays_quiet("P1", inp)


# --- N2 / N3 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("newest", "expected"), [(1.19, None), (1.2, "N2"), (1.29, "N2"), (1.3, "N3"), (2.0, "N3")]
)
def test_creatinine_rise_tiers_for_a_new_start(newest, expected):
    inp = make(
        labs=[
            lab("creatinine", 1.0, days=60),
            lab("creatinine", 1.1, days=20),
            lab("creatinine", newest, days=2),
        ]
    )
    fired = {i for i in ("N2", "N3") if isinstance(run(i, inp), Finding)}
    assert fired == ({expected} if expected else set())
    if expected:
        f = fires(expected, inp)
        assert f.indicator == {"N2": "warning", "N3": "critical"}[expected]
        assert {"N2": "before tacrolimus has started", "N3": "risen before tacrolimus"}[expected] in f.detail


def test_creatinine_quiet_reason_names_the_numbers():
    inp = make(labs=[lab("creatinine", 1.0, days=60), lab("creatinine", 1.19, days=2)])
    reason = stays_quiet("N2", inp)
    assert (
        "creatinine 1.19 mg/dL on 2026-10-30 is 19% (0.19 mg/dL) above the baseline 1 mg/dL on 2026-09-02"
        in (reason)
    )
    assert "less than 20%" in reason


def test_creatinine_baseline_on_tacrolimus_is_the_lowest_before_first_exposure():
    inp = make(
        meds=(med("tacrolimus", days=200),),
        labs=[
            lab("creatinine", 0.6, days=400),  # outside the 90 days before exposure
            lab("creatinine", 0.8, days=230),
            lab("creatinine", 0.9, days=210),
            lab("creatinine", 0.7, days=150),  # after exposure began: not a baseline
            lab("creatinine", 1.12, days=3),
        ],
    )
    f = fires("N3", inp)
    assert "40% (0.32 mg/dL) above the baseline 0.8 mg/dL" in f.detail
    assert "before tacrolimus began on 2026-04-15" in f.detail
    assert "17%" in f.detail and "fomin-roberts-2016" in f.citations
    assert [e.value for e in f.evidence] == ["1.12 mg/dL", "0.8 mg/dL"]


def test_creatinine_without_baseline_or_recent_value_is_quiet_and_says_why():
    reason = stays_quiet("N2", make(labs=[lab("creatinine", 2.0, days=2)]))
    assert reason == "no creatinine in the last 90 days other than the newest to serve as a baseline"
    assert "no creatinine in the last 30 days" in stays_quiet(
        "N3", make(labs=[lab("creatinine", 2.0, days=40)])
    )


def test_converted_and_unusable_creatinine_are_shown():
    inp = make(
        labs=[
            lab("creatinine", 1.0, days=60),
            lab("creatinine", 1.4, days=5, original="124 umol/L"),
            unusable(
                "creatinine", days=1, reason="creatinine on 2026-10-31 in unit 'mmol/dL' could not be used"
            ),
        ]
    )
    f = fires("N3", inp)
    assert "1.4 mg/dL (recorded 124 umol/L)" in f.detail
    assert "creatinine on 2026-10-31 in unit 'mmol/dL' could not be used" in f.missing


# --- N4-N7 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "fire"), [(5.5, False), (5.6, True)])
def test_n5_potassium(value, fire):
    result = run("N5", make(labs=[lab("potassium", value, days=2, rid="k-1")]))
    assert isinstance(result, Finding) is fire
    if fire:
        assert result.indicator == "warning" and result.evidence[0].reference == "Observation/k-1"
    else:
        assert result.reason == "newest potassium 5.5 mmol/L on 2026-10-30 is not above 5.5"


def test_single_lab_rules_read_only_the_newest_recent_value():
    stays_quiet("N5", make(labs=[lab("potassium", 6.1, days=10), lab("potassium", 4.8, days=1)]))
    assert "no potassium in the last 30 days" in stays_quiet(
        "N5", make(labs=[lab("potassium", 6.1, days=31)])
    )
    fires("N5", make(labs=[lab("potassium", 6.1, days=30, hours=9)]))  # 30 days ago, early that day


def test_only_unusable_results_newer_than_the_value_used_are_reported():
    old_bad = unusable("potassium", days=45, reason="potassium on 2026-09-17 has no usable value")
    new_bad = unusable(
        "potassium", days=1, reason="potassium on 2026-10-31 in unit 'mg/dL' could not be used"
    )
    reason = stays_quiet("N5", make(labs=[old_bad, lab("potassium", 4.8, days=3), new_bad]))
    assert "2026-10-31 in unit 'mg/dL' could not be used" in reason
    assert "2026-09-17" not in reason
    assert "2026-09-17" not in stays_quiet("N5", make(labs=[old_bad]))


@pytest.mark.parametrize(("value", "fire"), [(1.6, False), (1.59, True)])
def test_n6_magnesium(value, fire):
    result = run("N6", make(labs=[lab("magnesium", value, days=2)]))
    assert isinstance(result, Finding) is fire
    assert not fire or result.indicator == "info"


@pytest.mark.parametrize(
    ("value", "with_mycophenolate", "fire"),
    [(10, False, False), (10.1, False, True), (8, True, False), (8.1, True, True)],
)
def test_n4_tacrolimus_level(value, with_mycophenolate, fire):
    meds = (med(MYCOPHENOLATE, draft=True),) if with_mycophenolate else ()
    result = run("N4", make(meds=meds, labs=[lab("tacrolimus-level", value, days=3)]))
    assert isinstance(result, Finding) is fire
    if not fire:
        assert f"not above {8 if with_mycophenolate else 10} ng/mL" in result.reason


@pytest.mark.parametrize(
    ("systolic", "diastolic", "indicator"),
    [
        (139, 89, None),
        (140, 80, "info"),
        (130, 90, "info"),
        (159, 99, "info"),
        (160, 100, "warning"),
        (165, 105, "warning"),
        (166, 100, "critical"),
        (150, 106, "critical"),
    ],
)
def test_n7_blood_pressure_tiers(systolic, diastolic, indicator):
    result = run("N7", make(labs=[bp(systolic, diastolic, days=1)]))
    if indicator is None:
        assert result.reason == "newest blood pressure 139/89 mmHg on 2026-10-31 is below 140/90"
    else:
        assert result.indicator == indicator
        assert f"{systolic}/{diastolic} mmHg" in result.summary


def test_n7_uses_the_newest_reading():
    stays_quiet("N7", make(labs=[bp(180, 110, days=10), bp(128, 80, days=1)]))


# --- N8-N11 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "fire"),
    [
        (("glucose-fasting", 125, "1558-6"), False),
        (("glucose-fasting", 126, "1558-6"), True),
        (("glucose", 126, "1558-6"), True),  # a fasting code in the glucose group is judged as fasting
        (("glucose", 199, "2345-7"), False),
        (("glucose", 200, "2345-7"), True),
        (("hba1c", 6.4, "4548-4"), False),
        (("hba1c", 6.5, "4548-4"), True),
    ],
)
def test_n8_hyperglycaemia_since_tacrolimus_began(entry, fire):
    group, value, code = entry
    inp = make(meds=(med("tacrolimus", days=100),), labs=[lab(group, value, days=50, code=code)])
    assert isinstance(run("N8", inp), Finding) is fire


def test_n8_ignores_values_before_tacrolimus_and_new_starts():
    before = make(meds=(med("tacrolimus", days=100),), labs=[lab("hba1c", 8.0, days=101)])
    assert "no glucose or HbA1c since tacrolimus began" in stays_quiet("N8", before)
    stays_quiet("N8", make(labs=[lab("hba1c", 8.0, days=5)]))


def test_n9_strong_cyp3a4_and_the_moderate_switch():
    f = fires("N9", make(meds=(med("cyp3a4-strong-inducers", name="rifampin 300 MG"),)))
    assert "lower tacrolimus levels" in f.detail and "1 week" in f.detail
    diltiazem = (med("cyp3a4-moderate-inhibitors", name="diltiazem 120 MG"),)
    assert "include_moderate_cyp3a4 is off" in stays_quiet("N9", make(meds=diltiazem))
    assert "raise tacrolimus levels" in fires("N9", make(meds=diltiazem, include_moderate_cyp3a4=True)).detail


def test_n10_active_nephrotoxin_only():
    assert fires("N10", make(meds=(med("nephrotoxins", name="ibuprofen 400 MG"),))).indicator == "warning"
    stays_quiet("N10", make(meds=(med("nephrotoxins", status="stopped", days=100, ended_days=90),)))


def test_n11_new_start_schedule():
    f = fires("N11", make())
    assert "every 2 weeks in month 1" in f.detail and "bridge, not a destination" in f.detail
    assert "not a new start" in stays_quiet(
        "N11", make(meds=(med("tacrolimus", status="completed", days=800),))
    )


def test_the_triggering_order_is_never_earlier_exposure():
    active_trigger = med("tacrolimus", trigger=True, days=400, rid="tac-now")
    inp = make(trigger=active_trigger)
    fires("N11", inp)
    stays_quiet("S7", inp)


# --- catalog version 2: pregnancy that ends -----------------------------------------------------------------
def outcome(days: float, name: str = "Encounter for full-term uncomplicated delivery") -> Condition:
    return Condition(
        f"cond-{next(_ids)}", frozenset({"pregnancy-outcome"}), name, False, onset=ago(days),
        clinical_status="resolved",
    )  # fmt: skip


def pregnancy_condition(**kw) -> Condition:
    kw.setdefault("onset", ago(200))
    return Condition(f"cond-{next(_ids)}", frozenset({"pregnancy"}), "Pregnancy", **kw)


def pregnant_by(*, conditions=(), labs=()) -> bool:
    return isinstance(run("P1", make(conditions=(cond(*LUPUS_NEPHRITIS), *conditions), labs=labs)), Finding)


def test_a_delivery_ends_an_earlier_pregnant_answer_and_problem_but_not_a_later_one():
    answer = lab("pregnancy-status", answer="pregnant", days=200)
    stale = pregnancy_condition(active=True)
    assert not pregnant_by(conditions=(stale, outcome(30)), labs=[answer])
    reason = stays_quiet("P1", make(conditions=(cond(*LUPUS_NEPHRITIS), outcome(30)), labs=[answer]))
    assert "was ended by Encounter for full-term uncomplicated delivery on 2026-10-02" in reason
    assert pregnant_by(conditions=(outcome(300),), labs=[answer])  # a new pregnancy after an old delivery


def test_a_resolved_pregnancy_condition_ends_at_its_abatement_else_its_last_update():
    hcg = lab("hcg-quantitative", 900, days=200)
    resolved = {"active": False, "clinical_status": "resolved"}
    assert not pregnant_by(conditions=(pregnancy_condition(abated=ago(20), **resolved),), labs=[hcg])
    assert not pregnant_by(conditions=(pregnancy_condition(last_updated=ago(20), **resolved),), labs=[hcg])
    assert pregnant_by(conditions=(pregnancy_condition(abated=ago(250), **resolved),), labs=[hcg])
    refuted = pregnancy_condition(abated=ago(20), confirmed=False, **resolved)
    assert pregnant_by(conditions=(refuted,), labs=[hcg])


def test_not_pregnant_and_negative_hcg_end_only_what_came_before_and_unknown_does_nothing():
    assert not pregnant_by(
        labs=[lab("hcg-quantitative", 900, days=100), lab("pregnancy-status", answer="not-pregnant", days=10)]
    )
    assert pregnant_by(
        labs=[lab("pregnancy-status", answer="not-pregnant", days=100), lab("hcg-quantitative", 900, days=10)]
    )
    assert pregnant_by(
        labs=[lab("hcg-quantitative", 900, days=100), lab("pregnancy-status", answer="unknown", days=10)]
    )
    assert not pregnant_by(labs=[lab("pregnancy-status", answer="unknown", days=10)])
    assert not pregnant_by(labs=[lab("hcg-quantitative", 900, days=100), lab("hcg-quantitative", 3, days=90)])


@pytest.mark.parametrize(("past", "pregnant"), [(14, True), (15, False)])
def test_an_estimated_delivery_date_more_than_14_days_past_ends_the_pregnancy(past, pregnant):
    labs = [
        lab("pregnancy-status", answer="pregnant", days=250),
        lab("edd", answer=(NOW - timedelta(days=past)).date().isoformat(), days=240),
    ]
    assert pregnant_by(labs=labs) is pregnant


def test_a_positive_hcg_after_the_overdue_point_is_a_new_pregnancy():
    old = lab("edd", answer=(NOW - timedelta(days=40)).date().isoformat(), days=240)
    assert pregnant_by(labs=[old, lab("hcg-quantitative", 400, days=5)])  # after EDD + 14 days
    # Within 14 days of the due date an hCG may still be that pregnancy's: it does not restart one.
    assert not pregnant_by(labs=[old, lab("hcg-quantitative", 400, days=30)])


def test_edd_overdue_days_is_a_setting():
    labs = [
        lab("pregnancy-status", answer="pregnant", days=250),
        lab("edd", answer=(NOW - timedelta(days=20)).date().isoformat(), days=240),
    ]
    inp = make(labs=labs, edd_overdue_days=21)
    fires("P1", inp)


@pytest.mark.parametrize(("days", "note"), [(14, False), (15, True)])
def test_an_old_positive_hcg_still_counts_and_the_card_says_nothing_later_confirms_it(days, note):
    f = fires("P1", make(labs=[lab("hcg-quantitative", 850, days=days)]))
    assert ("no later result confirms the pregnancy" in f.detail) is note
    if note:
        assert f"{days} days ago" in f.detail


def test_a_later_pregnant_answer_or_an_active_condition_confirms_an_old_hcg():
    hcg = lab("hcg-quantitative", 850, days=40)
    later = lab("pregnancy-status", answer="pregnant", days=10)
    assert "confirms" not in fires("P1", make(labs=[hcg, later])).detail
    inp = make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), labs=[hcg])
    assert "confirms" not in fires("P1", inp).detail


def test_p2_after_delivery_is_quiet_and_p3_asks_for_a_negative_test():
    inp = make(
        conditions=(cond(*LUPUS_NEPHRITIS), outcome(30)),
        meds=(med(MYCOPHENOLATE, "teratogens", name="mycophenolate mofetil"),),
        labs=[lab("pregnancy-status", answer="pregnant", days=200)],
    )
    stays_quiet("P2", inp)
    assert "no negative hCG in the last 30 days" in fires("P3", inp).missing


def test_p3_a_positive_or_unreadable_recent_hcg_is_not_the_negative_test_it_asks_for():
    # Positive hCG 20 days ago, then ended by a delivery: not pregnant now, and no negative test.
    inp = make(
        conditions=(cond(*LUPUS_NEPHRITIS), outcome(5)),
        meds=(med(MYCOPHENOLATE),),
        labs=[lab("hcg-quantitative", 900, days=20)],
    )
    fires("P3", inp)
    stays_quiet("P3", make(meds=(med(MYCOPHENOLATE),), labs=[lab("hcg-quantitative", 4, days=3)]))
    # An hCG only flagged N (normal) is not the negative test either (rules.md v3), and the card says so.
    flagged = LabValue(
        "hcg-n", "", ago(2), None, None, answer="negative", original="interpretation N", flag_only=True
    )
    f = fires("P3", make(meds=(med(MYCOPHENOLATE),), labs=[("hcg-qualitative", flagged)]))
    assert any("only flagged N" in line and "neither a positive nor a negative" in line for line in f.missing)
    # 5-25 IU/L is indeterminate (rules.md v3): not the negative test, and the card says to repeat it.
    f = fires("P3", make(meds=(med(MYCOPHENOLATE),), labs=[lab("hcg-quantitative", 25, days=3)]))
    assert any("is indeterminate: repeat in 48–72 hours" in line for line in f.missing)


# --- P7: breastfeeding and drugs not compatible with it -----------------------------------------------------
def test_p7_lactating_with_a_teratogen_warns_and_offers_to_stop_it():
    stored = med(MYCOPHENOLATE, "teratogens", name="mycophenolate mofetil 500 MG", rid="mmf-1")
    inp = make(meds=(stored,), labs=[lab("breastfeeding-status", answer="positive", days=10)])
    f = fires("P7", inp)
    assert f.indicator == "warning" and "not compatible with breastfeeding" in f.detail
    assert [(s.medication.id, s.reason) for s in f.suggestions] == [
        ("mmf-1", "Not compatible with breastfeeding (ACR 2020 reproductive health guideline)")
    ]
    stays_quiet("P7", make(meds=(stored,)))
    stays_quiet("P7", make(labs=[lab("breastfeeding-status", answer="positive", days=10)]))
    assert "no breastfeeding status in the last 280 days" in stays_quiet(
        "P7", make(meds=(stored,), labs=[lab("breastfeeding-status", answer="positive", days=281)])
    )


def test_p2_stop_suggestion_carries_the_reason_for_the_status_change():
    stored = med(MYCOPHENOLATE, "teratogens", name="mycophenolate mofetil", rid="mmf-1")
    f = fires("P2", make(conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT), meds=(stored,)))
    assert f.suggestions[0].reason.startswith("Not compatible with pregnancy")


# --- new start or continuing therapy ------------------------------------------------------------------------
CLASS_V = (cond("lupus", "lupus-nephritis", "lupus-nephritis-class-v", name="SLE GN, WHO class V"),)


def test_salvage_questions_are_asked_only_for_a_new_start():
    fires("S4", make(conditions=CLASS_V))
    stored = med("tacrolimus", rid="tac-old", status="cancelled")  # in the record, with no exposure
    renewal = make(conditions=CLASS_V, meds=(stored,), trigger=tacrolimus_draft(prior="tac-old"))
    assert "renews or changes MedicationRequest/tac-old" in stays_quiet("S4", renewal)
    earlier = make(
        conditions=CLASS_V, meds=(med("tacrolimus", status="completed", days=800, ended_days=700),)
    )
    assert "earlier tacrolimus exposure" in stays_quiet("S4", earlier)
    for rule_id in ("S0", "S1", "S2", "S3", "N11", "N15"):
        assert "continuing" in stays_quiet(rule_id, renewal)


def test_a_prior_prescription_not_in_the_record_is_continuing_therapy_but_n15_still_screens():
    # rules.md v3 § Data rules, New start: the patient may take tacrolimus from another prescriber or system
    renewal = make(conditions=CLASS_V, trigger=tacrolimus_draft(prior="elsewhere-1"))
    for rule_id in ("S0", "S4", "N11"):
        reason = stays_quiet(rule_id, renewal)
        assert "renews MedicationRequest/elsewhere-1, which was not found in the record" in reason
    assert fires("N15", renewal).suggestions  # not known to have been screened here: order HBsAg
    assert "earlier tacrolimus exposure" in stays_quiet(
        "N15",
        make(
            meds=(med("tacrolimus", status="completed", days=800, ended_days=700),),
            trigger=tacrolimus_draft(prior="elsewhere-1"),
        ),
    )


def test_continuing_flag_and_selection_serve_the_patient_view_service():
    from cds_service.services import SPEC_BY_ID

    PATIENT_VIEW = frozenset(SPEC_BY_ID["tacrolimus-monitoring"].findings)
    stored = med("tacrolimus", rid="tac-active", days=400)
    base = make(
        conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT),
        meds=(stored,),
        labs=[lab("upcr", 1.2, days=10)],
    )
    inp = RuleInput(base.record, (stored,), base.thresholds, base.scope, continuing=True, only=PATIENT_VIEW)
    evaluation = evaluate(inp)
    ids = {f.id for f in evaluation.findings} | {q.id for q in evaluation.quiet}
    assert ids == set(PATIENT_VIEW)
    assert not {"N11", "N15", "S0", "S4"} & ids
    assert {"P1", "S7"} <= {f.id for f in evaluation.findings}
    with pytest.raises(ValueError, match="unknown finding ids S5"):
        evaluate(RuleInput(base.record, (stored,), base.thresholds, only=frozenset({"S5"})))


# --- hepatitis B (N14, N15) ---------------------------------------------------------------------------------
def test_n14_hepatitis_b_warns_for_any_order_and_n15_screens_new_starts():
    hbsag_pos = lab("hbsag", answer="positive", days=10)
    f = fires("N14", make(labs=[hbsag_pos], trigger=tacrolimus_draft(prior="tac-old")))
    assert f.indicator == "warning" and "entecavir or tenofovir" in f.detail and "not a" in f.detail
    f = fires(
        "N14", make(conditions=(cond(*LUPUS_NEPHRITIS), cond("hepatitis-b", name="Chronic hepatitis B")))
    )
    assert "Chronic hepatitis B on the problem list" in f.detail
    resolved = Condition(
        "hbv-old", frozenset({"hepatitis-b"}), "Hepatitis B", False, clinical_status="resolved"
    )
    f = fires("N14", make(conditions=(cond(*LUPUS_NEPHRITIS), resolved)))
    assert "(resolved)" in f.detail and "monitoring" in f.detail
    fires("N14", make(labs=[lab("anti-hbc", answer="positive", days=10)]))
    assert "no HBsAg result" in stays_quiet("N14", make())
    stays_quiet("N14", make(labs=[lab("hbsag", answer="negative", days=10)]))

    f = fires("N15", make())
    assert f.indicator == "info" and f.suggestions == (
        OrderLabs(
            (("5196-1", "Hepatitis B virus surface Ag [Presence] in Serum or Plasma by Immunoassay"),),
            "Order hepatitis B surface antigen (HBsAg)",
        ),
    )
    assert "HBsAg" in stays_quiet("N15", make(labs=[lab("hbsag", answer="negative", days=2000)]))
    stays_quiet("N15", make(conditions=(cond(*LUPUS_NEPHRITIS), resolved)))
    assert "could not be retrieved" in " ".join(fires("N15", make(unavailable=("Observation",))).missing)


# --- delete suggestions for interacting drafts --------------------------------------------------------------
def test_n9_and_n10_offer_to_delete_only_drafts():
    draft = med("nephrotoxins", name="naproxen 500 MG", draft=True, rid="nsaid-draft")
    stored = med("nephrotoxins", name="ibuprofen 400 MG", rid="nsaid-stored")
    f = fires("N10", make(meds=(draft, stored)))
    assert [s.medication.id for s in f.suggestions] == ["nsaid-draft"]
    assert fires("N10", make(meds=(stored,))).suggestions == ()
    inhibitor = med("cyp3a4-strong-inhibitors", name="clarithromycin 500 MG", draft=True, rid="clari")
    f = fires("N9", make(meds=(inhibitor,)))
    assert [s.medication.id for s in f.suggestions] == ["clari"] and "Avoid the combination" in f.detail


# --- wording of N3 and N4 -----------------------------------------------------------------------------------
def test_n3_for_a_new_start_says_what_to_look_for_and_never_only_wait():
    labs = [lab("creatinine", 0.8, days=60), lab("creatinine", 1.1, days=3)]
    f = fires("N3", make(labs=labs))
    assert (
        "Find the cause before adding a calcineurin inhibitor" in f.detail and "wait" not in f.detail.lower()
    )
    on_therapy = make(labs=[lab("creatinine", 0.8, days=200), lab("creatinine", 1.1, days=3)],
                      meds=(med("tacrolimus", days=150),))  # fmt: skip
    f = fires("N3", on_therapy)
    assert "eGFR is below 60 and has fallen by 30% or more" in f.detail


def test_n4_cites_the_lupus_nephritis_trial_regimens_for_its_ceiling():
    inp = make(meds=(med(MYCOPHENOLATE),), labs=[lab("tacrolimus-level", 8.5, days=3)])
    f = fires("N4", inp)
    assert "ln-trial-regimens" in f.citations and "not from the Prograf label" in f.detail


def test_undated_active_pregnancy_conditions_count_and_cannot_be_ended_by_a_dated_event():
    undated = [pregnancy_condition(active=True, onset=None) for _ in range(2)]
    assert pregnant_by(conditions=(*undated, outcome(30)), labs=[lab("hcg-quantitative", 900, days=20)])


def test_an_hcg_only_flagged_abnormal_neither_starts_nor_ends_a_pregnancy():
    """rules.md v3: only POS/DET start and only NEG/ND end a pregnancy; an A/N flag alone is named instead."""
    flagged_a = LabValue(
        "hcg-a", "", ago(2), None, None, answer="positive", original="interpretation A", flag_only=True
    )
    result = run("P1", make(labs=[("hcg-qualitative", flagged_a)]))
    assert isinstance(result, Quiet) and "only flagged A" in result.reason
    flagged_n = LabValue(
        "hcg-n", "", ago(1), None, None, answer="negative", original="interpretation N", flag_only=True
    )
    assert isinstance(
        run("P1", make(labs=[lab("hcg-quantitative", 900, days=10), ("hcg-qualitative", flagged_n)])), Finding
    )
