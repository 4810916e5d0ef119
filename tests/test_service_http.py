"""The CDS Hooks service over HTTP: discovery, every prefetch state, FHIR server faults, errors, feedback."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cds_service.protocol import check_discovery, check_response
from cds_service.rules import NEEDS
from cds_service.sandbox.fhir_server import Faults, serve_in_thread
from cds_service.sandbox.requests import run_query
from cds_service.sandbox.store import FhirStore
from cds_service.storage import Store, make_engine
from tests.support import (
    DATA,
    RXNORM,
    finding_ids,
    hook_request,
    make_app,
    small_patient,
    tacrolimus_draft,
    with_fhir_server,
)

PID = "http-p1"
SIGN = "/cds-services/tacrolimus-order-sign"
SELECT = "/cds-services/tacrolimus-order-select"


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path, fhir={"deadline_seconds": 1.0, "page_cap": 10, "max_response_bytes": 5_000_000})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def patient():
    return small_patient(PID, observations=9)


@pytest.fixture
def fhir(patient):
    """A real FHIR server on loopback holding the patient; yields (base_url, faults, token)."""
    faults = Faults()
    with serve_in_thread(
        FhirStore([{"resourceType": "Bundle", "entry": [{"resource": r} for r in patient]}]),
        require_token="secret-token-123",
        faults=faults,
    ) as base:
        yield base, faults, "secret-token-123"


# --- discovery ----------------------------------------


def test_discovery_offers_the_three_services_with_templates_using_only_2_0_tokens(client, app):
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.get_json()
    assert check_discovery(body) == []
    hooks = {s["id"]: s["hook"] for s in body["services"]}
    assert hooks == {
        "tacrolimus-order-select": "order-select",
        "tacrolimus-order-sign": "order-sign",
        "tacrolimus-monitoring": "patient-view",
    }
    for service in body["services"]:
        assert service["title"] and service["description"] and service["usageRequirements"]
        assert {"patient", "conditions", "medications", "observations"} <= set(service["prefetch"])
        assert ("allergies" in service["prefetch"]) == (service["hook"] != "patient-view")
        for template in service["prefetch"].values():
            assert set(re.findall(r"\{\{(.*?)\}\}", template)) == {"context.patientId"}
            assert "draftOrders" not in template and "today()" not in template


def test_observation_template_asks_for_exactly_the_loinc_codes_the_rules_read(client, app):
    services = client.get("/cds-services").get_json()["services"]
    order_select = next(s for s in services if s["id"] == "tacrolimus-order-select")
    template = order_select["prefetch"]["observations"]
    asked = set(re.search(r"code=([^&]+)", template).group(1).split(","))
    terminology = app.extensions["cds_runtime"]().terminology
    needed = {
        f"{s}|{c}"
        for name in NEEDS["Observation"]
        for s, c, _ in terminology.codes(name)
        if s == "http://loinc.org"
    }
    assert asked == needed
    assert "http://loinc.org|2160-0" in asked and "http://loinc.org|11253-2" in asked
    assert "_sort=-date" in template


# --- the official examples ----------------------------------------


@pytest.mark.parametrize(
    "path, hook",
    [
        (
            "HL7-cds-hooks-library@5d04c4d_order-select.md/HL7-cds-hooks-library_order-select.md_L0051-0229_example-r4.json",
            "order-select",
        ),
        (
            "HL7-cds-hooks-library@5d04c4d_order-sign.md/HL7-cds-hooks-library_order-sign.md_L0053-0228_example-r4.json",
            "order-sign",
        ),
    ],
)
def test_official_r4_examples_with_a_tacrolimus_order_get_conformant_cards(client, path, hook):
    example = json.loads((DATA / "cds-hooks" / "examples" / path).read_text())
    context = example["context"]
    for entry in context["draftOrders"]["entry"]:
        if entry["resource"]["resourceType"] == "MedicationRequest":
            entry["resource"]["medicationCodeableConcept"] = {
                "coding": [{"system": RXNORM, "code": "198377", "display": "tacrolimus 1 MG Oral Capsule"}]
            }
    body = hook_request(context["patientId"], small_patient(context["patientId"]), hook=hook)
    body["context"] = context
    response = client.post(f"/cds-services/tacrolimus-{hook}", json=body)
    assert response.status_code == 200
    cards = response.get_json()
    assert check_response(cards) == []
    # support.small_patient: no hydroxychloroquine (R1), and her mycophenolate course has ended (R2)
    assert finding_ids(cards) == {"S3", "R1", "R2", "N1", "N11", "N15"}


def test_no_tacrolimus_order_gets_empty_cards_even_without_any_data(client):
    draft = tacrolimus_draft(PID)
    draft["medicationCodeableConcept"] = {
        "coding": [{"system": RXNORM, "code": "308182"}],
        "text": "amoxicillin",
    }
    response = client.post(SIGN, json=hook_request(PID, None, draft=draft))
    assert response.status_code == 200 and response.get_json() == {"cards": []}


def test_order_select_only_considers_the_selected_orders(client, patient):
    body = hook_request(PID, patient, hook="order-select")
    body["context"]["selections"] = ["MedicationRequest/something-else"]
    assert client.post(SELECT, json=body).get_json() == {"cards": []}


# --- every prefetch state ----------------------------------------


def test_full_prefetch_needs_no_fhir_server(client, patient, fhir):
    base, faults, token = fhir
    faults.status = 500  # any call to the server would fail
    response = client.post(SIGN, json=with_fhir_server(hook_request(PID, patient), base, token))
    assert response.status_code == 200
    assert "Not checked" not in json.dumps(response.get_json())
    # Recent creatinine, potassium and magnesium (in mg/dL, mmol/L) are used; the rest is missing (N1);
    # a rituximab allergy (S3); no earlier tacrolimus (N11) and no HBsAg on record (N15); earlier
    # mycophenolate, so no S0, but none now (R2); no hydroxychloroquine (R1).
    assert finding_ids(response.get_json()) == {"S3", "R1", "R2", "N1", "N11", "N15"}
    monitoring = next(
        c for c in response.get_json()["cards"] if c["source"]["topic"]["code"].startswith("neph")
    )
    assert "0.9 mg/dL" in monitoring["detail"]  # the recent creatinine, used
    assert "no glucose or HbA1c in the last 30 days" in monitoring["detail"]
    assert "no potassium" not in monitoring["detail"]


def test_absent_prefetch_is_fetched_from_the_fhir_server_with_the_token(client, patient, fhir):
    base, _, token = fhir
    prefetched = client.post(SIGN, json=hook_request(PID, patient)).get_json()
    fetched = client.post(SIGN, json=with_fhir_server(hook_request(PID, None), base, token))
    assert fetched.status_code == 200
    assert finding_ids(fetched.get_json()) == finding_ids(prefetched)


def test_wrong_token_is_refused_by_the_fhir_server_and_the_service_says_what_is_missing(client, fhir):
    base, _, _ = fhir
    response = client.post(SIGN, json=with_fhir_server(hook_request(PID, None), base, "wrong-token"))
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "HTTP 401" in json.dumps(outcome) and "wrong-token" not in json.dumps(outcome)


def test_null_prefetch_means_no_data_and_is_not_fetched(client, patient, fhir):
    base, faults, token = fhir
    faults.status = 500
    body = hook_request(PID, patient)
    body["prefetch"]["allergies"] = None
    response = client.post(SIGN, json=with_fhir_server(body, base, token))
    assert response.status_code == 200
    assert "Not checked" not in json.dumps(response.get_json())


def test_operation_outcome_in_prefetch_is_fetched_instead(client, patient, fhir):
    base, _, token = fhir
    full = client.post(SIGN, json=hook_request(PID, patient)).get_json()
    body = hook_request(PID, patient)
    body["prefetch"]["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    response = client.post(SIGN, json=with_fhir_server(body, base, token))
    assert response.status_code == 200
    assert finding_ids(response.get_json()) == finding_ids(full)


def test_operation_outcome_without_a_fhir_server_is_a_412_naming_the_data(client, patient):
    body = hook_request(PID, patient)
    body["prefetch"]["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    response = client.post(SIGN, json=body)
    assert response.status_code == 412
    issues = response.get_json()["issue"]
    assert [i["expression"] for i in issues] == [["prefetch.observations"]]
    assert "lab results" in issues[0]["diagnostics"]


def test_paged_prefetch_is_completed_from_the_fhir_server(client, patient, fhir):
    base, _, token = fhir
    full = client.post(SIGN, json=hook_request(PID, patient)).get_json()
    store = FhirStore([{"resourceType": "Bundle", "entry": [{"resource": r} for r in patient]}])
    first_page = run_query(store, f"Observation?patient={PID}&_count=2&_sort=-date", base)
    assert any(link["relation"] == "next" for link in first_page["link"])
    body = hook_request(PID, patient)
    body["prefetch"]["observations"] = first_page
    response = client.post(SIGN, json=with_fhir_server(body, base, token))
    assert response.status_code == 200
    assert finding_ids(response.get_json()) == finding_ids(full)
    assert "Not checked" not in json.dumps(response.get_json())


def test_missing_prefetch_without_fhir_server_is_412(client, patient):
    body = hook_request(PID, patient)
    del body["prefetch"]["conditions"], body["prefetch"]["patient"]
    response = client.post(SIGN, json=body)
    assert response.status_code == 412
    assert {tuple(i["expression"]) for i in response.get_json()["issue"]} == {
        ("prefetch.conditions",),
        ("prefetch.patient",),
    }


def test_optional_allergies_unavailable_gives_a_degraded_honest_answer(client, patient, fhir):
    base, faults, token = fhir
    faults.status = 503
    body = hook_request(PID, patient)
    del body["prefetch"]["allergies"]
    response = client.post(SIGN, json=with_fhir_server(body, base, token))
    assert response.status_code == 200
    text = json.dumps(response.get_json())
    assert (
        "Not checked:** allergy list (AllergyIntolerance): the FHIR server could not give it: HTTP 503"
        in text
    )


# --- FHIR server faults ----------------------------------------


@pytest.mark.slow  # waits out each fault (a 4 s delay among them)
@pytest.mark.parametrize(
    "fault, expected",
    [
        ({"delay_seconds": 4.0}, "did not answer within the deadline"),
        ({"status": 500}, "HTTP 500"),
        ({"status": 404}, "no data"),
        ({"garbage": True}, "not JSON"),
        ({"drop_connection": True}, "connection failed"),
    ],
)
def test_fhir_server_faults_never_hang_or_500(client, fhir, fault, expected):
    base, faults, token = fhir
    for name, value in fault.items():
        setattr(faults, name, value)
    started = time.monotonic()
    response = client.post(SIGN, json=with_fhir_server(hook_request(PID, None), base, token))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.5  # the 1 s deadline, plus slack for a loaded CI machine
    if expected == "no data":  # a 404 search is "nothing there": the rules run on an empty record
        assert response.status_code in (200, 412)
        return
    assert response.status_code == 412
    assert expected in json.dumps(response.get_json())


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def do_GET(self):
        _Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        self.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": []}')

    def log_message(self, *args):
        pass


def test_redirects_are_not_followed_and_the_token_never_reaches_another_host(client, fhir):
    base, faults, token = fhir
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        faults.redirect_to = f"http://127.0.0.1:{other.server_port}"
        response = client.post(SIGN, json=with_fhir_server(hook_request(PID, None), base, token))
    finally:
        other.shutdown()
    assert response.status_code == 412
    assert "redirect" in json.dumps(response.get_json())
    assert _Recorder.seen == []


# --- client errors ----------------------------------------


def test_unknown_service_is_404_json(client):
    response = client.post("/cds-services/nope", json={})
    assert response.status_code == 404 and "nope" in response.get_json()["error"]


def test_wrong_hook_for_the_service_is_400_naming_hook(client, patient):
    response = client.post(SELECT, json=hook_request(PID, patient, hook="order-sign"))
    assert response.status_code == 400 and response.get_json()["field"] == "hook"


@pytest.mark.parametrize(
    "data, content_type, status",
    [
        (b"{not json", "application/json", 400),
        (b"NaN", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"[]", "application/json", 400),
    ],
)
def test_malformed_bodies_get_clear_4xx(client, data, content_type, status):
    response = client.post(SIGN, data=data, content_type=content_type)
    assert response.status_code == status
    assert response.get_json()["error"]


def test_missing_context_field_is_named(client, patient):
    body = hook_request(PID, patient)
    del body["context"]["patientId"]
    response = client.post(SIGN, json=body)
    assert response.status_code == 400 and response.get_json()["field"] == "context.patientId"


def test_over_large_body_is_413(tmp_path):
    client = make_app(tmp_path, server={"max_body_bytes": 2000}).test_client()
    response = client.post(SIGN, data=b"{" + b" " * 5000 + b"}", content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"]


# --- feedback ----------------------------------------


def _feedback_rows(tmp_path):
    return Store(make_engine(f"sqlite:///{tmp_path / 'cds.sqlite3'}")).feedback_rows()


def test_feedback_is_stored_durably(client, tmp_path):
    items = [
        {
            "card": "c-1",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "s-1"}],
            "outcomeTimestamp": "2026-11-25T10:05:31Z",
        },
        {
            "card": "c-2",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-25T10:06:00Z",
            "overrideReason": {
                "reason": {
                    "system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes",
                    "code": "risk-benefit-ratio",
                },
                "userComment": "discussed",
            },
        },
    ]
    response = client.post(f"{SIGN}/feedback", json={"feedback": items})
    assert response.status_code == 200 and response.get_json() == {"stored": 2}
    rows = _feedback_rows(tmp_path)
    assert [(r["card_uuid"], r["outcome"], r["override_code"]) for r in rows] == [
        ("c-1", "accepted", None),
        ("c-2", "overridden", "risk-benefit-ratio"),
    ]
    assert rows[0]["accepted_suggestions"] == ["s-1"]


def test_a_bad_feedback_item_is_named_and_the_good_ones_are_kept(client, tmp_path):
    items = [
        {"card": "c-ok", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:05:31Z"},
        {"card": "c-bad", "outcome": "maybe", "outcomeTimestamp": "2026-11-25T10:05:31Z"},
    ]
    response = client.post(f"{SIGN}/feedback", json={"feedback": items})
    assert response.status_code == 400
    body = response.get_json()
    assert body["stored"] == 1 and body["problems"][0].startswith("feedback[1].outcome")
    assert [r["card_uuid"] for r in _feedback_rows(tmp_path)] == ["c-ok"]


def test_cards_shown_are_counted_per_finding(app, client, patient, tmp_path):
    cards = client.post(SIGN, json=hook_request(PID, patient)).get_json()["cards"]
    shown = Store(make_engine(f"sqlite:///{tmp_path / 'cds.sqlite3'}")).shown_rows()
    assert {r["finding_id"] for r in shown} == finding_ids({"cards": cards})
    assert {r["card_uuid"] for r in shown} == {c["uuid"] for c in cards}


# --- CORS, health ----------------------------------------


def test_cors_preflight_allows_authorization_on_every_route(client):
    for path in ("/cds-services", SIGN, f"{SIGN}/feedback"):
        response = client.options(
            path, headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST"}
        )
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_healthz(client):
    assert client.get("/healthz").get_json()["status"] == "ok"


def test_same_request_gives_the_same_card_and_suggestion_uuids(client, patient):
    first = client.post(SIGN, json=hook_request(PID, patient)).get_json()
    again = client.post(SIGN, json=hook_request(PID, patient)).get_json()
    assert first == again and all(card["uuid"] for card in first["cards"])


def test_an_order_whose_medication_cannot_be_read_is_named_not_ignored(client, patient):
    order = {
        "resourceType": "MedicationRequest",
        "id": "ref-only",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{PID}"},
        "authoredOn": "2026-01-05",
        "medicationReference": {"reference": "Medication/not-sent"},
    }
    response = client.post(SIGN, json=hook_request(PID, [*patient, order]))
    assert response.status_code == 200
    text = json.dumps(response.get_json())
    assert "MedicationRequest/ref-only: its drug is only a reference to Medication/not-sent" in text


def test_rxnorm_coded_by_oid_alias_still_triggers(client, patient):
    draft = tacrolimus_draft(PID)
    draft["medicationCodeableConcept"] = {
        "coding": [{"system": "urn:oid:2.16.840.1.113883.6.88", "code": "198377"}]
    }
    assert client.post(SIGN, json=hook_request(PID, patient, draft=draft)).get_json()["cards"]


def test_an_administrator_can_point_a_citation_at_another_url(tmp_path, patient):
    local = "https://intranet.example.org/guidelines/kdigo-2024.pdf"
    client = make_app(
        tmp_path,
        cards={
            "source_label": "Tacrolimus CDS",
            "source_url": "https://example.org/cds",
            "links": {"kdigo-2024": local},
        },
    ).test_client()
    links = [link for card in client.post(SIGN, json=hook_request(PID, patient)).get_json()["cards"]
             for link in card.get("links", [])]  # fmt: skip
    assert local in {link["url"] for link in links if "] KDIGO 2024" in link["label"]}
    absolute = [link for link in links if link["type"] == "absolute"]
    assert absolute and all(link["url"].startswith("https://") for link in absolute)
    assert {link["type"] for link in links} == {"absolute", "smart"}  # smart: the course app (its own tests)
