"""Rule catalog version 3, new findings: N16 (hyperkalaemia co-drugs) and N20 (Pneumocystis prophylaxis).

Each boundary is tested on both sides from plain data, as in test_rules.py; recognition of the co-drugs goes
through the real terminology; the fixtures go through the whole service in test_fixtures_end_to_end.py.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cds_service.dosage import prednisone_equivalent
from cds_service.fixtures import manifest
from cds_service.record_builder import planned_days
from cds_service.rules import REGISTRY
from cds_service.rules.model import OrderLabs, RuleInput, StopMedication
from cds_service.rules.registry import CO_PRESCRIBING
from cds_service.sandbox.requests import build_request
from cds_service.terminology import Terminology
from tests.support import config_copy
from tests.test_config import card_findings, fixture_request
from tests.test_rules import fires, lab, make, med, stays_quiet, tacrolimus_draft

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
POTASSIUM_ORDER = OrderLabs((("2823-3", "Potassium [Moles/volume] in Serum or Plasma"),), "")


def lisinopril(**kwargs):
    return med("ras-inhibitors", name="lisinopril 10 mg tablet", **kwargs)


def spironolactone(**kwargs):
    return med("potassium-sparing-diuretics", name="spironolactone 25 mg tablet", **kwargs)


def co_trimoxazole(**kwargs):
    return med("trimethoprim", name="sulfamethoxazole/trimethoprim 800/160 mg tablet", **kwargs)


def with_potassium(value: float | None, *drugs, **kwargs) -> RuleInput:
    labs = [lab("potassium", value, days=3)] if value is not None else [lab("potassium", 4.4, days=40)]
    return make(meds=list(drugs), labs=labs, **kwargs)


def deleted(finding) -> list:
    return [s.medication for s in finding.suggestions if isinstance(s, StopMedication)]


# --- N16: thresholds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("potassium", "indicator"), [(4.9, None), (5.0, "info"), (5.5, "info"), (5.6, "warning")]
)
def test_n16_established_ras_blocker_by_potassium(potassium, indicator):
    inp = with_potassium(potassium, lisinopril())
    if indicator is None:
        assert "below 5" in stays_quiet("N16", inp)
        return
    f = fires("N16", inp)
    assert f.indicator == indicator
    assert f"Potassium {potassium:g} mmol/L with a RAS blocker" in f.summary
    assert "rather than stopping them" in f.detail  # the RAS blocker treats the proteinuria
    assert not deleted(f)  # never stop an ACE inhibitor or ARB
    assert f.suggestions[0].labs == POTASSIUM_ORDER.labs


@pytest.mark.parametrize(("potassium", "fires_"), [(4.9, False), (5.0, True)])
def test_n16_a_co_drug_drafted_now_is_a_warning_from_5_0_and_only_its_draft_is_deleted(potassium, fires_):
    draft, ras = spironolactone(draft=True), lisinopril(draft=True)
    inp = with_potassium(potassium, draft, ras)
    if not fires_:
        stays_quiet("N16", inp)
        return
    f = fires("N16", inp)
    assert f.indicator == "warning"
    assert deleted(f) == [draft]  # the drafted lisinopril is never offered for deletion
    assert "Reconsider the drafted spironolactone" in f.detail


def test_n16_a_stored_potassium_sparing_diuretic_is_never_deleted():
    f = fires("N16", with_potassium(5.2, spironolactone()))
    assert f.indicator == "info" and not deleted(f)


def test_n16_the_threshold_is_a_setting():
    stays_quiet("N16", with_potassium(5.0, lisinopril(), potassium_codrug_min=5.1))
    assert fires("N16", with_potassium(5.6, lisinopril(), potassium_max=6.0)).indicator == "info"


# --- N16: no recent potassium ---------------------------------------------------------------------------
def test_n16_a_drafted_co_drug_without_a_recent_potassium_is_info_that_orders_one_and_deletes_nothing():
    f = fires("N16", with_potassium(None, co_trimoxazole(draft=True)))
    assert f.indicator == "info" and "No potassium in 30 days" in f.summary
    assert "no potassium in the last 30 days" in f.missing
    assert [type(s) for s in f.suggestions] == [OrderLabs]


def test_n16_established_co_drugs_without_a_recent_potassium_leave_it_to_n1():
    assert "N1 asks for the baseline potassium" in stays_quiet("N16", with_potassium(None, lisinopril()))


def test_n16_no_co_drug_stays_quiet():
    assert "no active or drafted ACE inhibitor" in stays_quiet("N16", with_potassium(6.0))


def test_n16_stopped_co_drugs_do_not_count():
    stays_quiet("N16", with_potassium(5.8, lisinopril(status="stopped", ended_days=10)))


# --- N16: wording by situation --------------------------------------------------------------------------
def test_n16_wording_for_a_new_start_and_for_continuing_therapy():
    new = fires("N16", with_potassium(5.2, lisinopril()))
    assert "after the first tacrolimus dose" in new.detail
    renewal = make(
        meds=[lisinopril(), med("tacrolimus", name="tacrolimus 1 mg capsule", rid="tac-1", days=200)],
        labs=[lab("potassium", 5.2, days=3)],
    )
    assert "Recheck potassium in 3–7 days" in fires("N16", renewal).detail


def test_n16_for_the_clinician_ordering_the_co_drug_names_the_tacrolimus_taken_and_discusses_only_the_draft():
    """Co-prescribing: the drafted co-drug is "the order" (a trigger); the stored tacrolimus order is what
    the patient takes. An established RAS blocker is not this clinician's business."""
    taken = med("tacrolimus", name="Prograf 1 mg capsule", rid="mr-tac", days=200)
    watched = spironolactone(draft=True, trigger=True)
    base = make(
        meds=[taken, lisinopril(), watched],
        labs=[lab("potassium", 5.1, days=3), lab("tacrolimus-level", 6.4, days=3)],
    )
    inp = RuleInput(base.record, (watched,), base.thresholds, service_kind=CO_PRESCRIBING)
    f = fires("N16", inp)
    assert f.indicator == "warning"
    assert "This patient takes tacrolimus (Prograf 1 mg capsule," in f.detail and "active since" in f.detail
    assert "newest tacrolimus level 6.4 ng/mL" in f.detail
    assert "do not change the tacrolimus order from here" in f.detail
    assert "lisinopril" not in f.detail and deleted(f) == [watched]
    assert REGISTRY["N16"].wording.co_prescribing and CO_PRESCRIBING in REGISTRY["N16"].runs_in


