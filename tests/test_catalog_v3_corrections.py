"""Rule catalog version 3: the corrections that are not about reading codes.

The N3 absolute floor on values rounded to 2 decimals, the bedside Schwartz eGFR under 18, N13 by new start
or continuing therapy, continuing-therapy wording for every finding, and the small corrected rows (N11's first
trough, P3's REMS cadence, S3's anti-CD20 barrier). Records are built from plain data as in test_rules.py;
the last tests send the fixtures through the service.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date

import pytest

from cds_service.fixtures import load_bundle, manifest
from cds_service.prefetch import templates
from cds_service.record import Allergy, Patient
from cds_service.rules import RULES, evaluate
from cds_service.rules.common import bedside_schwartz
from cds_service.rules.model import Finding, OrderLabs, RuleInput, StopMedication
from cds_service.sandbox.requests import build_request
from cds_service.services import SPEC_BY_ID, SPECS
from cds_service.terminology import Terminology
from cds_service.units import to_canonical
from tests.support import make_app
from tests.test_rules import (
    LUPUS_NEPHRITIS,
    MYCOPHENOLATE,
    NOW,
    PREGNANT,
    ago,
    bp,
    cond,
    fires,
    kitchen_sink,
    lab,
    make,
    med,
    run,
    stays_quiet,
    tacrolimus_draft,
    woman,
)

PATIENT_VIEW = SPEC_BY_ID["tacrolimus-monitoring"].only
UMOL_PER_MG_DL = 88.4


def fired(inp: RuleInput, *ids: str) -> set[str]:
    return {i for i in ids if isinstance(run(i, inp), Finding)}


def creatinine_pair(baseline: float, newest: float, *, si: bool = False) -> list:
    """A new start's baseline 60 days ago and newest 2 days ago; ``si``: the values are µmol/L, converted."""
    if si:
        return [
            lab("creatinine", baseline / UMOL_PER_MG_DL, days=60, original=f"{baseline:g} umol/L"),
            lab("creatinine", newest / UMOL_PER_MG_DL, days=2, original=f"{newest:g} umol/L"),
        ]
    return [lab("creatinine", baseline, days=60), lab("creatinine", newest, days=2)]


# --- N3 needs 30 % and 0.3 mg/dL, on values rounded to 2 decimals -------------------------------------------
@pytest.mark.parametrize(
    ("baseline", "newest", "si", "expected"),
    [
        (0.90, 1.20, False, "N3"),  # +0.30 mg/dL exactly (1.20 - 0.90 is not 0.2999… here), +33 %
        (0.90, 1.19, False, "N2"),  # +0.29 mg/dL, +32 %: below the absolute floor
        (1.00, 1.30, False, "N3"),  # +30 % exactly, +0.30 mg/dL
        (1.00, 1.29, False, "N2"),  # +29 %
        (1.34, 1.74, False, "N2"),  # +29.9 % although +0.40 mg/dL
        (1.34, 1.75, False, "N3"),  # +30.6 %, +0.41 mg/dL
        (80, 106, True, "N3"),  # 0.905 -> 0.90 and 1.199 -> 1.20 mg/dL: +0.30
        (80, 105, True, "N2"),  # 1.188 -> 1.19 mg/dL: +0.29
        (0.50, 0.70, False, "N2"),  # +40 % but +0.20 mg/dL
    ],
)
def test_n3_needs_the_relative_and_the_absolute_rise_on_rounded_values(baseline, newest, si, expected):
    inp = make(labs=creatinine_pair(baseline, newest, si=si))
    assert fired(inp, "N2", "N3") == {expected}
    f = fires(expected, inp)
    assert f.indicator == {"N2": "warning", "N3": "critical"}[expected]


