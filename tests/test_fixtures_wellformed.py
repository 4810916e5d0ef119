"""The fixture patients are valid FHIR R4, agree with their manifest and can share one FHIR server.

Every other test, the benchmark and the sandbox trust these files; a typo here (a draft id that does not
exist, an expected id that is not in the catalog, an Observation that a FHIR server would reject) would make
them test the wrong thing without failing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds_service.fixtures import ANCHOR, FIXTURES_DIR, load_bundle
from cds_service.rules import FINDING_IDS

MANIFEST = json.loads((FIXTURES_DIR / "manifest.json").read_text())
NAMES = sorted(MANIFEST)
CATALOG = set(FINDING_IDS)
ALLOWED_SYSTEMS = {
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/cvx",  # vaccines (N19)
    "http://unitsofmeasure.org",
    "http://terminology.hl7.org/CodeSystem/condition-clinical",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    "http://terminology.hl7.org/CodeSystem/condition-category",
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
}
EDD_LOINC = "11778-8"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def bundle(name: str) -> dict:
    return json.loads((FIXTURES_DIR / f"{name}.json").read_text())


def resources(name: str) -> list[dict]:
    return [entry["resource"] for entry in bundle(name)["entry"]]


def by_reference(name: str) -> dict[str, dict]:
    return {f"{r['resourceType']}/{r['id']}": r for r in resources(name)}


def walk(node, path=()):
    """Every (path, value) leaf of a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for value in node:
            yield from walk(value, path)
    else:
        yield path, node


def test_every_bundle_file_has_a_manifest_entry_and_back():
    files = {p.stem for p in FIXTURES_DIR.glob("*.json")} - {"manifest"}
    assert files == set(MANIFEST)


@pytest.mark.parametrize("name", NAMES)
def test_bundle_is_a_collection_with_one_patient(name):
    data = bundle(name)
    assert data["resourceType"] == "Bundle"
    assert data["type"] == "collection"
    patients = [r for r in resources(name) if r["resourceType"] == "Patient"]
    assert len(patients) == 1


@pytest.mark.parametrize("name", NAMES)
def test_every_resource_validates_except_the_deliberately_malformed(name):
    malformed = set(MANIFEST[name].get("malformed", []))
    found = by_reference(name)
    assert malformed <= set(found), "malformed entries must name resources in the bundle"
    for ref, resource in found.items():
        model = get_fhir_model_class(resource["resourceType"])
        if ref in malformed:
            with pytest.raises(ValidationError):
                model.model_validate(resource)
        else:
            model.model_validate(resource)
    if not malformed:
        get_fhir_model_class("Bundle").model_validate(bundle(name))


def test_exactly_one_fixture_is_deliberately_malformed():
    assert [n for n in NAMES if MANIFEST[n].get("malformed")] == ["malformed-observation-skipped"]


@pytest.mark.parametrize("name", NAMES)
def test_drafts_and_selections_are_draft_orders_in_the_bundle(name):
    entry = MANIFEST[name]
    found = by_reference(name)
    if entry.get("hook") == "patient-view":  # a chart opened, no ordering session
        assert entry["service"] == "tacrolimus-monitoring"
        assert entry["drafts"] == entry["selections"] == []
        assert not [ref for ref, r in found.items() if r.get("status") == "draft"]
        return
    assert entry["drafts"], "every fixture has an ordering session"
    orders = []
    for ref in entry["drafts"]:
        order = found[ref]
        if order["resourceType"] == "Immunization":  # sent in draftOrders, yet not an order (rules.md v3)
            continue
        orders.append(ref)
        assert order["resourceType"] in ("MedicationRequest", "ServiceRequest")  # a vaccine as a service
        assert (order["status"], order["intent"]) == ("draft", "order")
    assert entry["selections"]
    assert set(entry["selections"]) <= set(orders)
    stored_drafts = {ref for ref, r in found.items() if r.get("status") == "draft"}
    assert stored_drafts == set(orders), "a draft not listed in the manifest would be read as stored"


@pytest.mark.parametrize("name", NAMES)
def test_expected_ids_are_catalog_ids_each_with_a_reason(name):
    entry = MANIFEST[name]
    expected = entry["expected"]
    assert len(expected) == len(set(expected))
    assert set(expected) <= CATALOG
    assert set(entry["why"]) == set(expected)
    assert all(entry["why"].values())
    quiet = entry.get("quiet", {})
    assert set(quiet) <= CATALOG
    assert not set(quiet) & set(expected)
    assert entry["description"]


def test_every_catalog_finding_is_expected_somewhere():
    expected = set().union(*(MANIFEST[n]["expected"] for n in NAMES))
    assert expected == CATALOG


