"""The sandbox FHIR server and request builder, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from cds_service.sandbox import (
    Faults,
    FhirStore,
    build_request,
    build_request_from_bundle,
    serve_in_thread,
    substitute_tokens,
)
from cds_service.sandbox.requests import TemplateError
from cds_service.sandbox.store import ConflictingResource

LOINC, RXNORM, SNOMED = (
    "http://loinc.org",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://snomed.info/sct",
)
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ANCHOR = date(2026, 11, 1)  # fixture dates are written as if today were this day


def concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def observation(oid: str, patient: str, loinc: str, value: float, when: str | None, **extra) -> dict:
    obs = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": concept(LOINC, loinc),
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value},
        **extra,
    }
    if when:
        obs["effectiveDateTime"] = when
    return obs


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def lupus_bundle() -> dict:
    """Patient p1: two creatinines, a potassium, an issued-only and an undated observation, stored and draft
    orders (the tacrolimus ones through a Medication reference)."""
    return bundle(
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1994-03-02"},
        {"resourceType": "Practitioner", "id": "dr1"},
        {"resourceType": "Encounter", "id": "enc1", "status": "in-progress",
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-10-31T09:00:00Z"}},
        {"resourceType": "Condition", "id": "sle", "code": concept(SNOMED, "55464009"),
         "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
         "subject": {"reference": "Patient/p1"}, "recordedDate": "2024-01-15"},
        {"resourceType": "Condition", "id": "old", "code": concept(SNOMED, "55464009"),
         "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved"),
         "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2020-06-01"},
        observation("cr-new", "p1", "2160-0", 1.1, "2026-10-20T08:00:00Z"),
        observation("cr-old", "p1", "2160-0", 0.8, "2026-07-01"),
        observation("k-1", "p1", "2823-3", 4.2, "2026-10-15T08:00:00+02:00"),
        observation("cr-issued", "p1", "14682-9", 90, None, issued="2026-09-01T10:00:00Z"),
        observation("cr-undated", "p1", "2160-0", 1.0, None),
        {"resourceType": "Medication", "id": "tac-med", "code": concept(RXNORM, "42316")},
        {"resourceType": "MedicationRequest", "id": "mmf", "status": "active", "intent": "order",
         "medicationCodeableConcept": concept(RXNORM, "68149"), "subject": {"reference": "Patient/p1"},
         "authoredOn": "2025-05-01"},
        {"resourceType": "MedicationRequest", "id": "tac-old", "status": "stopped", "intent": "order",
         "medicationReference": {"reference": "Medication/tac-med"}, "subject": {"reference": "Patient/p1"},
         "authoredOn": "2023-02-01"},
        {"resourceType": "MedicationRequest", "id": "tac-draft", "status": "draft", "intent": "order",
         "medicationReference": {"reference": "Medication/tac-med"}, "subject": {"reference": "Patient/p1"},
         "requester": {"reference": "Practitioner/dr1"}, "encounter": {"reference": "Encounter/enc1"}},
        {"resourceType": "MedicationRequest", "id": "pred-draft", "status": "draft", "intent": "order",
         "medicationCodeableConcept": {"text": "prednisone"}, "subject": {"reference": "Patient/p1"}},
        {"resourceType": "AllergyIntolerance", "id": "al1", "patient": {"reference": "Patient/p1"},
         "clinicalStatus": concept(ALLERGY_CLINICAL, "active"),
         "code": concept(RXNORM, "7980")},
    )  # fmt: skip


def other_bundle() -> dict:
    """Patient p2: a creatinine that must never show up in p1's results; no Encounter, no Practitioner."""
    return bundle(
        {"resourceType": "Patient", "id": "p2", "gender": "male"},
        observation("p2-cr", "p2", "2160-0", 2.0, "2026-10-25"),
        {"resourceType": "MedicationRequest", "id": "p2-tac", "status": "draft", "intent": "order",
         "medicationCodeableConcept": concept(RXNORM, "42316"), "subject": {"reference": "Patient/p2"}},
    )  # fmt: skip