def test_the_quiet_n3_says_the_absolute_floor_sent_the_rise_to_n2():
    inp = make(labs=creatinine_pair(0.90, 1.19))
    reason = stays_quiet("N3", inp)
    assert "32.2% (0.29 mg/dL) above" in reason and "less than 0.3 mg/dL, so N2 applies" in reason
    n2 = fires("N2", inp)
    assert "less than 0.3 mg/dL (the KDIGO acute kidney injury absolute criterion)" in n2.detail
    assert "kdigo-aki-2012" in n2.citations


def test_the_absolute_floor_is_a_setting():
    inp = make(labs=creatinine_pair(0.90, 1.19), creatinine_rise_critical_mg_dl=0.25)
    assert fired(inp, "N2", "N3") == {"N3"}


def test_n3_on_continuing_therapy_advises_reduction_or_hold_and_never_asserts_the_cause():
    on_therapy = make(
        labs=[lab("creatinine", 0.8, days=200), lab("creatinine", 1.2, days=3)],
        meds=(med("tacrolimus", days=150),),
    )
    f = fires("N3", on_therapy)
    assert "Consider a dose reduction or holding tacrolimus" in f.detail
    assert "can each raise creatinine" in f.detail and "wait" not in f.detail.lower()
    assert f.summary.endswith("on tacrolimus")


def test_n3_for_a_renewal_whose_earlier_order_is_not_on_record_is_continuing_therapy():
    """No stored exposure, but the order renews one: the rise is on tacrolimus, never "before" it."""
    inp = make(labs=creatinine_pair(0.8, 1.2), trigger=tacrolimus_draft(prior="elsewhere-1"))
    f = fires("N3", inp)
    assert "on continuing tacrolimus therapy" in f.detail and "before tacrolimus" not in f.detail


def test_n3_for_a_new_start_finds_the_cause_before_adding_a_calcineurin_inhibitor():
    f = fires("N3", make(labs=creatinine_pair(0.8, 1.2)))
    assert "creatinine has risen before tacrolimus" in f.detail
    assert "Find the cause before adding a calcineurin inhibitor" in f.detail
    assert "wait" not in f.detail.lower()


# --- eGFR under 18: bedside Schwartz with a recent height ---------------------------------------------------
def teenager(age: int) -> Patient:
    """Born so that the age on the creatinine's date (3 days before NOW) is ``age``."""
    return Patient("teen", "female", date(NOW.year - age - 1, 12, 1))


def test_bedside_schwartz_is_0_413_height_over_creatinine():
    assert bedside_schwartz(1.6, 160) == pytest.approx(41.3)


def test_under_18_with_a_recent_height_uses_bedside_schwartz():
    inp = make(
        patient=teenager(17),
        labs=[lab("creatinine", 1.6, days=3), lab("body-height", 160, days=100)],
    )
    f = fires("N13", inp)
    assert "calculated (bedside Schwartz)" in f.summary and "41" in f.summary
    assert (
        "height 160 cm" in f.detail and "schwartz-2009" in f.citations and "ckd-epi-2021" not in f.citations
    )
    assert [e.label for e in f.evidence] == [
        "eGFR, calculated (bedside Schwartz)",
        "Creatinine",
        "Body height",
    ]


def test_under_18_without_a_recent_height_calculates_no_egfr_and_says_so():
    inp = make(
        patient=teenager(17),
        labs=[lab("creatinine", 1.6, days=3), lab("body-height", 160, days=181)],
    )
    reason = stays_quiet("N13", inp)
    assert "eGFR not calculated (under 18, no recent height)" in reason
    assert "no body height in the last 180 days" in reason


def test_the_height_window_is_a_setting():
    labs = [lab("creatinine", 1.6, days=3), lab("body-height", 160, days=100)]
    assert stays_quiet("N13", make(patient=teenager(17), labs=labs, body_height_days=90))
    assert fires("N13", make(patient=teenager(17), labs=labs, body_height_days=100))


