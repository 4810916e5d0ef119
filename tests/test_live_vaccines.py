"""N19 (rule catalog version 3): a live vaccine beside tacrolimus, and how vaccines are read.

The rule is tested from plain data at each boundary (28 days before a new start, 42 days on tacrolimus), as
in test_rules.py; recognition (CVX codes, names, any form, Shingrix never) goes through the real
terminology; the record builder reads Immunizations and ServiceRequest drafts from FHIR JSON. The HTTP tests
(a real service against a real FHIR server on loopback) are in test_live_vaccines_http.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from cds_service.cards import build_cards
from cds_service.record import Immunization
from cds_service.record_builder import build_record
from cds_service.rules.model import RuleInput, StopMedication
from cds_service.rules.registry import CO_PRESCRIBING
from cds_service.terminology import Terminology
from tests.test_rules import NOW, THRESHOLDS, fires, make, med, stays_quiet, tacrolimus_draft

CVX = "http://hl7.org/fhir/sid/cvx"
LIVE = "live-vaccines"


def given(days: float, name: str = "MMR", rid: str = "imm-1", hours: float = 0) -> Immunization:
    return Immunization(rid, frozenset({LIVE}), name, NOW - timedelta(days=days, hours=hours))


def with_vaccines(inp: RuleInput, *immunizations: Immunization) -> RuleInput:
    return replace(inp, record=replace(inp.record, immunizations=immunizations))


def patient_view(*immunizations: Immunization, tacrolimus_days: float = 200) -> RuleInput:
    stored = med("tacrolimus", name="tacrolimus 1 MG Oral Capsule", days=tacrolimus_days, rid="mr-tac")
    base = make(meds=[stored])
    inp = RuleInput(base.record, (stored,), base.thresholds, continuing=True)
    return with_vaccines(inp, *immunizations)


# --- given before a new start: info, 28 days ---------------------------------------------------------------
@pytest.mark.parametrize(("days", "fires_"), [(0, True), (27, True), (28, True), (29, False)])
def test_a_live_vaccine_given_up_to_28_calendar_days_before_a_new_start_is_info(days, fires_):
    inp = with_vaccines(make(), given(days, hours=-1 if days == 28 else 0))  # late on the 28th day back
    if fires_:
        f = fires("N19", inp)
        assert f.indicator == "info" and "before this tacrolimus start" in f.summary
        assert "at least 4 weeks before immunosuppression" in f.detail and not f.suggestions
        assert [e.reference for e in f.evidence] == ["Immunization/imm-1"]
    else:
        assert "none given in the 28 days before this new start" in stays_quiet("N19", inp)


def test_the_28_days_are_an_administrator_setting():
    inp = with_vaccines(make(live_vaccine_before_start_days=27), given(28))
    stays_quiet("N19", inp)


def test_a_vaccine_dated_after_the_request_is_not_counted():
    stays_quiet("N19", with_vaccines(make(), given(-2)))


# --- given on tacrolimus: warning, 42 days ------------------------------------------------------------------
@pytest.mark.parametrize(("days", "fires_"), [(41, True), (42, True), (43, False)])
def test_in_patient_view_a_live_vaccine_given_on_tacrolimus_up_to_42_days_ago_is_a_warning(days, fires_):
    inp = patient_view(given(days, "YF-Vax (yellow fever vaccine)"))
    if fires_:
        f = fires("N19", inp)
        assert f.indicator == "warning" and "on tacrolimus: watch for vaccine-strain infection" in f.summary
        assert "Watch for infection by the vaccine strain" in f.detail
    else:
        assert "none given on tacrolimus in the last 42 days" in stays_quiet("N19", inp)


def test_a_live_vaccine_given_before_tacrolimus_began_is_not_given_on_tacrolimus():
    stays_quiet("N19", patient_view(given(30), tacrolimus_days=20))
    fires("N19", patient_view(given(19), tacrolimus_days=20))


def test_the_42_days_are_an_administrator_setting_and_a_renewal_reads_them_too():
    renewal = make(meds=[med("tacrolimus", days=200, rid="tac-1")], trigger=tacrolimus_draft(prior="tac-1"))
    assert fires("N19", with_vaccines(renewal, given(30))).indicator == "warning"
    stays_quiet(
        "N19",
        with_vaccines(
            replace(renewal, thresholds={**THRESHOLDS, "live_vaccine_on_tacrolimus_days": 29}), given(30)
        ),
    )


# --- ordered: warning, deleted when drafted -----------------------------------------------------------------
def test_a_drafted_live_vaccine_at_a_new_start_is_a_warning_whose_suggestion_deletes_it():
    vaccine = med(LIVE, name="Zostavax (zoster vaccine live)", draft=True, rid="mr-zos")
    f = fires("N19", make(meds=[vaccine]))
    assert f.indicator == "warning" and "as tacrolimus is started" in f.summary
    assert "at least 4 weeks before" in f.detail and "Shingrix" in f.detail
    assert f.suggestions == (
        StopMedication(
            vaccine, f"Remove the draft {vaccine.name} order", "Live vaccine with tacrolimus", True
        ),
    )


def test_a_stored_active_live_vaccine_order_is_a_warning_without_a_stop_suggestion():
    stored = med(LIVE, name="MMR vaccine", status="active", days=3)
    f = fires("N19", patient_view_with(stored))
    assert f.indicator == "warning" and "for a patient on tacrolimus" in f.summary and not f.suggestions


def patient_view_with(*meds) -> RuleInput:
    tac = med("tacrolimus", days=200, rid="mr-tac")
    base = make(meds=[tac, *meds])
    return RuleInput(base.record, (tac,), base.thresholds, continuing=True)


def test_an_ordered_and_a_given_vaccine_make_one_warning_listing_both():
    vaccine = med(LIVE, name="FluMist", draft=True)
    f = fires("N19", with_vaccines(make(meds=[vaccine]), given(10)))
    assert f.indicator == "warning" and "FluMist" in f.detail and "MMR on" in f.detail
    assert len(f.evidence) == 2


def test_without_tacrolimus_nothing_is_said():
    no_tacrolimus = RuleInput(replace(make().record, medications=()), (), THRESHOLDS)
    assert "no tacrolimus" in stays_quiet("N19", with_vaccines(no_tacrolimus, given(3)))


def test_in_the_co_prescribing_services_the_drafted_vaccine_is_the_order_and_no_immunization_is_read():
    tac = med("tacrolimus", name="Prograf 1 mg capsule", days=200, rid="mr-tac")
    vaccine = med(LIVE, name="MMR vaccine", draft=True, trigger=True, rid="mr-mmr")
    base = make(meds=[tac])
    record = replace(base.record, medications=(tac, vaccine), immunizations=(given(5),))
    inp = RuleInput(record, (vaccine,), THRESHOLDS, service_kind=CO_PRESCRIBING)
    f = fires("N19", inp)
    assert "this patient takes Prograf 1 mg capsule (MedicationRequest/mr-tac, since" in f.detail
    assert "plan it with the tacrolimus prescriber" in f.detail and "Immunization" not in str(f.evidence)
    assert [s.medication for s in f.suggestions] == [vaccine]


def test_missing_immunizations_are_named():
    inp = with_vaccines(make(unavailable={"Immunization"}))
    assert "vaccines given (Immunization) could not be retrieved" in stays_quiet("N19", inp)


# --- recognition -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def terms() -> Terminology:
    return Terminology.load()


@pytest.mark.parametrize(
    "code", ["03", "94", "21", "121", "111", "149", "116", "119", "122", "37", "25", "19", "02", "75"]
)
def test_live_vaccine_cvx_codes(terms, code):
    assert LIVE in terms.concepts([{"system": CVX, "code": code}])


@pytest.mark.parametrize(
    "code",
    ["187", "141", "150", "08", "10", "56", "317"],  # Shingrix, inactivated flu, HepB, IPV; unverified: off
)
def test_recombinant_inactivated_and_unverified_cvx_codes_are_not_live_by_default(terms, code):
    assert LIVE not in terms.concepts([{"system": CVX, "code": code}])


def test_unverified_live_vaccine_codes_ship_behind_configuration():
    included = Terminology.load(include=("unverified",))
    assert LIVE in included.concepts([{"system": CVX, "code": "317"}])


@pytest.mark.parametrize(
    "text",
    [
        "FluMist Quadrivalent Nasal Spray",  # a nasal spray: still a live vaccine (interpretation 84)
        "Vivotif (typhoid vaccine live oral Ty21a) capsule",
        "Rotarix oral suspension",
        "Zostavax (zoster vaccine live) injection",
        "M-M-R II injection",
        "Varicella virus vaccine live (Varivax)",
        "BCG vaccine percutaneous",
    ],
)
def test_live_vaccines_are_recognised_by_name_whatever_their_form(terms, text):
    found = terms.recognise(texts=[text])
    assert LIVE in found.classes and LIVE in found.by_name


@pytest.mark.parametrize(
    "text",
    [
        "Shingrix (zoster vaccine recombinant, adjuvanted)",
        "influenza vaccine, inactivated, quadrivalent",
        "VariZIG (varicella zoster immune globulin)",
        "Jynneos (smallpox and monkeypox vaccine, live, non-replicating)",
        "TICE BCG live intravesical",
    ],
)
def test_non_live_vaccines_are_never_live_by_name(terms, text):
    assert LIVE not in terms.recognise(texts=[text]).classes


def test_a_nasal_form_still_counts_for_no_other_class(terms):
    assert terms.recognise(texts=["ketoconazole nasal spray"]).classes == frozenset()


# --- reading: Immunization and ServiceRequest drafts ----------------------------------------------------
def immunization(rid: str, status: str = "completed", **more) -> dict:
    resource = {
        "resourceType": "Immunization",
        "id": rid,
        "status": status,
        "vaccineCode": {"coding": [{"system": CVX, "code": "03"}], "text": "MMR"},
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2026-10-20T10:00:00Z",
    }
    return {**resource, **more}


def record_of(terms, immunizations=(), drafts=()):
    return build_record(terminology=terms, now=NOW, patient=None, immunizations=immunizations, drafts=drafts)


def test_only_completed_live_immunizations_are_read_newest_first(terms):
    shingrix = immunization("shx", vaccineCode={"coding": [{"system": CVX, "code": "187"}]})
    older = immunization("old", occurrenceDateTime="2026-01-02")
    record = record_of(terms, [immunization("nd", "not-done"), immunization("eie", "entered-in-error"),
                               shingrix, older, immunization("new")])  # fmt: skip
    assert [i.id for i in record.immunizations] == ["new", "old"]
    assert record.immunizations[0].occurred.isoformat() == "2026-10-20T10:00:00+00:00"


def test_an_immunization_dated_by_occurrence_string_or_stu3_date_is_read(terms):
    as_string = immunization("s", occurrenceString="2026-10-11")
    del as_string["occurrenceDateTime"]
    stu3 = immunization("d", date="2026-10-12")
    del stu3["occurrenceDateTime"]
    record = record_of(terms, [as_string, stu3])
    assert {i.id: i.occurred.date().isoformat() for i in record.immunizations} == {
        "s": "2026-10-11",
        "d": "2026-10-12",
    }


def test_a_live_immunization_whose_date_cannot_be_read_is_named(terms):
    undated = immunization("u", occurrenceString="last spring")
    del undated["occurrenceDateTime"]
    record = record_of(terms, [undated])
    assert record.immunizations == ()
    assert [u.reference for u in record.skipped] == ["Immunization/u"]
    inp = replace(make(), record=replace(make().record, skipped=record.skipped))
    assert "Immunization/u: a vaccine given on a date that cannot be read" in stays_quiet("N19", inp)


def test_a_vaccine_known_only_by_its_name_says_so(terms):
    by_name = immunization("n", vaccineCode={"text": "Varivax"})
    (found,) = record_of(terms, [by_name]).immunizations
    assert found.name == "Varivax (recognised by its name; check the order)"


def test_a_service_request_draft_counts_only_as_a_vaccine_and_its_delete_names_it(terms):
    vaccine = {
        "resourceType": "ServiceRequest",
        "id": "sr-var",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": CVX, "code": "21"}], "text": "Varicella vaccine"},
    }
    lab = {**vaccine, "id": "sr-lab", "code": {"text": "methotrexate level"}}
    record = record_of(terms, drafts=[vaccine, lab, immunization("in-drafts")])
    (order,) = record.medications
    assert (order.reference, order.is_draft, LIVE in order.concepts) == ("ServiceRequest/sr-var", True, True)
    assert record.immunizations == ()  # an Immunization in draftOrders is not a vaccine given either
    inp = RuleInput(replace(record, medications=(*record.medications, tacrolimus_draft())),
                    (tacrolimus_draft(),), THRESHOLDS)  # fmt: skip
    f = fires("N19", inp)
    (card,) = build_cards([f], inp.record, {"cards": {}})
    actions = [a for s in card["suggestions"] for a in s["actions"]]
    assert actions == [
        {
            "type": "delete",
            "description": "Remove the draft order for Varicella vaccine",
            "resourceId": "ServiceRequest/sr-var",
        }
    ]
