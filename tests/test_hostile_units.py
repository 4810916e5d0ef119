"""Units behind issue 12: typed raw-JSON reads, lab and key caps, the deadline watchdog, time claims."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.auth import LATEST_TIME, _time
from cds_service.fhir_client import WATCHDOG, FhirClient, Incomplete, exchange_deadline, shared_session
from cds_service.fhir_json import MalformedBundle, bundle_entries, bundle_links, obj, objs, path, text
from cds_service.gather import ServerExecutors, gather
from cds_service.record_builder import MAX_PER_CLASS, MAX_RESULTS_PER_LAB, build_record
from cds_service.terminology import default_terminology
from tests.support import LOINC, small_patient

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_typed_reads_of_raw_json_never_raise():
    assert obj([1]) == {} and obj({"a": 1}) == {"a": 1}
    assert objs({"a": 1}) == [] and objs([{"a": 1}, 2, "x", None]) == [{"a": 1}]
    assert text({}) is None and text("final") == "final"
    assert path({"a": {"b": 2}}, "a", "b") == 2
    assert path({"a": 5}, "a", "b") is None and path("x", "a") is None


@pytest.mark.parametrize(
    "bundle, problem",
    [
        ({"entry": 1.5}, "Bundle.entry is not an array"),
        ({"entry": {"resource": {}}}, "Bundle.entry is not an array"),
        ({"entry": [5]}, "Bundle.entry[0] is not an object"),
        ({"entry": [{"resource": {"resourceType": "Patient"}}, {"resource": 5}]}, "Bundle.entry[1].resource"),
        ({"link": "next"}, "Bundle.link is not an array"),
    ],
)
def test_a_malformed_bundle_is_malformed_as_a_whole(bundle, problem):
    with pytest.raises(MalformedBundle, match=problem.replace("[", r"\[").replace("]", r"\]")):
        bundle_entries(bundle)
        bundle_links(bundle)


def test_entries_without_a_resource_are_allowed():
    resource = {"resourceType": "Condition"}
    assert bundle_entries({"entry": [{"fullUrl": "urn:x"}, {"resource": resource}]}) == [resource]
    assert bundle_entries({}) == [] and bundle_links({}) == []


def creatinine(i: int, days_ago: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"c{i}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2160-0"}]},
        "effectiveDateTime": (NOW - timedelta(days=days_ago)).isoformat(),
        "valueQuantity": {"value": 1.0, "unit": "mg/dL"},
    }


def build(observations: list[dict], lookback_days: int = 365):
    return build_record(
        terminology=default_terminology(),
        now=NOW,
        patient=None,
        observations=observations,
        lookback_days=lookback_days,
    )


def test_only_the_newest_results_of_a_lab_are_kept_and_a_cut_inside_the_windows_is_named():
    observations = [creatinine(i, days_ago=i) for i in range(150)]
    observations.reverse()  # oldest first: the choice must not depend on the order sent
    record = build(observations)
    series = record.lab("creatinine")
    assert len(series) == MAX_RESULTS_PER_LAB
    assert series.newest().resource_id == "c0"
    assert [v.resource_id for v in series.values()][-1] == f"c{MAX_RESULTS_PER_LAB - 1}"
    (cut,) = record.skipped
    assert cut.reference == "Observation (creatinine)"
    assert "only the newest 100 of 150 results were read; the 50 older ones" in cut.reason


def test_a_cut_that_drops_only_results_older_than_every_window_is_not_named():
    observations = [creatinine(i, days_ago=i if i < 100 else 400 + i) for i in range(150)]
    record = build(observations, lookback_days=280)
    assert len(record.lab("creatinine")) == MAX_RESULTS_PER_LAB
    assert record.skipped == ()


def test_a_prefetch_key_over_the_resource_cap_is_cut_and_named_incomplete():
    prefetch = {
        "observations": {
            "resourceType": "Bundle",
            "entry": [{"resource": creatinine(i, i)} for i in range(30)],
        }
    }
    gathered = gather(
        prefetch,
        {"observations": "Observation?patient={{context.patientId}}"},
        {},
        None,
        ServerExecutors(),
        max_resources=20,
    )
    assert len(gathered.resources["observations"]) == 20
    assert "more than 20 resources" in gathered.incomplete["observations"]


def test_pages_past_the_cap_are_kept_as_incomplete():
    client = FhirClient("http://127.0.0.1:9/", None, shared_session(), time.monotonic() + 5, page_cap=1)
    first = {
        "resourceType": "Bundle",
        "entry": [{"resource": creatinine(1, 1)}],
        "link": [{"relation": "next", "url": "x"}],
    }
    with pytest.raises(Incomplete) as caught:
        client.rest_of(first)
    assert [r["id"] for r in caught.value.resources] == ["c1"]
    assert "more than 1 pages" in str(caught.value)


def test_the_watchdog_cuts_a_blocked_read_at_its_deadline():
    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(30)  # only a safety net: the watchdog must end the read long before
        started = time.monotonic()
        with exchange_deadline(started + 0.3):
            WATCHDOG.watch(ours, started + 0.3)
            theirs.sendall(b"x")
            assert ours.recv(1) == b"x"
            assert ours.recv(1) == b""  # shut down by the watchdog: end of stream, not a 30 s wait
        assert time.monotonic() - started < 30
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    "value, valid",
    [
        (0, True),
        (1_764_000_000, True),
        (1_764_000_000.5, True),
        (LATEST_TIME, True),
        (LATEST_TIME + 1, False),
        (-1, False),
        (2**70, False),
        (float("nan"), False),
        (float("inf"), False),
        (True, False),
        ("1764000000", False),
    ],
)
def test_time_claims_must_be_finite_numbers_of_seconds(value, valid):
    assert _time(value) is valid


def copies(resource: dict, count: int, date_field: str) -> list[dict]:
    made = []
    for i in range(count):
        copy_ = {**resource, "id": f"{resource['id']}-{i}"}
        copy_[date_field] = (NOW - timedelta(days=i)).date().isoformat()
        made.append(copy_)
    return made


def test_a_repeated_resource_is_validated_at_most_a_few_times_per_concept_set():
    patient = small_patient("cap-p1", observations=0)
    condition, order = patient[1], patient[2]
    record = build_record(
        terminology=default_terminology(),
        now=NOW,
        patient=None,
        conditions=copies(condition, 30, "recordedDate"),
        medications=copies(order, 150, "authoredOn"),
    )
    assert len(record.conditions) == MAX_PER_CLASS["Condition"]
    assert {c.id for c in record.conditions} == {f"{condition['id']}-{i}" for i in range(20)}  # the newest
    assert len(record.medications) == MAX_PER_CLASS["MedicationRequest"]
    cuts = {u.reference: u.reason for u in record.skipped}
    assert (
        "only the newest 20 of 30 with the same codes were read" in cuts["Condition (lupus, lupus-nephritis)"]
    )
    assert any(
        ref.startswith("MedicationRequest (") and "newest 100 of 150" in why for ref, why in cuts.items()
    )


def test_a_resource_too_large_to_validate_is_left_out_and_named():
    patient = small_patient("big-p1", observations=0)[0]
    patient["name"] = [{"family": f"F{i}"} for i in range(20_000)]  # not read by the rules: not validated
    lupus = {
        "resourceType": "Condition",
        "id": "big-c1",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55464009"}]
                 + [{"system": "urn:example", "code": f"x{i}"} for i in range(20_000)]},  # read: validated
    }  # fmt: skip
    record = build_record(terminology=default_terminology(), now=NOW, patient=patient, conditions=[lupus])
    assert record.patient is not None and record.patient.birth_date is not None
    assert not record.conditions
    (left_out,) = record.skipped
    assert left_out.reference == "Condition/big-c1" and "too large to read" in left_out.reason
