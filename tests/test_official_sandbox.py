"""The official CDS Hooks Sandbox (github.com/cds-hooks/sandbox @3b7e255) against the fixture FHIR server.

Each step here repeats a request that Sandbox's source code makes, with the same method, headers and body:
``fhir-metadata-retrieval.js`` (metadata, then ``GET Patient`` to check the server is open),
``patient-retrieval.js`` (the patient, then its conditions), ``service-exchange.js`` (each prefetch query
by ``POST [type]/_search`` with a form body, the hook call with a JWT and no ``fhirAuthorization``) and
``medication-reducers.js`` (its draft MedicationRequest: id ``request-123``, ``category`` an object, a
``draftOrders`` Bundle without ``type``). The browser's CORS checks are made by hand: a page on
https://sandbox.cds-hooks.org reads loopback only if every answer allows its origin and every preflight
(Chromium's Private Network Access one included) is answered.
"""

from __future__ import annotations

import uuid
from datetime import date
from urllib.parse import parse_qsl, quote, urlencode

import pytest
import requests

from cds_service.fixtures import load_bundle
from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.store import FhirStore
from tests.support import make_app

ORIGIN = "https://sandbox.cds-hooks.org"
FIXTURE = "pregnant-ln-flare-on-mmf"  # pregnant, mycophenolate active: the teratogen card is critical
TACROLIMUS_05 = "313190"  # "Tacrolimus 0.5 MG Oral Capsule" in the Sandbox's medication list
FHIR_ACCEPT = {"Accept": "application/json+fhir"}  # what the Sandbox sends to FHIR servers
FROM_SANDBOX = {"Origin": ORIGIN, **FHIR_ACCEPT}
FORM_POST = {**FROM_SANDBOX, "content-type": "application/x-www-form-urlencoded"}


def sandbox_draft(patient_id: str) -> dict:
    """``createFhirResource`` for R4 with a medication, dose and supply chosen (Rx View defaults)."""
    return {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": date.today().isoformat(),
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": "{pill}"}}
                ],
            }
        ],
        "dispenseRequest": {
            "expectedSupplyDuration": {
                "value": 30,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            }
        },
        "intent": "order",
        "category": {  # an object, not the list R4 defines: the Sandbox's own shape
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "code": "community",
                }
            ]
        },
        "medicationCodeableConcept": {
            "text": "Tacrolimus 0.5 MG Oral Capsule",
            "coding": [
                {
                    "display": "Tacrolimus 0.5 MG Oral Capsule",
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": TACROLIMUS_05,
                }
            ],
        },
    }


def sandbox_form_body(query: str) -> str:
    """``encodeUriParameters`` then ``new URLSearchParams(query).toString()``: the POST _search body."""
    encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in parse_qsl(query, keep_blank_values=True))
    return urlencode(parse_qsl(encoded, keep_blank_values=True))


def assert_origin_allowed(response) -> None:
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), response.headers


def preflight(url: str, method: str, headers: str) -> requests.Response:
    return requests.options(
        url,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
            "Access-Control-Request-Private-Network": "true",
        },
        timeout=10,
    )


def assert_preflight_passes(response, method: str, headers: str) -> None:
    assert response.status_code in (200, 204)
    assert_origin_allowed(response)
    assert method in response.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {h.strip() for h in headers.split(",")} <= allowed
    assert response.headers.get("Access-Control-Allow-Private-Network") == "true"


@pytest.fixture(scope="module")
def fhir_base():
    with serve_in_thread(FhirStore.from_fixtures()) as base:
        yield base