def test_n16_co_prescribing_with_only_established_co_drugs_stays_quiet():
    base = make(meds=[lisinopril()], labs=[lab("potassium", 5.8, days=3)])
    inp = RuleInput(base.record, base.orders, base.thresholds, service_kind=CO_PRESCRIBING)
    stays_quiet("N16", inp)


# --- N16: recognition ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codings", "text", "concept"),
    [
        ([{"system": RXNORM, "code": "314076"}], None, "ras-inhibitors"),  # lisinopril 10 MG Oral Tablet
        ([{"system": RXNORM, "code": "1656328"}], None, "ras-inhibitors"),  # sacubitril (ARNI)
        ([{"system": RXNORM, "code": "325646"}], None, "ras-inhibitors"),  # aliskiren
        ([{"system": RXNORM, "code": "313096"}], None, "potassium-sparing-diuretics"),  # spironolactone 25 MG
        ([{"system": RXNORM, "code": "2562816"}], None, "potassium-sparing-diuretics"),  # finerenone 10 MG
        ([{"system": RXNORM, "code": "198335"}], None, "trimethoprim"),  # SMX 800 / TMP 160
        ([], "Entresto 49/51 mg tablet", "ras-inhibitors"),
        ([], "Bactrim DS tablet", "trimethoprim"),
        ([], "eplerenone 25 mg", "potassium-sparing-diuretics"),
    ],
)
def test_n16_co_drugs_are_recognised_by_code_or_name(codings, text, concept):
    found = Terminology.load().recognise(codings=codings, texts=[text] if text else [])
    assert concept in found.classes
    assert (concept in found.by_name) == (not codings)


