"""Issue 22's Observation and Procedure cases through the HTTP service, by prefetch and by FHIR callback
(rules.md v3 § Reading the record however it is coded).

Each patient is a woman of 32 with lupus nephritis and an active mycophenolate order, for whom a tacrolimus
order is being signed; only how the chart codes one fact changes. Before the reading layer, a positive urine
hCG coded as a LOINC answer gave P3 instead of P2, a negative one coded the same way did not end a pregnancy,
a reactive HBsAg coded as a SNOMED qualifier value gave no N14 and silenced N15, "Breastfeeding, not
exclusively" was read as not breastfeeding, and a delivery recorded as a Procedure did not end a pregnancy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cds_service.protocol import check_response
from cds_service.sandbox.requests import build_request_from_bundle
from tests.support import FINDINGS_KEY, LOINC, RXNORM, SNOMED, bundle, finding_ids, make_app, serving_records

TOKEN = "reading-token-1"
NOW = datetime.now(UTC)
URINE_HCG = "2106-3"
HBSAG = "5196-1"
BREASTFEEDING = "63895-7"


def day(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat(timespec="seconds")


def answer(system: str, code: str, display: str) -> dict:
    return {"valueCodeableConcept": {"coding": [{"system": system, "code": code, "display": display}]}}


def observation(oid: str, patient: str, loinc: str, value: dict, days_ago: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": day(days_ago),
        **value,
    }


def base(case: str) -> list[dict]:
    patient = f"{case}-patient"
    active = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
    }
    return [
        {"resourceType": "Patient", "id": patient, "gender": "female", "birthDate": "1994-03-01"},
        {
            "resourceType": "Condition",
            "id": f"{case}-ln",
            "subject": {"reference": f"Patient/{patient}"},
            "clinicalStatus": active,
            "code": {"coding": [{"system": SNOMED, "code": "68815009", "display": "Lupus nephritis"}]},
            "recordedDate": day(400)[:10],
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{case}-mmf",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "authoredOn": day(60)[:10],
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "200060", "display": "mycophenolate mofetil 500 MG"}]
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{case}-draft",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "198377"}],
                "text": "tacrolimus",
            },
        },
    ]


def pregnancy(case: str, days_ago: float) -> dict:
    return {
        **base(case)[1],
        "id": f"{case}-pregnancy",
        "code": {"coding": [{"system": SNOMED, "code": "77386006", "display": "Pregnancy"}]},
        "recordedDate": day(days_ago)[:10],
    }


def delivery(case: str, days_ago: float) -> dict:
    return {
        "resourceType": "Procedure",
        "id": f"{case}-delivery",
        "status": "completed",
        "subject": {"reference": f"Patient/{case}-patient"},
        "code": {"coding": [{"system": SNOMED, "code": "11466000", "display": "Cesarean section"}]},
        "performedDateTime": day(days_ago),
    }


def case_resources(case: str) -> list[dict]:
    patient = f"{case}-patient"
    extra: dict[str, list[dict]] = {
        "hcg-loinc-positive": [
            observation("hcg-pos", patient, URINE_HCG, answer(LOINC, "LA6576-8", "Positive"), 2),
        ],
        "hcg-loinc-negative-after-positive": [
            observation("hcg-pos-old", patient, URINE_HCG, answer(LOINC, "LA6576-8", "Positive"), 20),
            observation("hcg-neg", patient, URINE_HCG, answer(LOINC, "LA6577-6", "Negative"), 3),
        ],
        "hbsag-snomed-reactive": [
            observation("hbsag-r", patient, HBSAG, answer(SNOMED, "11214006", "Reactive"), 30),
        ],
        "hbsag-unreadable": [
            observation("hbsag-x", patient, HBSAG, answer(LOINC, "LA9999-9", "Pending review"), 30),
        ],
        "breastfeeding-not-exclusively": [
            observation(
                "bf-partial",
                patient,
                BREASTFEEDING,
                {"valueCodeableConcept": {"text": "Breastfeeding, not exclusively"}},
                5,
            ),
        ],
        "pregnant": [pregnancy(case, 200)],
        "pregnant-then-delivered": [pregnancy(case, 200), delivery(case, 10)],
    }
    return [*base(case), *extra[case]]


CASES = [
    "hcg-loinc-positive",
    "hcg-loinc-negative-after-positive",
    "hbsag-snomed-reactive",
    "hbsag-unreadable",
    "breastfeeding-not-exclusively",
    "pregnant",
    "pregnant-then-delivered",
]
BUNDLES = {case: bundle(case_resources(case)) for case in CASES}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("reading"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base():
    with serving_records(BUNDLES, TOKEN) as base:
        yield base


def cards_for(app, fhir_base, case: str, via: str) -> dict:
    body = build_request_from_bundle(
        BUNDLES[case],
        [f"MedicationRequest/{case}-draft"],
        hook="order-sign",
        via=via,
        fhir_base=fhir_base if via == "fhir" else None,
        prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
        token=TOKEN,
    )
    response = app.test_client().post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return cards


def indicator(cards: dict, finding: str) -> str | None:
    for card in cards["cards"]:
        for item in card["extension"][FINDINGS_KEY]:
            if item["id"] == finding:
                return item["indicator"]
    return None


def text(cards: dict) -> str:
    return " ".join(f"{c.get('summary', '')} {c.get('detail', '')}" for c in cards["cards"])


VIAS = pytest.mark.parametrize("via", ["prefetch", "fhir"])


@VIAS
def test_a_positive_urine_hcg_coded_as_a_loinc_answer_is_pregnancy_and_the_teratogen_is_critical(
    app, fhir_base, via
):
    cards = cards_for(app, fhir_base, "hcg-loinc-positive", via)
    found = finding_ids(cards)
    assert {"P1", "P2"} <= found and "P3" not in found
    assert indicator(cards, "P2") == "critical"


@VIAS
def test_a_later_negative_coded_the_same_way_ends_the_pregnancy(app, fhir_base, via):
    found = finding_ids(cards_for(app, fhir_base, "hcg-loinc-negative-after-positive", via))
    assert not {"P1", "P2", "P3"} & found  # not pregnant, and the negative test is within 30 days


@VIAS
def test_a_reactive_hbsag_coded_as_a_snomed_qualifier_value_gives_n14_and_no_screening_reminder(
    app, fhir_base, via
):
    found = finding_ids(cards_for(app, fhir_base, "hbsag-snomed-reactive", via))
    assert "N14" in found and "N15" not in found


@VIAS
def test_an_unreadable_hbsag_does_not_silence_the_screening_reminder_and_is_named(app, fhir_base, via):
    cards = cards_for(app, fhir_base, "hbsag-unreadable", via)
    found = finding_ids(cards)
    assert "N15" in found and "N14" not in found
    said = text(cards)
    assert "HBsAg result on" in said and "could not be read" in said
    assert "http://loinc.org|LA9999-9" in said and "Observation/hbsag-x" in said


@VIAS
def test_breastfeeding_not_exclusively_is_breastfeeding(app, fhir_base, via):
    cards = cards_for(app, fhir_base, "breastfeeding-not-exclusively", via)
    assert {"P4", "P7"} <= finding_ids(cards)
    assert indicator(cards, "P7") == "warning"


@VIAS
def test_a_delivery_procedure_ends_the_pregnancy_as_the_outcome_condition_does(app, fhir_base, via):
    assert indicator(cards_for(app, fhir_base, "pregnant", via), "P2") == "critical"
    found = finding_ids(cards_for(app, fhir_base, "pregnant-then-delivered", via))
    assert not {"P1", "P2"} & found
    assert "P3" in found  # a delivered mother on mycophenolate is pregnancy-capable again


def test_discovery_asks_for_delivery_procedures_only(app):
    services = app.test_client().get("/cds-services").get_json()["services"]
    # The co-prescribing services answer every medication order, so they read Procedures by callback, and
    # only once a watched draft fires for a patient on tacrolimus (rules.md, The other prescriber).
    asking = [s for s in services if "co-prescribing" not in s["id"]]
    assert len(asking) == 3 and all("procedures" not in s["prefetch"] for s in services if s not in asking)
    for service in asking:
        query = service["prefetch"]["procedures"]
        assert query.startswith("Procedure?patient={{context.patientId}}&code=")
        codes = query.partition("&code=")[2].split(",")
        assert "11466000" in codes and "10D00Z0" in codes and "68815009" not in codes and len(codes) == 122
