"""N19 and the vaccines a chart records, through the HTTP service, by prefetch and by FHIR callback.

Each patient is the woman of test_reading_http.py (lupus nephritis, mycophenolate, a tacrolimus order being
signed: a new start); only her vaccines change. The FHIR server is the fixture server on loopback, so the
``immunizations`` prefetch template (``Immunization?patient=…&status=completed``) is run for real on the
callback, and a drafted ServiceRequest vaccine is not on it (it is not signed yet).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request_from_bundle
from cds_service.sandbox.store import FhirStore
from tests.support import FINDINGS_KEY, bundle, finding_ids, make_app
from tests.test_reading_http import base, day

TOKEN = "vaccines-token-1"
CVX = "http://hl7.org/fhir/sid/cvx"
MMR = {"system": CVX, "code": "03", "display": "measles, mumps and rubella virus vaccine"}
SHINGRIX = {"system": CVX, "code": "187", "display": "zoster vaccine recombinant"}


def vaccine(case: str, key: str, coding: dict | None, text: str, days_ago: float, **more) -> dict:
    code = {"coding": [coding], "text": text} if coding else {"text": text}
    return {
        "resourceType": "Immunization",
        "id": f"{case}-{key}",
        "status": "completed",
        "vaccineCode": code,
        "patient": {"reference": f"Patient/{case}-patient"},
        "occurrenceDateTime": day(days_ago),
        **more,
    }


def vaccine_order(case: str) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": f"{case}-vaccine",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{case}-patient"},
        "code": {"coding": [{"system": CVX, "code": "21"}], "text": "Varicella vaccine (Varivax)"},
    }


def case_resources(case: str) -> list[dict]:
    extra = {
        "mmr-20-days": [vaccine(case, "mmr", MMR, "MMR", 20)],
        "mmr-40-days": [vaccine(case, "mmr", MMR, "MMR", 40)],
        "mmr-not-done": [vaccine(case, "mmr", MMR, "MMR", 5, status="not-done")],
        "shingrix-10-days": [vaccine(case, "shx", SHINGRIX, "Shingrix", 10)],
        "varivax-by-name-as-text-date": [
            {
                **{
                    k: v
                    for k, v in vaccine(case, "var", None, "Varivax", 0).items()
                    if k != "occurrenceDateTime"
                },
                "occurrenceString": day(12)[:10],
            }
        ],
        "varicella-service-request": [vaccine_order(case)],
    }
    return [*base(case), *extra[case]]


CASES = (
    "mmr-20-days",
    "mmr-40-days",
    "mmr-not-done",
    "shingrix-10-days",
    "varivax-by-name-as-text-date",
    "varicella-service-request",
)
BUNDLES = {case: bundle(case_resources(case)) for case in CASES}


def drafts(case: str) -> list[str]:
    found = [f"MedicationRequest/{case}-draft"]
    return found + ([f"ServiceRequest/{case}-vaccine"] if case == "varicella-service-request" else [])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("vaccines"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base() -> Iterator[str]:
    store = FhirStore()
    for case, records in BUNDLES.items():
        store.add_bundle(records, exclude=drafts(case))  # drafts are not signed: not on the EHR's server
    with serve_in_thread(store, require_token=TOKEN) as url:
        yield url


def cards_for(app, fhir_base: str, case: str, via: str) -> dict:
    body = build_request_from_bundle(
        BUNDLES[case],
        drafts(case),
        hook="order-sign",
        via=via,
        fhir_base=fhir_base if via == "fhir" else None,
        prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
        token=TOKEN,
    )
    if via == "prefetch":
        assert "immunizations" in body["prefetch"]
    else:
        assert "prefetch" not in body or "immunizations" not in body["prefetch"]
    response = app.test_client().post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return cards


def n19(cards: dict) -> str | None:
    for card in cards["cards"]:
        for item in card["extension"][FINDINGS_KEY]:
            if item["id"] == "N19":
                return item["indicator"]
    return None


def detail(cards: dict) -> str:
    return " ".join(c.get("detail", "") for c in cards["cards"])


VIAS = pytest.mark.parametrize("via", ["prefetch", "fhir"])


@VIAS
def test_an_mmr_given_20_days_before_a_new_start_is_info_and_40_days_is_nothing(app, fhir_base, via):
    cards = cards_for(app, fhir_base, "mmr-20-days", via)
    assert n19(cards) == "info" and "Immunization/mmr-20-days-mmr" in detail(cards)
    assert "N19" not in finding_ids(cards_for(app, fhir_base, "mmr-40-days", via))


@VIAS
def test_a_not_done_mmr_and_shingrix_never_count(app, fhir_base, via):
    assert "N19" not in finding_ids(cards_for(app, fhir_base, "mmr-not-done", via))
    assert "N19" not in finding_ids(cards_for(app, fhir_base, "shingrix-10-days", via))


@VIAS
def test_a_vaccine_recorded_by_name_with_a_text_date_counts_and_says_it_was_recognised_by_name(
    app, fhir_base, via
):
    cards = cards_for(app, fhir_base, "varivax-by-name-as-text-date", via)
    assert n19(cards) == "info"
    assert "Varivax (recognised by its name; check the order)" in detail(cards)


@VIAS
def test_a_vaccine_drafted_as_a_service_request_is_a_warning_whose_suggestion_deletes_it(app, fhir_base, via):
    cards = cards_for(app, fhir_base, "varicella-service-request", via)
    assert n19(cards) == "warning"
    actions = [a for c in cards["cards"] for s in c.get("suggestions", []) for a in s["actions"]]
    assert {
        "type": "delete",
        "resourceId": "ServiceRequest/varicella-service-request-vaccine",
    }.items() <= next(a for a in actions if a["type"] == "delete").items()


def test_without_immunizations_and_without_a_fhir_server_the_card_says_so(app):
    body = build_request_from_bundle(
        BUNDLES["mmr-20-days"],
        drafts("mmr-20-days"),
        hook="order-sign",
        prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
    )
    del body["prefetch"]["immunizations"]
    response = app.test_client().post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code == 200  # optional: never a 412
    assert "N19" not in finding_ids(response.get_json())
    assert "vaccines given (Immunization)" in detail(response.get_json())


def test_discovery_asks_every_tacrolimus_service_for_completed_immunizations(app):
    services = app.test_client().get("/cds-services").get_json()["services"]
    # the co-prescribing services, called for every medication order, read them by callback when needed
    services = [s for s in services if "co-prescribing" not in s["id"]]
    assert services
    for service in services:
        assert (
            service["prefetch"]["immunizations"]
            == "Immunization?patient={{context.patientId}}&status=completed"
        )


def test_the_fixture_server_searches_immunizations_by_patient_status_and_vaccine_code():
    store = FhirStore()
    for records in BUNDLES.values():
        store.add_bundle(records)

    def ids(params: dict) -> list[str]:
        found = store.search("Immunization", params, "http://x")
        return sorted(e["resource"]["id"] for e in found.get("entry", []))

    assert ids({"patient": ["mmr-not-done-patient"], "status": ["completed"]}) == []
    assert ids({"patient": ["mmr-20-days-patient"], "status": ["completed"]}) == ["mmr-20-days-mmr"]
    assert ids({"vaccine-code": [f"{CVX}|187"]}) == ["shingrix-10-days-shx"]