MANIFEST = {
    "lupus": {
        "description": "test patient",
        "drafts": ["MedicationRequest/tac-draft", "MedicationRequest/pred-draft"],
        "selections": ["MedicationRequest/tac-draft"],
        "expected": [],
    },
    "other": {"description": "second patient", "drafts": ["MedicationRequest/p2-tac"], "expected": []},
}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fixtures")
    (directory / "manifest.json").write_text(json.dumps(MANIFEST))
    (directory / "lupus.json").write_text(json.dumps(lupus_bundle()))
    (directory / "other.json").write_text(json.dumps(other_bundle()))
    return directory


@pytest.fixture(scope="module")
def store(fixture_dir) -> FhirStore:
    return FhirStore.from_fixtures(today=ANCHOR, directory=fixture_dir)


@pytest.fixture(scope="module")
def base(store) -> str:
    with serve_in_thread(store, base_path="/fhir") as url:
        yield url


def get(url: str, **params) -> requests.Response:
    return requests.get(url, params=params, timeout=10)


def ids(searchset: dict) -> list[str]:
    return [e["resource"]["id"] for e in searchset.get("entry", [])]


def search_ids(base: str, resource_type: str, **params) -> list[str]:
    response = get(f"{base}/{resource_type}", **params)
    assert response.status_code == 200, response.text
    return ids(response.json())


def assert_outcome(response: requests.Response, status: int, mentioning: str = "") -> None:
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert mentioning in json.dumps(body)


# --- read, metadata --------------------------------------------------------------------------------------


def test_read_returns_the_stored_resource_as_fhir_json(base):
    response = get(f"{base}/Patient/p1")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.json() == {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1994-03-02",
    }


def test_missing_resource_and_unknown_type_are_404_operation_outcomes(base):
    assert_outcome(get(f"{base}/Patient/nobody"), 404, "Patient/nobody")
    assert_outcome(get(f"{base}/Spaceship", patient="p1"), 404, "Spaceship")
    assert_outcome(get(f"{base}/Patient/p1/_history"), 404)