def test_resource_ids_are_unique_across_all_fixtures():
    ids = Counter()
    for name in NAMES:
        for resource in resources(name):
            ids[(resource["resourceType"], resource["id"])] += 1
            for inner in resource.get("contained", []):
                ids[(inner["resourceType"], inner["id"])] += 1
    assert [key for key, count in ids.items() if count > 1] == []


@pytest.mark.parametrize("name", NAMES)
def test_ids_carry_the_fixture_prefix_and_references_resolve(name):
    found = by_reference(name)
    patient = next(ref for ref in found if ref.startswith("Patient/"))
    prefix = patient.removeprefix("Patient/").removesuffix("-pat") + "-"
    for ref, resource in found.items():
        assert resource["id"].startswith(prefix), ref
        subject = resource.get("subject") or resource.get("patient")
        if resource["resourceType"] != "Patient" and resource["resourceType"] != "Medication":
            assert subject == {"reference": patient}, ref
        medication = resource.get("medicationReference", {}).get("reference")
        if medication and medication.startswith("#"):
            assert medication[1:] in {c["id"] for c in resource.get("contained", [])}, ref
        elif medication:
            assert found[medication]["resourceType"] == "Medication", ref
        prior = resource.get("priorPrescription", {}).get("reference")
        if prior:
            assert found[prior]["resourceType"] == "MedicationRequest"
            assert found[prior]["status"] == "active", "a renewal points to the order it renews"


@pytest.mark.parametrize("name", NAMES)
def test_codes_come_from_the_known_systems_and_quantities_are_ucum(name):
    for resource in resources(name):
        for path, value in walk(resource):
            if path[-1] == "system" and "identifier" not in path:
                assert value in ALLOWED_SYSTEMS, (resource["id"], path, value)
        for quantity in _quantities(resource):
            assert quantity["system"] == "http://unitsofmeasure.org", resource["id"]
            assert quantity["code"] and quantity["unit"], resource["id"]


def _quantities(resource: dict) -> list[dict]:
    found = [resource["valueQuantity"]] if "valueQuantity" in resource else []
    return found + [c["valueQuantity"] for c in resource.get("component", []) if "valueQuantity" in c]


@pytest.mark.parametrize("name", NAMES)
def test_no_recorded_event_is_after_the_anchor_day(name):
    """Only an estimated delivery date may lie in the future: anything else would be data from tomorrow."""
    for resource in resources(name):
        is_edd = any(c.get("code") == EDD_LOINC for c in resource.get("code", {}).get("coding", []))
        for path, value in walk(resource):
            if not isinstance(value, str) or not DATE.match(value) or (is_edd and path == ("valueDateTime",)):
                continue
            assert date.fromisoformat(value[:10]) <= ANCHOR, (resource["id"], path, value)


def test_load_bundle_moves_every_date_by_the_days_since_the_anchor():
    name = "p6-pregnant-on-tacrolimus-no-trough"
    original = by_reference(name)
    edd_ref = next(ref for ref, r in original.items() if r.get("valueDateTime"))
    draft_ref = MANIFEST[name]["drafts"][0]

    later = {
        f"{r['resourceType']}/{r['id']}": r for r in _entries(load_bundle(name, ANCHOR + timedelta(days=10)))
    }
    assert original[edd_ref]["effectiveDateTime"] == "2026-07-10T08:30:00Z"
    assert later[edd_ref]["effectiveDateTime"] == "2026-07-20T08:30:00Z"
    assert later[edd_ref]["valueDateTime"] == "2027-02-20"
    assert later[draft_ref]["authoredOn"] == "2026-11-11"

    earlier = {
        f"{r['resourceType']}/{r['id']}": r for r in _entries(load_bundle(name, ANCHOR - timedelta(days=40)))
    }
    assert earlier[edd_ref]["effectiveDateTime"] == "2026-05-31T08:30:00Z"
    assert earlier[draft_ref]["authoredOn"] == "2026-09-22"


def test_load_bundle_on_the_anchor_day_changes_nothing():
    name = "complete-well-monitored"
    assert load_bundle(name, ANCHOR) == bundle(name)


def _entries(data: dict) -> list[dict]:
    return [entry["resource"] for entry in data["entry"]]


def test_generator_output_matches_the_committed_files(tmp_path: Path, monkeypatch):
    """The JSON on disk is what ``make_fixtures.py`` writes: editing one without the other fails."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES_DIR / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    names = module.write(tmp_path)
    assert sorted(names) == NAMES
    for path in tmp_path.iterdir():
        assert path.read_text() == (FIXTURES_DIR / path.name).read_text(), path.name