@pytest.fixture(scope="module")
def patient_id() -> str:
    bundle = load_bundle(FIXTURE)
    return next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def test_the_sandbox_connects_to_the_fixture_server_and_loads_the_patient(fhir_base, patient_id):
    get = {"Origin": ORIGIN, "Accept": "application/json"}
    metadata = requests.get(f"{fhir_base}/metadata", headers=get, timeout=10)
    assert metadata.status_code == 200
    assert_origin_allowed(metadata)
    assert metadata.json()["fhirVersion"].startswith("4.")  # picks the R4 draft shape
    open_check = requests.get(f"{fhir_base}/Patient", headers=get, timeout=10)
    assert open_check.status_code == 200  # not 401: the Sandbox accepts only open servers
    assert_origin_allowed(open_check)

    patient = requests.get(f"{fhir_base}/Patient/{patient_id}", headers=FROM_SANDBOX, timeout=10)
    assert patient.json()["resourceType"] == "Patient"
    assert_origin_allowed(patient)
    conditions = requests.get(f"{fhir_base}/Condition?patient={patient_id}", headers=FROM_SANDBOX, timeout=10)
    assert conditions.json()["total"] >= 1
    assert_origin_allowed(conditions)


def test_preflights_are_answered_even_for_a_server_that_requires_a_token():
    with serve_in_thread(FhirStore.from_fixtures(), require_token="t0ken") as base:
        for path, method, headers in [
            ("/metadata", "GET", "accept"),
            ("/Observation/_search", "POST", "accept,authorization,content-type"),
            ("/Patient/x", "GET", "accept,authorization"),
        ]:
            assert_preflight_passes(preflight(base + path, method, headers), method, headers)
        refused = requests.post(
            f"{base}/Condition/_search", data={"patient": "x"}, headers={"Origin": ORIGIN}, timeout=10
        )
        assert refused.status_code == 401  # the preflight opens nothing: the token is still checked
        assert_origin_allowed(refused)  # and the page can read why


def test_a_sandbox_round_prefetches_by_post_search_and_gets_cards(tmp_path, fhir_base, patient_id):
    service = make_app(tmp_path, dev=True).test_client()
    discovery = service.get("/cds-services", headers={"Origin": ORIGIN})
    assert discovery.headers["Access-Control-Allow-Origin"] == ORIGIN
    (select,) = [s for s in discovery.get_json()["services"] if s["id"] == "tacrolimus-order-select"]
    prefetch = sandbox_prefetch(select, patient_id, fhir_base)
    assert prefetch["observations"]["total"] > 0  # the code list and _sort/_count came through the form
    expected = requests.get(f"{fhir_base}/{template_query(select, 'observations', patient_id)}", timeout=10)
    assert [e["resource"]["id"] for e in prefetch["observations"]["entry"]] == [
        e["resource"]["id"] for e in expected.json()["entry"]
    ]

    call = f"/cds-services/{select['id']}"
    asked = "authorization,content-type"
    assert_preflight_passes(service.options(call, headers=preflight_headers("POST", asked)), "POST", asked)
    request = sandbox_call(patient_id, fhir_base, prefetch, sandbox_draft(patient_id))
    response = service.post(call, json=request, headers={"Origin": ORIGIN, "Accept": "application/json"})
    assert response.status_code == 200, response.get_json()
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    cards = response.get_json()
    assert check_response(cards) == []
    critical = [c for c in cards["cards"] if c["indicator"] == "critical"]
    assert critical and "mycophenolate" in critical[0]["summary"].lower()
    assert "request-123" not in str(cards)  # the Sandbox's draft shape is not reported as unreadable


def sandbox_prefetch(service: dict, patient_id: str, fhir_base: str) -> dict:
    """Each prefetch query as the Sandbox runs it: an instance read by GET, a search by POST ``_search``."""
    prefetch = {}
    for key, template in service["prefetch"].items():
        path, _, query = template.replace("{{context.patientId}}", patient_id).partition("?")
        if not query:  # an instance read
            answer = requests.get(f"{fhir_base}/{path}", headers=FROM_SANDBOX, timeout=10)
        else:  # "Type level search; prefer POST to _search then fallback to GET"
            answer = requests.post(
                f"{fhir_base}/{path}/_search",
                data=sandbox_form_body(query),
                headers={
                    "Origin": ORIGIN,
                    **FHIR_ACCEPT,
                    "content-type": "application/x-www-form-urlencoded",
                },
                timeout=10,
            )
        assert answer.status_code == 200, (key, answer.text)
        assert_origin_allowed(answer)
        prefetch[key] = answer.json()
    return prefetch