def test_n16_ingredient_codes_marked_unverified_ship_only_behind_configuration():
    eplerenone = [{"system": RXNORM, "code": "298869"}]
    assert "potassium-sparing-diuretics" not in Terminology.load().concepts(eplerenone)
    assert "potassium-sparing-diuretics" in Terminology.load(include=("unverified",)).concepts(eplerenone)


# --- N20 ----------------------------------------------------------------------------------------------------
def steroid(mg_day: float | None, *, days: float = 40, planned: float | None = None, draft: bool = False):
    order = med("glucocorticoids-systemic", name="prednisone 20 mg tablet", days=days, draft=draft)
    return replace(order, prednisone_mg_day=mg_day, planned_days=planned)


MMF = med("mycophenolate", name="mycophenolate mofetil 500 mg tablet", days=90)
ON = {"pneumocystis_check": True}


def n20_input(*meds, **overrides) -> RuleInput:
    return make(meds=list(meds), **{**ON, **overrides})


def test_n20_is_off_as_shipped_and_says_so():
    assert "pneumocystis_check" in stays_quiet("N20", make(meds=[steroid(40), MMF]))
    assert REGISTRY["N20"].runs_in == {"order"}  # never in patient-view or the co-prescribing services


@pytest.mark.parametrize(("mg_day", "fires_"), [(19.99, False), (20, True)])
def test_n20_dose_boundary(mg_day, fires_):
    inp = n20_input(steroid(mg_day, days=28), MMF)
    if fires_:
        f = fires("N20", inp)
        assert f.indicator == "info" and not f.suggestions
        assert "consider Pneumocystis prophylaxis" in f.summary
        assert "trimethoprim-sulfamethoxazole raises potassium and creatinine" in f.detail
    else:
        assert "at least 20 mg/day" in stays_quiet("N20", inp)


@pytest.mark.parametrize(("days", "planned", "fires_"), [(27, None, False), (28, None, True), (0, 28, True)])
def test_n20_duration_boundary_started_or_planned(days, planned, fires_):
    order = steroid(30, days=days, planned=planned, draft=days == 0)
    inp = n20_input(order, MMF)
    if fires_:
        fires("N20", inp)
    else:
        assert "for at least 28 days" in stays_quiet("N20", inp)


def test_n20_thresholds_are_settings():
    stays_quiet("N20", n20_input(steroid(20, days=28), MMF, pneumocystis_prednisone_mg_day=25))
    stays_quiet("N20", n20_input(steroid(20, days=28), MMF, pneumocystis_glucocorticoid_days=29))


def test_n20_needs_another_immunosuppressant_active_or_anti_cd20_recently():
    assert "no other immunosuppressant" in stays_quiet("N20", n20_input(steroid(40)))
    rituximab = med("rituximab", name="rituximab 1000 mg IV", status="completed", days=200, ended_days=180)
    fires("N20", n20_input(steroid(40), rituximab))
    older = med("rituximab", name="rituximab 1000 mg IV", status="completed", days=200, ended_days=181)
    stays_quiet("N20", n20_input(steroid(40), older))


def test_n20_stays_quiet_with_prophylaxis_on_continuing_therapy_and_names_an_unreadable_dose():
    dapsone = med("pjp-prophylaxis", name="dapsone 100 mg tablet", days=30)
    assert "prophylaxis is active: dapsone" in stays_quiet("N20", n20_input(steroid(40), MMF, dapsone))
    renewal = make(meds=[steroid(40), MMF], trigger=tacrolimus_draft(prior="tac-1"), **ON)
    assert "new start" in stays_quiet("N20", renewal)
    unread = stays_quiet("N20", n20_input(steroid(None), MMF))
    assert "could not be worked out from its dosageInstruction" in unread