@pytest.mark.parametrize(("age", "method"), [(17, "bedside Schwartz"), (18, "CKD-EPI 2021")])
def test_18_years_is_where_ckd_epi_takes_over(age, method):
    inp = make(patient=teenager(age), labs=[lab("creatinine", 2.2, days=3), lab("body-height", 165, days=10)])
    assert f"calculated ({method})" in fires("N13", inp).summary


@pytest.mark.parametrize(
    ("value", "unit", "code"), [(160, "cm", "cm"), (1.6, "m", "m"), (63, "in", "[in_i]")]
)
def test_heights_in_cm_m_and_inches_are_read_in_cm(value, unit, code):
    converted = to_canonical("body-height", value, unit, code)
    assert converted is not None and converted[1] == "cm"
    assert converted[0] == pytest.approx({"cm": 160, "m": 160, "in": 160.02}[unit])
    assert to_canonical("body-height", 60, "kg", "kg") is None


def test_an_adult_eGFR_is_unchanged_by_a_height():
    adult = make(patient=woman(40), labs=[lab("creatinine", 2.0, days=3), lab("body-height", 160, days=10)])
    assert "calculated (CKD-EPI 2021)" in fires("N13", adult).summary


# --- N13: warning for a new start, info for continuing therapy ---------------------------------------------
def test_n13_is_a_warning_for_a_new_start_and_info_for_continuing_therapy():
    labs = [lab("egfr", 38, days=3)]
    new_start = fires("N13", make(labs=labs))
    assert new_start.indicator == "warning" and "does not recommend starting" in new_start.detail
    renewal = fires("N13", make(labs=labs, trigger=tacrolimus_draft(prior="tac-1")))
    assert renewal.indicator == "info" and "N2 and N3 carry that action" in renewal.detail
    graded = fires(
        "N13", make(labs=labs, trigger=tacrolimus_draft(prior="tac-1"), egfr_cni_caution_continuing="warning")
    )
    assert graded.indicator == "warning"


# --- continuing therapy: never "start" tacrolimus -----------------------------------------------------------
FORBIDDEN = re.compile(
    r"\b(?:not |never |before |to )?start(?:s|ing)?\b[^.;:]{0,40}\b(?:tacrolimus|calcineurin|CNI)\b"
    r"|\b(?:tacrolimus|calcineurin[- ]inhibitor|CNI)\b[^.;:]{0,20}\bstart(?:s|ing)?\b"
    r"|\bbefore tacrolimus\b(?! began)|\badding (?:a |the )?(?:calcineurin|tacrolimus|CNI)"
    r"|\bnew (?:tacrolimus )?start\b"
    r"|\bfirst dose\b|\bfirst agent\b|\bgoes ahead\b",
    re.IGNORECASE,
)


def said(f: Finding) -> list[str]:
    """Everything a clinician reads of a finding: summary, detail and suggestion labels."""
    labels = [s.label for s in f.suggestions if isinstance(s, OrderLabs | StopMedication)]
    return [f.summary, f.detail, *labels]


