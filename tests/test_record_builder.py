"""FHIR JSON → PatientRecord: filtering by code, one-by-one validation, units, exposure periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds_service.record_builder import build_record, parse_when
from cds_service.terminology import Terminology

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TERMINOLOGY = Terminology.load()


def observation(oid: str, code: str, value, unit: str | None, days_ago: float, **extra) -> dict:
    resource = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": (NOW - timedelta(days=days_ago)).isoformat(),
        **extra,
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value, **({"unit": unit, "code": unit} if unit else {})}
    return resource


def order(oid: str, code: str, status: str, authored: str, end: str | None = None) -> dict:
    resource = {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "authoredOn": authored,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
    }
    if end:
        resource["dispenseRequest"] = {"validityPeriod": {"end": end}}
    return resource


def record(**resources):
    return build_record(terminology=TERMINOLOGY, now=NOW, patient=None, **resources)


def test_si_units_are_converted_and_the_recorded_value_is_kept_for_the_card():
    creatinine = (
        record(observations=[observation("cr", "14682-9", 97.24, "umol/L", 2)]).lab("creatinine").newest()
    )
    assert round(creatinine.value, 2) == 1.1 and creatinine.unit == "mg/dL"
    assert "recorded 97.24 umol/L" in creatinine.shown()


def test_a_value_in_an_unknown_unit_is_not_used_and_says_why():
    series = record(observations=[observation("k", "2823-3", 4.1, "furlongs", 1)]).lab("potassium")
    assert series.newest() is None
    assert "could not be used" in series.unusable[0].reason and "furlongs" in series.unusable[0].reason


def test_the_newest_usable_value_wins_over_a_newer_malformed_one():
    labs = [
        observation("bad", "2823-3", "abc", "mmol/L", 1),
        observation("good", "2823-3", 4.4, "mmol/L", 5),
    ]
    series = record(observations=labs).lab("potassium")
    assert series.newest().resource_id == "good"
    assert series.unusable[0].reference == "Observation/bad"


def test_observations_no_rule_reads_are_never_validated():
    # A malformed creatinine that nobody reads stays out of the report: validation is lazy.
    built = record(observations=[observation("bad", "2160-0", "abc", "mg/dL", 1)])
    assert built.unusable == []
    assert built.lab("creatinine").newest() is None
    assert [u.reference for u in built.unusable] == ["Observation/bad"]


def test_a_resource_is_judged_by_its_content_not_its_id():
    good = observation("same-id", "2823-3", 4.4, "mmol/L", 1)
    bad = observation("same-id", "2823-3", "abc", "mmol/L", 1)
    assert record(observations=[good]).lab("potassium").newest() is not None
    assert record(observations=[bad]).lab("potassium").newest() is None


def test_a_blood_pressure_panel_feeds_systolic_and_diastolic():
    panel = {
        **observation("bp", "85354-9", None, None, 1),
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": {"value": 150, "unit": "mm[Hg]", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": {"value": 95, "unit": "mm[Hg]", "code": "mm[Hg]"}},
        ],
    }  # fmt: skip
    built = record(observations=[panel])
    assert built.lab("systolic-bp").newest().value == 150
    assert built.lab("diastolic-bp").newest().value == 95


def test_codes_outside_every_value_set_are_left_out_before_parsing():
    hemoglobin = observation("hb", "718-7", 12.0, "g/dL", 1)
    assert record(observations=[hemoglobin]).labs == {}


def test_exposure_periods_follow_the_catalog():
    built = record(
        medications=[
            order("active", "68149", "active", "2026-01-01"),
            order("stopped", "68149", "stopped", "2025-01-01"),
            order("with-period", "68149", "completed", "2025-01-01", end="2025-07-01"),
            order("future-end", "68149", "active", "2026-06-01", end="2027-06-01"),
            order("error", "68149", "entered-in-error", "2025-01-01"),
        ],
        drafts=[{**order("draft", "42316", "draft", "2026-11-25"), "status": "draft"}],
        trigger_ids={"draft"},
    )
    exposure = {m.id: m.exposure for m in built.medications}
    assert exposure["active"].end == NOW  # still active: to now
    assert exposure["stopped"].start == exposure["stopped"].end  # stopped without a period: its last date
    assert exposure["with-period"].end == parse_when("2025-07-01")
    assert exposure["future-end"].end == NOW  # never beyond the request time
    assert exposure["error"] is None and exposure["draft"] is None
    trigger = next(m for m in built.medications if m.is_trigger)
    assert trigger.is_draft and trigger.active and "tacrolimus" in trigger.concepts
    assert [m.id for m in built.exposures("mycophenolate")] == [
        "stopped",
        "with-period",
        "active",
        "future-end",
    ]


def test_a_malformed_condition_is_skipped_and_reported_not_fatal():
    bad = {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": "http://snomed.info/sct",
           "code": "68815009"}]}, "subject": "Patient/p"}  # fmt: skip
    built = record(conditions=[bad])
    assert built.conditions == ()
    assert built.skipped[0].reference == "Condition/c1" and "not valid FHIR R4" in built.skipped[0].reason


def test_partial_and_zoned_dates_parse_to_utc():
    assert parse_when("2026") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_when("2026-05") == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_when("2026-05-02T10:00:00+02:00") == datetime(2026, 5, 2, 8, 0, tzinfo=UTC)
    assert parse_when("not a date") is None and parse_when(None) is None


def referencing(oid: str, medication: dict) -> dict:
    resource = order(oid, "0", "active", "2026-11-01")
    del resource["medicationCodeableConcept"]
    resource["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
    return resource


def test_a_medication_known_by_its_ingredient_joins_the_class_and_one_named_says_so():
    methotrexate = {
        "resourceType": "Medication",
        "id": "m1",
        "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "6851"}]}}],
    }
    named = {"resourceType": "Medication", "id": "m2", "code": {"text": "Trexall 5 mg tablet"}}
    meds = {m["id"]: m for m in (methotrexate, named)}
    built = build_record(
        terminology=TERMINOLOGY,
        now=NOW,
        patient=None,
        medications=[referencing("a", methotrexate), referencing("b", named)],
        resolve=lambda ref: meds.get(ref.split("/")[-1]),
    )
    by_id = {m.id: m for m in built.medications}
    assert "methotrexate" in by_id["a"].concepts and not by_id["a"].recognised_by_name
    assert "teratogens" in by_id["b"].concepts and by_id["b"].recognised_by_name == {
        "methotrexate",
        "teratogens",
    }
    assert by_id["b"].name == "Trexall 5 mg tablet (recognised by its name; check the order)"


def test_a_read_medication_outside_every_class_is_not_reported_as_unreadable():
    other = {
        "resourceType": "Medication",
        "id": "m3",
        "ingredient": [
            {"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "29046"}]}}
        ],  # lisinopril
    }
    built = build_record(
        terminology=TERMINOLOGY,
        now=NOW,
        patient=None,
        medications=[referencing("c", other), referencing("d", {"id": "gone"})],
        resolve=lambda ref: other if ref == "Medication/m3" else None,
    )
    assert built.medications == ()
    assert [s.reference for s in built.skipped] == ["MedicationRequest/d"]


def test_a_medication_known_only_by_an_ingredient_code_is_named_by_its_published_display():
    cyclosporine = {
        "resourceType": "Medication",
        "id": "m4",
        "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "3008"}]}}],
    }
    built = build_record(
        terminology=TERMINOLOGY,
        now=NOW,
        patient=None,
        medications=[referencing("e", cyclosporine)],
        resolve=lambda ref: cyclosporine,
    )
    assert [m.name for m in built.medications] == ["Cyclosporine"]