def test_metadata_lists_the_supported_searches(base):
    statement = get(f"{base}/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    observation_params = {p["name"] for p in resources["Observation"]["searchParam"]}
    assert {"patient", "subject", "code", "status", "date"} <= observation_params
    assert "clinical-status" in {p["name"] for p in resources["Condition"]["searchParam"]}
    assert {"_count", "_sort", "_id"} <= {p["name"] for p in statement["rest"][0]["searchParam"]}


# --- search parameters -----------------------------------------------------------------------------------


def test_searchset_bundle_shape(base):
    searchset = get(f"{base}/Condition", patient="p1").json()
    assert searchset["resourceType"] == "Bundle"
    assert searchset["type"] == "searchset"
    assert searchset["total"] == 2
    assert [link["relation"] for link in searchset["link"]] == ["self"]
    for entry in searchset["entry"]:
        assert entry["fullUrl"] == f"{base}/Condition/{entry['resource']['id']}"
        assert entry["search"] == {"mode": "match"}


def test_patient_and_subject_accept_bare_and_typed_ids(base):
    expected = {"cr-new", "cr-old", "k-1", "cr-issued", "cr-undated"}
    assert set(search_ids(base, "Observation", patient="p1")) == expected
    assert set(search_ids(base, "Observation", patient="Patient/p1")) == expected
    assert set(search_ids(base, "Observation", subject="Patient/p1")) == expected
    assert search_ids(base, "Observation", patient="p2") == ["p2-cr"]
    assert search_ids(base, "Observation", subject="Group/p1") == []
    assert search_ids(base, "AllergyIntolerance", patient="p1") == ["al1"]


def test_draft_orders_are_not_stored(base):
    assert set(search_ids(base, "MedicationRequest", patient="p1")) == {"mmf", "tac-old"}
    assert_outcome(get(f"{base}/MedicationRequest/tac-draft"), 404)
    assert search_ids(base, "MedicationRequest", patient="p2") == []


def test_code_matches_any_listed_token(base):
    creatinine = f"{LOINC}|2160-0"
    assert set(search_ids(base, "Observation", patient="p1", code=creatinine)) == {
        "cr-new",
        "cr-old",
        "cr-undated",
    }
    both_units = f"{LOINC}|2160-0,{LOINC}|14682-9"
    assert set(search_ids(base, "Observation", patient="p1", code=both_units)) == {
        "cr-new", "cr-old", "cr-undated", "cr-issued",
    }  # fmt: skip
    assert set(search_ids(base, "Observation", patient="p1", code="2823-3,14682-9")) == {"k-1", "cr-issued"}
    assert search_ids(base, "Observation", patient="p1", code=f"{SNOMED}|2160-0") == []
    assert set(search_ids(base, "Observation", code=creatinine)) == {
        "cr-new",
        "cr-old",
        "cr-undated",
        "p2-cr",
    }


def test_repeated_code_parameters_must_all_match():
    both = bundle(
        {"resourceType": "Patient", "id": "px"},
        observation("two-codes", "px", "2160-0", 1.0, "2026-10-01"),
    )
    both["entry"][1]["resource"]["code"]["coding"].append({"system": LOINC, "code": "14682-9"})
    two = FhirStore([both])
    found = two.search("Observation", {"code": ["2160-0", f"{LOINC}|14682-9"]}, "http://x")
    assert ids(found) == ["two-codes"]
    assert ids(two.search("Observation", {"code": ["2160-0", "2823-3"]}, "http://x")) == []


def test_medication_request_code_follows_the_medication_reference(base):
    assert search_ids(base, "MedicationRequest", patient="p1", code=f"{RXNORM}|42316") == ["tac-old"]
    assert search_ids(base, "MedicationRequest", patient="p1", code="68149") == ["mmf"]


def test_status_and_clinical_status(base):
    assert search_ids(base, "Condition", patient="p1", **{"clinical-status": "active"}) == ["sle"]
    assert search_ids(base, "MedicationRequest", patient="p1", status="active") == ["mmf"]
    assert search_ids(base, "MedicationRequest", patient="p1", status="active,stopped") == ["mmf", "tac-old"]
    assert search_ids(base, "Observation", patient="p1", status="preliminary") == []


def test_id_search(base):
    assert search_ids(base, "Observation", _id="k-1,p2-cr") == ["k-1", "p2-cr"]
    assert search_ids(base, "Patient", _id="p2") == ["p2"]


@pytest.mark.parametrize(
    ("date_filter", "expected"),
    [
        ("ge2026-10-01", {"cr-new", "k-1"}),
        ("gt2026-10-20", set()),  # cr-new's instant lies inside that day, not after it
        ("ge2026-10-20T08:00:00Z", {"cr-new"}),
        ("lt2026-09-01", {"cr-old"}),
        ("le2026-09-01", {"cr-old", "cr-issued"}),  # issued is the date when there is no effective[x]
        ("eq2026-10", {"cr-new", "k-1"}),
        ("2026-10-15", {"k-1"}),  # 08:00+02:00 is 06:00 UTC on the same day
    ],
)
def test_observation_date_prefixes(base, date_filter, expected):
    assert set(search_ids(base, "Observation", patient="p1", date=date_filter)) == expected


def test_repeated_date_parameters_are_combined(base):
    window = get(f"{base}/Observation", patient="p1", date=["ge2026-07-01", "lt2026-10-01"]).json()
    assert set(ids(window)) == {"cr-old", "cr-issued"}


def test_condition_and_medication_request_dates(base):
    # Condition: recordedDate, else onset[x]; MedicationRequest: authoredOn.
    assert search_ids(base, "Condition", patient="p1", date="ge2024-01-01") == ["sle"]
    assert search_ids(base, "Condition", patient="p1", date="lt2021") == ["old"]
    assert search_ids(base, "MedicationRequest", patient="p1", date="ge2025-01-01") == ["mmf"]


def test_sort_by_date_newest_first_and_oldest_first(base):
    newest_first = search_ids(base, "Observation", patient="p1", _sort="-date")
    assert newest_first == ["cr-new", "k-1", "cr-issued", "cr-old", "cr-undated"]
    oldest_first = search_ids(base, "Observation", patient="p1", _sort="date")
    assert oldest_first == ["cr-old", "cr-issued", "k-1", "cr-new", "cr-undated"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"patient": "p1", "foo": "bar"}, "foo"),
        ({"patient": "p1", "code:in": "http://example.org/vs"}, "code:in"),
        ({"patient": "p1", "_include": "Observation:patient"}, "_include"),
        ({"patient": "p1", "date": "ne2026-10-01"}, "date"),
        ({"patient": "p1", "date": "yesterday"}, "date"),
        ({"patient": "p1", "_sort": "code"}, "_sort"),
        ({"patient": "p1", "_count": "-1"}, "_count"),
        ({"patient": ""}, "patient"),
        ({"patient": "p1", "clinical-status": "active"}, "clinical-status"),  # not an Observation parameter
    ],
)
def test_unsupported_or_malformed_parameters_are_400(base, params, named):
    response = get(f"{base}/Observation", **params)
    assert_outcome(response, 400)
    assert response.json()["issue"][0]["expression"] == [named]