def continuing_inputs() -> dict[str, RuleInput]:
    """Inputs that continue therapy three ways, each firing as many findings as one patient can."""
    sink = kitchen_sink()
    busy = make(  # N1, N2, P3, P6-free: a renewal with mycophenolate, sparse labs and a moderate rise
        meds=(med(MYCOPHENOLATE, name="mycophenolate mofetil 500 MG", days=60),),
        labs=[lab("creatinine", 1.0, days=60), lab("creatinine", 1.25, days=2), bp(150, 95, days=2)],
        trigger=tacrolimus_draft(prior="tac-elsewhere"),
    )
    pregnant = make(
        conditions=(cond(*LUPUS_NEPHRITIS), PREGNANT),
        meds=(med("tacrolimus", days=300),),
        labs=[lab("egfr", 90, days=3), bp(162, 101, days=1), lab("potassium", 5.8, days=3)],
    )
    critical_bp = make(meds=(med("tacrolimus", days=300),), labs=[bp(170, 110, days=1)])
    ciclosporin = make(
        meds=(med("other-calcineurin-inhibitors", name="cyclosporine"),),
        labs=[lab("egfr", 30, days=3)],
        trigger=tacrolimus_draft(prior="tac-1"),
    )
    twice_daily_renewal = replace(
        tacrolimus_draft(prior="tac-1"), formulation="extended-release tablet", administrations_per_day=2
    )
    paxlovid = med("nirmatrelvir-ritonavir", "cyp3a4-strong-inhibitors", name="Paxlovid", days=3)
    mmr = med("live-vaccines", name="MMR vaccine", draft=True)  # N19: a live vaccine drafted on tacrolimus
    envarsus_and_paxlovid = make(meds=(paxlovid, mmr), trigger=twice_daily_renewal)
    immediate_release = replace(med("tacrolimus", days=200), formulation="immediate-release", daily_dose_mg=4)
    envarsus_switch = make(
        meds=(immediate_release,),
        trigger=replace(tacrolimus_draft(), formulation="extended-release tablet", daily_dose_mg=4),
    )
    cases = {"kitchen sink (earlier exposure)": sink, "renewal of an order not on record": busy}
    cases["Envarsus twice a day, Paxlovid active"] = envarsus_and_paxlovid
    cases["immediate release to Envarsus mg for mg"] = envarsus_switch
    delivered = replace(cond("pregnancy-outcome", "delivery", name="Single live birth"), onset=ago(20))
    pill = med(
        "combined-hormonal-contraceptives", name="ethinyl estradiol 0.03 MG / levonorgestrel", days=300
    )
    cases["delivered 20 days ago, on the pill, UPCR 0.9"] = make(
        conditions=(cond("lupus", "lupus-nephritis"), delivered),
        meds=(med("tacrolimus", days=330), pill),
        labs=[lab("upcr", 0.9, days=3)],
        trigger=tacrolimus_draft(prior="tac-1"),
    )
    cases |= {
        "pregnant on tacrolimus": pregnant,
        "critical blood pressure": critical_bp,
        "cyclosporine": ciclosporin,
    }
    views = {
        f"{name}, patient-view": RuleInput(
            inp.record, inp.orders, inp.thresholds, continuing=True, only=PATIENT_VIEW
        )
        for name, inp in cases.items()
    }
    return cases | views


def test_the_continuing_inputs_fire_almost_every_finding_that_can_fire_on_continuing_therapy():
    """Otherwise the wording check below could pass without reading the findings it is about."""
    seen = {f.id for inp in continuing_inputs().values() for f in evaluate(inp).findings}
    can_fire = set(RULES) - {"S0", "S1", "S2", "S3", "S4", "N11", "N15"}  # new start only
    assert can_fire - seen <= {"P6", "N8"}, sorted(can_fire - seen)


@pytest.mark.parametrize("case", sorted(continuing_inputs()))
def test_no_finding_tells_a_patient_on_tacrolimus_to_start_it(case):
    for f in evaluate(continuing_inputs()[case]).findings:
        for text in said(f):
            match = FORBIDDEN.search(text)
            assert match is None, (case, f.id, match.group(0), text)


def test_the_wording_check_catches_new_start_wording():
    """The same check on a new start finds what it must never find on continuing therapy."""
    new_start = make(
        labs=[lab("creatinine", 0.8, days=60), lab("creatinine", 1.2, days=2), bp(170, 110, days=1)]
    )
    hits = {f.id for f in evaluate(new_start).findings if any(FORBIDDEN.search(t) for t in said(f))}
    assert {"N3", "N7", "N11"} <= hits


def fixture_continues_therapy(name: str) -> bool:
    entry = manifest()[name]
    if entry.get("hook") == "patient-view":
        return True
    drafts = {ref.split("/")[-1] for ref in entry["drafts"]}
    resources = [e["resource"] for e in load_bundle(name)["entry"]]
    return any(r.get("id") in drafts and r.get("priorPrescription") for r in resources)


