"""Rule catalog version 3: R1-R4 (regimen context), P8 (low-dose aspirin in pregnancy) and the
MedicationStatements they read ("an order or statement").

Each boundary is tested on both sides from plain data, as in test_rules.py; reading statements goes through
the real record builder and terminology; the last tests send records through the service, by prefetch and by
FHIR callback to a real FHIR server on loopback.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from cds_service.record import Allergy, Medication
from cds_service.record_builder import build_record
from cds_service.rules.model import RuleInput
from cds_service.sandbox.requests import build_request_from_bundle
from cds_service.terminology import Terminology
from tests.support import RXNORM, SNOMED, bundle, finding_ids, make_app, serving_records
from tests.test_rules import NOW, PREGNANT, ago, cond, fires, lab, make, med, stays_quiet

HCQ = "hydroxychloroquine"


def statement(*concepts: str, name: str = "home medicine") -> Medication:
    """An active MedicationStatement as the record builder reads it."""
    return Medication(
        id=f"ms-{'-'.join(concepts)}",
        concepts=frozenset(concepts),
        name=name,
        status="active",
        authored=ago(60),
        exposure=None,
        resource_type="MedicationStatement",
    )


def with_statements(inp: RuleInput, *statements: Medication) -> RuleInput:
    return replace(inp, record=replace(inp.record, statements=statements))


def allergy(*concepts: str) -> Allergy:
    return Allergy(f"alg-{concepts[0]}", frozenset(concepts), concepts[0], active=True)


def on_hcq(**kwargs) -> RuleInput:
    """A new start on hydroxychloroquine (so R1 is quiet) with lupus nephritis, plus ``kwargs`` for make."""
    meds = kwargs.pop("meds", ())
    return make(meds=(med(HCQ, name="hydroxychloroquine"), *meds), **kwargs)


# --- R1 -----------------------------------------------------------------------------------------------------
def test_r1_fires_for_a_new_start_without_hydroxychloroquine_and_says_how_to_stop_it():
    f = fires("R1", make())
    assert f.indicator == "info" and f.topic == "salvage-context"
    assert "KDIGO (1C)" in f.summary and len(f.summary) < 140
    assert "5 mg/kg/day" in f.detail and "recording that stops this reminder" in f.detail
    assert set(f.citations) == {"kdigo-2024", "eular-2019-ln", "eular-2023"}


def test_r1_needs_sle_or_ln_only():
    assert fires("R1", make(conditions=(cond("lupus"),)))  # SLE without nephritis
    reason = stays_quiet("R1", make(conditions=(), scope="any-indication"))
    assert "no active systemic lupus" in reason


@pytest.mark.parametrize(
    "taking",
    [
        {"meds": (med(HCQ, name="Plaquenil"),)},
        {"meds": (med(HCQ, name="hydroxychloroquine", status="on-hold"),)},
        {"meds": (med(HCQ, name="hydroxychloroquine", draft=True),)},
        {"statements": (statement(HCQ, name="hydroxychloroquine (home medicine)"),)},
        {"statements": (statement(HCQ, name="chloroquine"),)},
    ],
    ids=["active-order", "on-hold-order", "draft", "statement", "chloroquine-statement"],
)
def test_r1_an_active_order_or_statement_of_hydroxychloroquine_or_chloroquine_keeps_it_quiet(taking):
    inp = with_statements(make(meds=taking.get("meds", ())), *taking.get("statements", ()))
    assert "is taken" in stays_quiet("R1", inp)


def test_r1_an_ended_order_does_not_count_and_the_card_asks_for_the_reason():
    ended = med(HCQ, name="hydroxychloroquine", status="stopped", days=900, ended_days=200)
    f = fires("R1", make(meds=(ended,)))
    assert "ended on" in f.detail and "record that reason" in f.detail


def test_r1_an_allergy_or_a_condition_naming_the_drug_is_a_recorded_contraindication():
    assert "contraindication" in stays_quiet("R1", make(allergies=(allergy(HCQ),)))
    retinopathy = cond(HCQ, name="Hydroxychloroquine retinopathy")
    conditions = (cond("lupus", "lupus-nephritis"), retinopathy)
    assert "retinopathy" in stays_quiet("R1", make(conditions=conditions))


def test_r1_to_r4_speak_only_for_a_new_start():
    renewal = med("tacrolimus", name="tacrolimus", days=200)
    for rule in ("R1", "R2", "R3", "R4"):
        assert "only for a new start" in stays_quiet(rule, make(meds=(renewal,)))


# --- R2 -----------------------------------------------------------------------------------------------------
MMF_BEFORE = med("mycophenolate", name="mycophenolate mofetil", status="stopped", days=400, ended_days=120)
CLASS_IV = cond("lupus", "lupus-nephritis", "lupus-nephritis-class-iii-iv", name="Lupus nephritis, class IV")
CLASS_V = cond("lupus", "lupus-nephritis", "lupus-nephritis-class-v", name="Lupus nephritis, class V")


def test_r2_fires_for_class_iv_with_mycophenolate_before_and_none_now():
    f = fires("R2", on_hcq(conditions=(CLASS_IV,), meds=(MMF_BEFORE,)))
    assert "class III/IV" in f.summary and "triple therapy" in f.summary
    assert "record why" in f.detail


def test_r2_an_unclassified_nephritis_counts_a_pure_class_v_does_not():
    assert "unclassified" in fires("R2", on_hcq(meds=(MMF_BEFORE,))).summary
    assert "pure membranous" in stays_quiet("R2", on_hcq(conditions=(CLASS_V,), meds=(MMF_BEFORE,)))
    assert fires("R2", on_hcq(conditions=(CLASS_V, CLASS_IV), meds=(MMF_BEFORE,)))


def test_r2_mycophenolate_taken_now_even_as_a_home_medicine_statement_keeps_it_quiet():
    inp = with_statements(on_hcq(meds=(MMF_BEFORE,)), statement("mycophenolate", name="CellCept"))
    assert "is taken" in stays_quiet("R2", inp)
    drafted = med("mycophenolate", name="mycophenolate mofetil", draft=True)
    assert "is taken" in stays_quiet("R2", on_hcq(meds=(MMF_BEFORE, drafted)))


def test_r2_needs_earlier_exposure_no_allergy_and_no_pregnancy_or_breastfeeding():
    assert "S0 covers" in stays_quiet("R2", on_hcq())
    assert "allergy" in stays_quiet("R2", on_hcq(meds=(MMF_BEFORE,), allergies=(allergy("mycophenolate"),)))
    pregnant = on_hcq(conditions=(cond("lupus", "lupus-nephritis"), PREGNANT), meds=(MMF_BEFORE,))
    assert "stopped on purpose" in stays_quiet("R2", pregnant)
    nursing = on_hcq(conditions=(cond("lupus", "lupus-nephritis"), cond("lactation")), meds=(MMF_BEFORE,))
    assert "stopped on purpose" in stays_quiet("R2", nursing)


def test_s0_leaves_out_the_mycophenolate_sentence_in_pregnancy():
    assert "together with mycophenolate" in fires("S0", make()).detail
    pregnant = fires("S0", make(conditions=(cond("lupus", "lupus-nephritis"), PREGNANT)))
    assert "mycophenolate rather than alone" not in pregnant.detail
    assert "belongs in the plan" not in pregnant.detail


# --- R3, R4 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "drug", "window", "inside"),
    [
        ("R3", "belimumab", "belimumab_window_days", 35),
        ("R4", "cyclophosphamide", "cyclophosphamide_window_days", 30),
    ],
)
def test_r3_r4_count_an_infusion_given_up_to_the_window_ago(rule, drug, window, inside):
    def given(days_ago):
        return med(drug, name=drug, status="completed", days=days_ago)

    f = fires(rule, on_hcq(meds=(given(inside),)))
    assert f.indicator == "info" and "completed, last given" in f.detail
    assert "no " in stays_quiet(rule, on_hcq(meds=(given(inside + 1),)))
    assert stays_quiet(rule, on_hcq(meds=(given(inside),), **{window: inside - 1}))


@pytest.mark.parametrize(("rule", "drug"), [("R3", "belimumab"), ("R4", "cyclophosphamide")])
def test_r3_r4_an_active_order_or_statement_counts_whatever_its_date(rule, drug):
    assert fires(rule, on_hcq(meds=(med(drug, name=drug, days=400),)))
    f = fires(rule, with_statements(on_hcq(), statement(drug, name=f"{drug} (infusion centre)")))
    assert "home medicine (statement)" in f.detail


def test_r3_r4_wording_names_the_combination_outside_the_studied_regimens():
    belimumab = fires("R3", on_hcq(meds=(med("belimumab", name="Benlysta"),)))
    assert "belimumab or a CNI" in belimumab.summary and "outside the studied regimens" in belimumab.detail
    cyclophosphamide = fires("R4", on_hcq(meds=(med("cyclophosphamide", name="cyclophosphamide"),)))
    assert "voclosporin label" in cyclophosphamide.detail and "lupkynis-label" in cyclophosphamide.citations


# --- P8 -----------------------------------------------------------------------------------------------------
def pregnant_sle(*labs, meds=(), statements=(), **kwargs) -> RuleInput:
    conditions = kwargs.pop("conditions", (cond("lupus"), PREGNANT))
    inp = make(conditions=conditions, meds=(med(HCQ, name="hydroxychloroquine"), *meds), labs=labs, **kwargs)
    return with_statements(inp, *statements)


def due_for(gestation_days: int):
    due = (NOW + timedelta(days=280 - gestation_days)).date().isoformat()
    return lab("edd", answer=due, days=20)


@pytest.mark.parametrize(("days", "fires_"), [(83, False), (84, True), (195, True), (196, False)])
def test_p8_gestational_age_from_the_due_date_from_12_to_before_28_weeks(days, fires_):
    inp = pregnant_sle(due_for(days))
    if fires_:
        f = fires("P8", inp)
        assert f.indicator == "info" and f"{days // 7} weeks {days % 7} days" in f.detail
        assert "81 mg" in f.summary and "over-the-counter aspirin" in f.detail
    else:
        assert "outside 12–28 weeks" in stays_quiet("P8", inp)


def test_p8_gestational_age_observation_is_advanced_to_today_and_wins_over_the_due_date():
    measured = lab("gestational-age", 18 * 7, days=14)  # 18 weeks, 2 weeks ago: 20 weeks today
    f = fires("P8", pregnant_sle(measured, due_for(30 * 7)))
    assert "20 weeks 0 days" in f.detail


def test_p8_a_gestational_age_from_an_earlier_pregnancy_is_not_used():
    old = lab("gestational-age", 30 * 7, days=400)
    f = fires("P8", pregnant_sle(old, due_for(100)))
    assert "14 weeks 2 days (estimated delivery date" in f.detail
    assert any("earlier pregnancy" in m for m in f.missing)


def test_p8_an_unknown_gestational_age_counts_and_is_named():
    f = fires("P8", pregnant_sle())
    assert "gestational age unknown" in f.detail
    assert any("no gestational-age result or estimated delivery date" in m for m in f.missing)


def test_p8_aspirin_taken_as_an_order_or_a_statement_or_an_allergy_keeps_it_quiet():
    asa = statement("aspirin", name="aspirin 81 mg (over the counter)")
    assert "aspirin is taken" in stays_quiet("P8", pregnant_sle(statements=(asa,)))
    assert "aspirin is taken" in stays_quiet("P8", pregnant_sle(meds=(med("aspirin", name="aspirin"),)))
    assert "allergy" in stays_quiet("P8", pregnant_sle(allergies=(allergy("aspirin"),)))


def test_p8_needs_pregnancy_and_lupus():
    assert "not documented" in stays_quiet("P8", pregnant_sle(conditions=(cond("lupus"),)))
    other = pregnant_sle(conditions=(PREGNANT,), scope="any-indication")
    assert "no active SLE" in stays_quiet("P8", other)


def test_p8_window_is_an_administrator_setting():
    assert stays_quiet("P8", pregnant_sle(due_for(90), aspirin_gestation_weeks=[13, 28]))
    assert fires("P8", pregnant_sle(due_for(200), aspirin_gestation_weeks=[12, 36]))


# --- reading MedicationStatements ---------------------------------------------------------------------------
def raw_statement(sid: str, status: str = "active", **medication) -> dict:
    return {
        "resourceType": "MedicationStatement",
        "id": sid,
        "status": status,
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2026-10-01",
        **(medication or {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "979092"}]}}),
    }


def test_only_active_statements_are_read_by_code_name_or_referenced_medication():
    terms = Terminology.load()
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {"coding": [{"system": RXNORM, "code": "243670"}]},
    }
    record = build_record(
        terminology=terms,
        now=NOW,
        patient=None,
        statements=[
            raw_statement("coded"),
            raw_statement("named", medicationCodeableConcept={"text": "Plaquenil 200 mg"}),
            raw_statement("referenced", medicationReference={"reference": "Medication/m1"}),
            raw_statement("stopped", status="stopped"),
            raw_statement("intended", status="intended"),
            raw_statement("other", medicationCodeableConcept={"text": "vitamin D"}),
        ],
        resolve=lambda ref: medication if ref == "Medication/m1" else None,
    )
    found = {m.id: m for m in record.statements}
    assert set(found) == {"coded", "named", "referenced"}
    assert found["coded"].reference == "MedicationStatement/coded" and found["coded"].is_statement
    assert "recognised by its name" in found["named"].name and HCQ in found["named"].concepts
    assert "aspirin" in found["referenced"].concepts
    assert record.medications == ()  # a statement is never an order
    assert [m.id for m in record.taking("aspirin")] == ["referenced"]


def test_a_condition_naming_hydroxychloroquine_is_tagged_whatever_form_word_it_holds():
    terms = Terminology.load()
    condition = {
        "resourceType": "Condition",
        "id": "eye",
        "subject": {"reference": "Patient/p"},
        "code": {"text": "Hydroxychloroquine retinopathy, both eyes"},
    }
    record = build_record(terminology=terms, now=NOW, patient=None, conditions=[condition])
    assert [c.id for c in record.confirmed_conditions(HCQ)] == ["eye"]


# --- through the service: prefetch and FHIR callback ------------------------------------------------------
TOKEN = "regimen-token-1"
PID = "regimen-p"


def _record(case: str, *extra: dict) -> dict:
    pid = f"{PID}-{case}"
    subject = {"reference": f"Patient/{pid}"}
    resources = [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1992-02-02"},
        {
            "resourceType": "Condition",
            "id": f"{pid}-sle",
            "subject": subject,
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "code": {"coding": [{"system": SNOMED, "code": "55464009"}]},
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{case}-draft",
            "status": "draft",
            "intent": "order",
            "subject": subject,
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "198377"}]},
        },
        *({**r, "subject": subject} for r in extra),
    ]
    return bundle(resources)


BUNDLES = {
    "none": _record("none"),
    "statement": _record("statement", raw_statement("statement-hcq")),
    "referenced": _record(
        "referenced",
        {
            "resourceType": "Medication",
            "id": "hcq-med",
            "code": {"coding": [{"system": RXNORM, "code": "5521"}]},
        },
        raw_statement("referenced-hcq", medicationReference={"reference": "Medication/hcq-med"}),
    ),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("regimen"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base():
    with serving_records(BUNDLES, TOKEN) as base:
        yield base


def request_for(app, fhir_base, case: str, via: str) -> dict:
    """The order-sign request of ``case``, sent by ``via`` (prefetch, fhir or both)."""
    return build_request_from_bundle(
        BUNDLES[case],
        [f"MedicationRequest/{case}-draft"],
        hook="order-sign",
        via=via,
        fhir_base=fhir_base if via != "prefetch" else None,
        prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
        token=TOKEN,
    )


def send(app, body: dict) -> dict:
    response = app.test_client().post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def call(app, fhir_base, case: str, via: str, drop: str | None = None) -> dict:
    body = request_for(app, fhir_base, case, via)
    if drop:
        body["prefetch"].pop(drop)
    return send(app, body)


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
def test_a_hydroxychloroquine_statement_read_by_prefetch_or_callback_keeps_r1_quiet(app, fhir_base, via):
    assert "R1" in finding_ids(call(app, fhir_base, "none", via))
    assert "R1" not in finding_ids(call(app, fhir_base, "statement", via))
    referenced = call(app, fhir_base, "referenced", via)
    if via == "prefetch":  # the Medication is neither in the request nor readable: said, and R1 speaks
        assert "Medication/hcq-med, which was not in the request" in str(referenced)
    else:
        assert "R1" not in finding_ids(referenced)


def test_a_statements_medication_included_in_its_prefetch_bundle_is_found(app, fhir_base):
    body = request_for(app, fhir_base, "referenced", "prefetch")
    medication = next(
        e["resource"] for e in BUNDLES["referenced"]["entry"] if e["resource"]["id"] == "hcq-med"
    )
    body["prefetch"]["medicationStatements"]["entry"].append(
        {"fullUrl": "urn:uuid:0d5c0e1e-3f43-4a55-9d5f-6a0d9c1d2e3f", "resource": medication,
         "search": {"mode": "include"}}
    )  # fmt: skip
    for entry in body["prefetch"]["medicationStatements"]["entry"]:
        if entry["resource"]["resourceType"] == "MedicationStatement":
            entry["resource"]["medicationReference"] = {
                "reference": "urn:uuid:0d5c0e1e-3f43-4a55-9d5f-6a0d9c1d2e3f"
            }
    assert "R1" not in finding_ids(send(app, body))


def test_statements_missing_from_the_prefetch_are_fetched_else_named_on_the_card(app, fhir_base):
    fetched = call(app, fhir_base, "statement", "both", drop="medicationStatements")
    assert "R1" not in finding_ids(fetched)  # fetched from the FHIR server
    unreachable = call(app, fhir_base, "statement", "prefetch", drop="medicationStatements")
    assert "R1" in finding_ids(unreachable)
    assert "home and over-the-counter medicines (MedicationStatement)" in str(unreachable)


def test_discovery_asks_the_order_services_for_active_statements_only(app):
    services = {s["id"]: s for s in app.test_client().get("/cds-services").get_json()["services"]}
    query = "MedicationStatement?patient={{context.patientId}}&status=active"
    assert services["tacrolimus-order-sign"]["prefetch"]["medicationStatements"] == query
    assert services["tacrolimus-order-select"]["prefetch"]["medicationStatements"] == query
    assert "medicationStatements" not in services["tacrolimus-monitoring"]["prefetch"]


def test_the_salvage_context_card_is_titled_regimen_and_salvage_context(app, fhir_base):
    cards = call(app, fhir_base, "none", "prefetch")["cards"]
    (card,) = [c for c in cards if c["source"]["topic"]["code"] == "salvage-context"]
    assert card["source"]["topic"]["display"] == "Regimen and salvage context"
    assert "R1" in str(card["extension"])