# --- paging ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_base() -> str:
    """One patient with 10,000 observations: 2,500 creatinines among 7,500 potassiums."""
    resources = [{"resourceType": "Patient", "id": "big"}]
    for i in range(10_000):
        loinc = "2160-0" if i % 4 == 0 else "2823-3"
        day = date.fromordinal(ANCHOR.toordinal() - i // 4)
        resources.append(observation(f"o{i}", "big", loinc, 1.0, f"{day.isoformat()}T{i % 4:02d}:00:00Z"))
    with serve_in_thread(FhirStore([bundle(*resources)])) as url:
        yield url


def follow_pages(first_url: str, params: dict | None = None) -> tuple[list[dict], list[int]]:
    entries, totals, url = [], [], first_url
    response = requests.get(url, params=params, timeout=30)
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        totals.append(page["total"])
        entries.extend(page.get("entry", []))
        next_links = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not next_links:
            return entries, totals
        url = next_links[0]
        response = requests.get(url, timeout=30)


def test_paging_through_next_links_returns_every_match_once(big_base):
    entries, totals = follow_pages(
        f"{big_base}/Observation",
        {"patient": "big", "code": f"{LOINC}|2160-0", "_sort": "-date", "_count": "1000"},
    )
    assert totals == [2500, 2500, 2500]
    resource_ids = [e["resource"]["id"] for e in entries]
    assert len(resource_ids) == len(set(resource_ids)) == 2500
    assert {e["resource"]["code"]["coding"][0]["code"] for e in entries} == {"2160-0"}
    dates = [e["resource"]["effectiveDateTime"] for e in entries]
    assert dates == sorted(dates, reverse=True)  # the sort holds across pages


def test_default_page_size_is_50_and_next_links_are_absolute(big_base):
    first = get(f"{big_base}/Observation", patient="big", code="2823-3").json()
    assert first["total"] == 7500
    assert len(first["entry"]) == 50
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert next_url.startswith(f"{big_base}/Observation?")
    query = parse_qs(urlsplit(next_url).query)
    assert query["patient"] == ["big"] and query["code"] == ["2823-3"] and query["_offset"] == ["50"]
    second = requests.get(next_url, timeout=10).json()
    assert not {e["resource"]["id"] for e in first["entry"]} & {e["resource"]["id"] for e in second["entry"]}


def test_count_is_capped_at_1000_and_zero_gives_only_the_total(big_base):
    capped = get(f"{big_base}/Observation", patient="big", _count="5000").json()
    assert len(capped["entry"]) == 1000
    assert capped["total"] == 10_000
    only_total = get(f"{big_base}/Observation", patient="big", _count="0").json()
    assert only_total["total"] == 10_000
    assert "entry" not in only_total
    assert [link["relation"] for link in only_total["link"]] == ["self"]


def test_paging_with_default_base_path(store):
    with serve_in_thread(store) as url:
        entries, totals = follow_pages(f"{url}/Observation", {"patient": "p1", "_count": "2"})
    assert totals == [5, 5, 5]
    assert len({e["resource"]["id"] for e in entries}) == 5


# --- token and faults ------------------------------------------------------------------------------------


def test_bearer_token_is_required_when_configured(store):
    with serve_in_thread(store, require_token="s3cret") as url:
        assert_outcome(get(f"{url}/Patient/p1"), 401)
        wrong = requests.get(f"{url}/Patient/p1", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert_outcome(wrong, 401)
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
        right = requests.get(f"{url}/Patient/p1", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert right.status_code == 200
        assert right.json()["id"] == "p1"
        assert get(f"{url}/metadata").status_code == 200  # discovery of the server stays public


@pytest.fixture
def faulty(store):
    faults = Faults()
    with serve_in_thread(store, faults=faults) as url:
        yield url, faults


@pytest.mark.parametrize("status", [500, 503, 404])
def test_fault_status(faulty, status):
    url, faults = faulty
    faults.status = status
    assert_outcome(get(f"{url}/Patient/p1"), status)
    assert_outcome(get(f"{url}/Observation", patient="p1"), status)


def test_fault_garbage_is_200_with_a_body_that_is_not_json(faulty):
    url, faults = faulty
    faults.garbage = True
    response = get(f"{url}/Patient/p1")
    assert response.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_fault_redirect_points_to_the_same_query_elsewhere(faulty, store):
    url, faults = faulty
    with serve_in_thread(store, base_path="/elsewhere") as other:
        faults.redirect_to = other
        response = requests.get(f"{url}/Observation?patient=p1&_count=2", allow_redirects=False, timeout=10)
        assert response.status_code == 302
        assert response.headers["Location"] == f"{other}/Observation?patient=p1&_count=2"
        followed = requests.get(f"{url}/Observation?patient=p1&_count=2", timeout=10)
        assert followed.url.startswith(other)
        assert followed.json()["total"] == 5


def test_fault_delay_outlasts_a_short_client_timeout(faulty):
    url, faults = faulty
    faults.delay_seconds = 3
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{url}/Patient/p1", timeout=0.3)


def test_fault_drop_connection_gives_no_response(faulty):
    url, faults = faulty
    faults.drop_connection = True
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/Patient/p1", timeout=10)
    faults.clear()
    assert get(f"{url}/Patient/p1").status_code == 200


# --- fixtures --------------------------------------------------------------------------------------------


def test_from_fixtures_moves_dates_to_today(fixture_dir):
    later = FhirStore.from_fixtures(["lupus"], today=date(2026, 11, 11), directory=fixture_dir)
    assert later.read("Observation", "cr-new")["effectiveDateTime"] == "2026-10-30T08:00:00Z"
    assert later.read("Patient", "p2") is None  # only the named fixture
    assert later.read("MedicationRequest", "tac-draft") is None


def test_extra_bundles_are_added_and_conflicting_ids_rejected(fixture_dir):
    extra = bundle({"resourceType": "Patient", "id": "gen-1"})
    with_extra = FhirStore.from_fixtures(
        ["other"], today=ANCHOR, directory=fixture_dir, extra_bundles=[extra]
    )
    assert with_extra.read("Patient", "gen-1") == {"resourceType": "Patient", "id": "gen-1"}
    clash = bundle({"resourceType": "Patient", "id": "p2", "gender": "female"})
    with pytest.raises(ConflictingResource):
        FhirStore.from_fixtures(["other"], today=ANCHOR, directory=fixture_dir, extra_bundles=[clash])


# --- CDS Hooks requests ----------------------------------------------------------------------------------

TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "creatinine": f"Observation?patient={{{{context.patientId}}}}&code={LOINC}|2160-0,{LOINC}|14682-9"
    "&_sort=-date&_count=200",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "encounter": "Encounter/{{context.encounterId}}",
    "user": "{{context.userId}}",
}


def build(fixture_dir, fixture="lupus", **kwargs) -> dict:
    return build_request(fixture, today=ANCHOR, directory=fixture_dir, **kwargs)


def test_order_select_request_from_prefetch(fixture_dir):
    request = build(fixture_dir, hook="order-select", prefetch_templates=TEMPLATES)
    assert request["hook"] == "order-select"
    assert uuid.UUID(request["hookInstance"]).version == 4
    assert "fhirServer" not in request and "fhirAuthorization" not in request
    context = request["context"]
    assert context["userId"] == "Practitioner/dr1"
    assert context["patientId"] == "p1"
    assert context["encounterId"] == "enc1"
    assert context["selections"] == ["MedicationRequest/tac-draft"]
    draft_orders = context["draftOrders"]
    assert draft_orders["resourceType"] == "Bundle" and draft_orders["type"] == "collection"
    assert [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in draft_orders["entry"]] == [
        "MedicationRequest/tac-draft", "MedicationRequest/pred-draft", "Medication/tac-med",
    ]  # fmt: skip

    prefetch = request["prefetch"]
    assert prefetch["patient"]["id"] == "p1"
    assert ids(prefetch["creatinine"]) == ["cr-new", "cr-issued", "cr-old", "cr-undated"]
    assert set(ids(prefetch["medications"])) == {"mmf", "tac-old"}  # drafts are not stored data
    assert ids(prefetch["allergies"]) == ["al1"]
    assert prefetch["encounter"]["id"] == "enc1"
    assert prefetch["user"] == {"resourceType": "Practitioner", "id": "dr1"}


def test_order_sign_request_has_no_selections(fixture_dir):
    request = build(fixture_dir, hook="order-sign", prefetch_templates=TEMPLATES)
    assert request["hook"] == "order-sign"
    assert "selections" not in request["context"]
    assert len(request["context"]["draftOrders"]["entry"]) == 3


def test_prefetch_keys_that_cannot_be_filled_are_left_out_and_reads_of_nothing_are_null(fixture_dir):
    request = build(fixture_dir, "other", prefetch_templates=TEMPLATES)
    assert "encounterId" not in request["context"]
    assert "encounter" not in request["prefetch"]  # no encounterId: the client cannot run it
    assert request["context"]["userId"] == "Practitioner/sandbox-clinician"
    assert request["prefetch"]["user"] is None  # the query ran and found nothing
    assert request["context"]["selections"] == ["MedicationRequest/p2-tac"]  # default: the drafts
    assert request["prefetch"]["conditions"]["total"] == 0


def test_a_template_the_client_cannot_run_is_answered_with_an_operation_outcome(fixture_dir):
    request = build(
        fixture_dir, prefetch_templates={"bad": "Observation?patient={{context.patientId}}&foo=1"}
    )
    assert request["prefetch"]["bad"]["resourceType"] == "OperationOutcome"


def test_tokens_outside_cds_hooks_2_are_rejected():
    context = {"userId": "Practitioner/dr1", "patientId": "p1"}
    assert substitute_tokens("Practitioner/{{userPractitionerId}}", context) == "Practitioner/dr1"
    assert substitute_tokens("PractitionerRole/{{userPractitionerRoleId}}", context) is None
    with pytest.raises(TemplateError):
        substitute_tokens("MedicationRequest?_id={{context.draftOrders}}", context)
    with pytest.raises(TemplateError):
        substitute_tokens("Observation?patient={{context.patientId}}", {"patientId": "p1&_id=x"})


def test_prefetch_equals_what_the_server_answers(fixture_dir, store, base):
    request = build(fixture_dir, via="prefetch", fhir_base=base, prefetch_templates=TEMPLATES)
    for key in ("creatinine", "conditions", "medications"):
        query = substitute_tokens(TEMPLATES[key], request["context"])
        served = requests.get(f"{base}/{query}", timeout=10).json()
        assert served["entry"] == request["prefetch"][key]["entry"]
        assert served["link"] == request["prefetch"][key]["link"]


def test_fhir_request_carries_a_token_that_opens_the_server(fixture_dir, store):
    with serve_in_thread(store, require_token="tok-123") as url:
        request = build(fixture_dir, hook="order-sign", via="fhir", fhir_base=url, token="tok-123")
        assert "prefetch" not in request
        assert request["fhirServer"] == url
        assert request["fhirAuthorization"] == {
            "access_token": "tok-123",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "tacrolimus-cds",
            "patient": "p1",
        }
        auth = {"Authorization": f"Bearer {request['fhirAuthorization']['access_token']}"}
        patient_url = f"{request['fhirServer']}/Patient/{request['context']['patientId']}"
        assert requests.get(patient_url, headers=auth, timeout=10).json()["id"] == "p1"


def test_both_paths_at_once_and_generated_tokens(fixture_dir, base):
    request = build(fixture_dir, via="both", fhir_base=base, prefetch_templates=TEMPLATES)
    assert request["fhirServer"] == base
    assert len(request["fhirAuthorization"]["access_token"]) >= 32
    assert request["prefetch"]["creatinine"]["link"][0]["url"].startswith(base)
    with pytest.raises(ValueError, match="fhir_base"):
        build(fixture_dir, via="fhir")


def test_request_from_a_generated_bundle():
    generated = other_bundle()
    request = build_request_from_bundle(
        generated, ["MedicationRequest/p2-tac"], hook="order-select", prefetch_templates=TEMPLATES
    )
    assert request["context"]["patientId"] == "p2"
    assert ids(request["prefetch"]["creatinine"]) == ["p2-cr"]
    with pytest.raises(ValueError, match="selections"):
        build_request_from_bundle(generated, ["MedicationRequest/p2-tac"], selections=["MedicationRequest/x"])