CONTINUING_FIXTURES = sorted(name for name in manifest() if fixture_continues_therapy(name))


def test_there_are_renewal_and_patient_view_fixtures_to_read():
    assert len(CONTINUING_FIXTURES) >= 8
    assert any(manifest()[n].get("hook") == "patient-view" for n in CONTINUING_FIXTURES)


def test_cards_of_renewals_and_patient_view_never_say_start(tmp_path):
    client = make_app(tmp_path, hold_repeats={"enabled": False}).test_client()
    for fixture in CONTINUING_FIXTURES:
        entry = manifest()[fixture]
        hook = entry.get("hook", "order-sign")
        service = entry.get("service", "tacrolimus-order-sign")
        response = client.post(f"/cds-services/{service}", json=build_request(fixture, hook=hook))
        assert response.status_code == 200, fixture
        for card in response.get_json()["cards"]:
            texts = [card["summary"], card["detail"], *(s["label"] for s in card.get("suggestions", []))]
            for text in texts:
                match = FORBIDDEN.search(text)
                assert match is None, (fixture, match.group(0))


# --- small corrected rows -----------------------------------------------------------------------------------
def test_n11_first_trough_at_5_to_7_days():
    f = fires("N11", make())
    assert "first trough at 5–7 days" in f.detail and "at least twice in the first week" in f.detail


def test_p3_carries_the_mycophenolate_rems_cadence():
    f = fires("P3", make(meds=(med(MYCOPHENOLATE, draft=True),)))
    assert "immediately before starting mycophenolate and another 8–10 days later" in f.detail
    assert "repeated at follow-up" in f.detail
    assert "contraception during mycophenolate therapy and for 6 weeks after stopping it" in f.detail
    assert "cellcept-label" in f.citations


def allergy(concept: str, name: str) -> Allergy:
    return Allergy(id=f"allergy-{concept}", concepts=frozenset({concept}), name=name, active=True)


@pytest.mark.parametrize(
    ("concept", "name"),
    [("rituximab", "Rituximab"), ("obinutuzumab", "Gazyva (obinutuzumab) infusion reaction")],
)
def test_s3_an_allergy_to_any_anti_cd20_drug_is_the_barrier(concept, name):
    f = fires(
        "S3", make(allergies=(allergy(concept, name),), labs=[lab("hbsag", answer="negative", days=30)])
    )
    assert f.summary == "Anti-CD20 barrier recorded: " + f"{concept} allergy or infusion reaction"
    assert "rituximab and obinutuzumab" in f.detail and "regency-2025" in f.citations


def test_obinutuzumab_is_recognised_by_name_and_its_code_ships_only_behind_configuration():
    default = Terminology.load()
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert default.concepts([{"system": rxnorm, "code": "974779"}]) == frozenset()
    by_name = default.recognise(texts=["Gazyva 1000 mg IV"])
    assert "obinutuzumab" in by_name.classes and "obinutuzumab" in by_name.by_name
    included = Terminology.load(include=("unverified",))
    assert "obinutuzumab" in included.concepts([{"system": rxnorm, "code": "974779"}])


@pytest.mark.parametrize("hook", ["order-sign", "patient-view"])
def test_the_observation_prefetch_asks_for_the_body_height(hook):
    """The prefetch derives from the rules' NEEDS: the height of the Schwartz eGFR comes with it."""
    needs = next(spec for spec in SPECS if spec.hook == hook).needs
    query = templates(needs, Terminology.load())["observations"]
    assert "http://loinc.org|8302-2" in query


def test_a_height_of_zero_is_not_read_as_an_egfr_of_zero():
    inp = make(patient=teenager(17), labs=[lab("creatinine", 1.6, days=3), lab("body-height", 0, days=3)])
    reason = stays_quiet("N13", inp)
    assert "eGFR not calculated (under 18, no recent height)" in reason and "gives no eGFR" in reason
