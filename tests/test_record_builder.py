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


def test_a_stopped_order_without_validity_period_is_exposed_for_its_supply_and_repeats():
    stopped = order("mr", "198377", "stopped", "2026-01-01")
    stopped["dispenseRequest"] = {
        "numberOfRepeatsAllowed": 2,
        "expectedSupplyDuration": {
            "value": 30,
            "unit": "days",
            "system": "http://unitsofmeasure.org",
            "code": "d",
        },
    }
    weeks = order("mr2", "198377", "completed", "2026-01-01")
    weeks["dispenseRequest"] = {"expectedSupplyDuration": {"value": 4, "unit": "wk"}}
    bare = order("mr3", "198377", "stopped", "2026-01-01")
    meds = {m.id: m for m in record(medications=[stopped, weeks, bare]).medications}
    assert meds["mr"].exposure.days == 90  # 30 days × (1 + 2 repeats)
    assert meds["mr2"].exposure.days == 28
    assert meds["mr3"].exposure.days == 0  # nothing else known: its last recorded date


def condition(cid: str, code: str, system: str = "http://hl7.org/fhir/sid/icd-10-cm", **extra) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


def test_conditions_keep_what_ends_a_pregnancy():
    clinical = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "resolved"}]}  # fmt: skip
    built = record(
        conditions=[
            condition("preg", "Z33.1", clinicalStatus=clinical, abatementDateTime="2026-10-01"),
            condition(
                "preg2",
                "77386006",
                system="http://snomed.info/sct",
                clinicalStatus=clinical,
                meta={"lastUpdated": "2026-10-05T10:00:00Z"},
            ),
            condition("birth", "Z37.0", onsetDateTime="2026-09-30"),
        ]
    )
    by_id = {c.id: c for c in built.conditions}
    assert by_id["preg"].resolved and by_id["preg"].abated.date().isoformat() == "2026-10-01"
    assert by_id["preg2"].last_updated.date().isoformat() == "2026-10-05"
    assert "pregnancy-outcome" in by_id["birth"].concepts and by_id["birth"].dated.day == 30


def breastfeeding(oid: str, **value) -> dict:
    resource = observation(oid, "63895-7", None, None, 3)
    resource.update(value)
    return resource


def test_breastfeeding_answers_are_read_as_clinicians_code_them():
    def coded(system: str, code: str, display: str | None = None) -> dict:
        return {"valueCodeableConcept": {"coding": [{"system": system, "code": code, "display": display}]}}

    cases = {
        "la33": (coded(LOINC, "LA33-6", "Yes"), "positive"),
        "sct": (coded("http://snomed.info/sct", "373066001", "Yes"), "positive"),
        "la32": (coded(LOINC, "LA32-8", "No"), "negative"),
        "bool": ({"valueBoolean": True}, "positive"),
        "boolno": ({"valueBoolean": False}, "negative"),
        "text": ({"valueString": "Exclusively breastfeeding"}, "positive"),
        "textno": ({"valueString": "Not breastfeeding"}, "negative"),
        "display": (coded("urn:oid:1.2.3", "BF1", "Breastfeeding"), "positive"),
    }
    for oid, (value, expected) in cases.items():
        series = record(observations=[breastfeeding(oid, **value)]).lab("breastfeeding-status")
        assert series.newest().answer == expected, oid


def test_a_pregnancy_status_answered_with_a_delivery_or_postpartum_code_reads_as_ended():
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    for code in ("Z37.0", "Z39.1", "O80"):
        answered = observation("ps", "82810-3", None, None, 3)
        answered["valueCodeableConcept"] = {"coding": [{"system": icd, "code": code}]}
        assert record(observations=[answered]).lab("pregnancy-status").newest().answer == "pregnancy-ended"


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
            {"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "6809"}]}}
        ],  # metformin (lisinopril, used before, is an N16 co-drug since rule catalog version 3)
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


def test_an_older_fhir_shape_in_an_element_nobody_reads_does_not_hide_the_resource():
    # The HL7 PDDI CDS requests send an active cyclosporine order with an STU3 `category` object and
    # `context`; a duplicate calcineurin inhibitor must not vanish for that (tests/test_real_data.py).
    stu3_order = {
        **order("csa", "241834", "active", "2026-10-01"),
        "category": {"coding": [{"code": "outpatient"}]},
        "context": {"reference": "Encounter/e1"},
    }
    stu3_condition = {
        "resourceType": "Condition",
        "id": "preg",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006"}]},
        "context": {"reference": "Encounter/e1"},
        "assertedDate": "2026-10-01",
    }
    read = record(medications=[stu3_order], conditions=[stu3_condition])
    assert [m.id for m in read.active_medications("other-calcineurin-inhibitors")] == ["csa"]
    assert [c.id for c in read.active_conditions("pregnancy")] == ["preg"]
    assert read.skipped == ()


def test_an_element_the_record_reads_is_still_validated():
    broken = {**order("csa", "241834", "active", "2026-10-01"), "dispenseRequest": {"validityPeriod": "soon"}}
    read = record(medications=[broken])
    assert read.active_medications("other-calcineurin-inhibitors") == []
    assert "dispenseRequest" in read.skipped[0].reason