@pytest.mark.parametrize(
    ("texts", "daily", "expected"),
    [
        (["prednisone 20 MG Oral Tablet"], 20, 20),
        (["methylprednisolone 4 MG Oral Tablet"], 16, 20),
        (["Medrol 4 mg tablet"], 16, 20),
        (["dexamethasone 4 MG Oral Tablet"], 3, 20.01),
        (["hydrocortisone 20 MG Oral Tablet"], 80, 20),
        (["prednisolone 5 MG Oral Tablet"], 20, 20),
        (["prednisone 20 mg tablet"], None, None),
        (["a steroid tablet"], 20, None),
    ],
)
def test_prednisone_equivalents_come_from_the_data_file(texts, daily, expected):
    assert prednisone_equivalent(daily, texts) == expected


def test_planned_days_reads_the_validity_the_supply_or_the_timing_bounds():
    """ "Planned for 28 days" (N20); the drafted methylprednisolone fixture carries a 28-day supply."""
    request = build_request("n20-methylprednisolone-16-mg-planned-28-days", hook="order-sign")
    drafts = request["context"]["draftOrders"]["entry"]
    assert planned_days(next(e["resource"] for e in drafts if "methylprednisolone" in json.dumps(e))) == 28
    validity = {"validityPeriod": {"start": "2026-11-01", "end": "2026-11-29"}}
    assert planned_days({"dispenseRequest": validity}) == 28
    supply = {"expectedSupplyDuration": {"value": 2, "code": "wk"}, "numberOfRepeatsAllowed": 1}
    assert planned_days({"dispenseRequest": supply}) == 28
    bounds = {"timing": {"repeat": {"boundsDuration": {"value": 27, "unit": "days"}}}}
    assert planned_days({"dosageInstruction": [bounds]}) == 27
    assert planned_days({"dosageInstruction": [{"text": "for a month"}]}) is None


SETTINGS_ON = {"thresholds": {"pneumocystis_check": True}}
N20_FIRES = {
    "n20-prednisone-20-mg-28-days": True,
    "n20-prednisone-20-mg-27-days": False,
    "n20-prednisone-19-mg-28-days": False,
    "n20-methylprednisolone-16-mg-planned-28-days": True,
    "n20-prednisone-with-prophylaxis": False,
}


@pytest.mark.slow  # one runtime per fixture
@pytest.mark.parametrize("fixture", sorted(N20_FIRES))
def test_n20_fixtures_turned_on_by_the_settings_give_their_expected_set(tmp_path, fixture):
    request = fixture_request(fixture)
    shipped = set(manifest()[fixture]["expected"])
    assert set(card_findings(config_copy(tmp_path / "off"), request)) == shipped
    on = card_findings(config_copy(tmp_path / "on", **SETTINGS_ON), request)
    assert set(on) == shipped | ({"N20"} if N20_FIRES[fixture] else set())
    assert on.get("N20") in (None, "info")


@pytest.mark.slow
def test_n20_turned_on_for_one_tenant_only(tmp_path):
    config = config_copy(tmp_path, tenants={"hospital-a": SETTINGS_ON})
    request = fixture_request("n20-prednisone-20-mg-28-days")
    assert "N20" in card_findings(config, request, tenant="hospital-a")
    assert "N20" not in card_findings(config, request, tenant="hospital-b")
    assert "N20" not in card_findings(config, request)


@pytest.mark.slow
def test_n20_reads_a_text_only_glucocorticoid_order_by_the_strength_its_name_states(tmp_path):
    """ "prednisone 20 mg tablet", 1 tablet daily, with no code: 20 mg/day from the order's own name."""
    request = fixture_request("n20-prednisone-20-mg-28-days")
    concepts = [
        e["resource"].get("medicationCodeableConcept", {})
        for e in request["prefetch"]["medications"]["entry"]
    ]
    (prednisone,) = [c for c in concepts if "prednisone" in c.get("text", "")]
    del prednisone["coding"]
    assert "N20" in card_findings(config_copy(tmp_path, **SETTINGS_ON), request)