def sandbox_call(patient_id: str, fhir_base: str, prefetch: dict, draft: dict) -> dict:
    """The Sandbox's order-select call for its one draft (``service-exchange.js``)."""
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "order-select",
        "fhirServer": fhir_base,
        "context": {
            "patientId": patient_id,
            "userId": "Practitioner/COREPRACTITIONER1",
            "selections": ["MedicationRequest/request-123"],
            "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]},
        },
        "prefetch": prefetch,
    }


CO_PRESCRIBING_FIXTURE = "cp-acetaminophen-draft"  # on tacrolimus since March; its own draft is not served
SANDBOX_CLARITHROMYCIN = ("205866", "Clarithromycin 500 MG Oral Tablet [Biaxin]")  # in its medication list


def test_a_sandbox_rx_view_round_drafting_clarithromycin_gets_the_co_prescribing_card(tmp_path, fhir_base):
    """Rx View calls every order-select service it discovered: the tacrolimus one stays quiet (no tacrolimus
    is drafted), the co-prescribing one warns the clinician drafting clarithromycin."""
    service = make_app(tmp_path, dev=True).test_client()
    bundle = load_bundle(CO_PRESCRIBING_FIXTURE)
    patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    code, name = SANDBOX_CLARITHROMYCIN
    draft = sandbox_draft(patient)
    draft["medicationCodeableConcept"] = {
        "text": name,
        "coding": [{"display": name, "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}],
    }
    discovered = service.get("/cds-services", headers={"Origin": ORIGIN}).get_json()["services"]
    answers = {}
    for called in [s for s in discovered if s["hook"] == "order-select"]:
        request = sandbox_call(patient, fhir_base, sandbox_prefetch(called, patient, fhir_base), draft)
        response = service.post(f"/cds-services/{called['id']}", json=request, headers={"Origin": ORIGIN})
        assert response.status_code == 200, response.get_json()
        assert check_response(response.get_json()) == []
        answers[called["id"]] = response.get_json()["cards"]
    assert answers["tacrolimus-order-select"] == []
    (card,) = answers["tacrolimus-co-prescribing-select"]
    assert card["indicator"] == "warning"
    assert "Azithromycin" in card["detail"] and "This patient takes tacrolimus" in card["detail"]
    assert "request-123" in str(card["suggestions"])  # "Remove the draft": the Sandbox's own draft id


def template_query(service: dict, key: str, patient_id: str) -> str:
    return service["prefetch"][key].replace("{{context.patientId}}", patient_id)


def preflight_headers(method: str, headers: str) -> dict[str, str]:
    return {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
        "Access-Control-Request-Private-Network": "true",
    }


def test_post_search_needs_a_form_body_and_names_unsupported_parameters(fhir_base, patient_id):
    as_json = requests.post(f"{fhir_base}/Condition/_search", json={"patient": patient_id}, timeout=10)
    assert as_json.status_code == 415
    assert "application/x-www-form-urlencoded" in as_json.json()["issue"][0]["diagnostics"]
    unknown = requests.post(f"{fhir_base}/Condition/_search", data={"onset-age": "30"}, timeout=10)
    assert unknown.status_code == 400
    assert unknown.json()["issue"][0]["expression"] == ["onset-age"]
    both = requests.post(
        f"{fhir_base}/Condition/_search?patient={patient_id}", data={"_count": "1"}, timeout=10
    ).json()
    assert both["total"] >= 1 and len(both["entry"]) == 1  # URL and body parameters combine


def test_dev_mode_sandbox_fhir_mount_answers_the_sandbox_too(tmp_path, patient_id):
    service = make_app(tmp_path, dev=True).test_client()
    asked = "accept,content-type"
    answer = service.options("/sandbox/fhir/Observation/_search", headers=preflight_headers("POST", asked))
    assert_preflight_passes(answer, "POST", asked)
    found = service.post(
        "/sandbox/fhir/Condition/_search",
        data={"patient": patient_id},
        headers=FROM_SANDBOX,
    )
    assert found.status_code == 200 and found.get_json()["total"] >= 1
    assert found.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
