"""Clinical behaviour on real data nobody here wrote: Synthea patients and RxNorm-coded orders from public
CDS Hooks and FHIR examples (tests/data/real, origins in tests/data/SOURCES.md), sent through the HTTP
service by prefetch with a tacrolimus draft, read as a clinician would read the cards.

Synthea records are years old. ``as_of`` rebuilds a record as it stood on a chosen day (what happened later is
dropped; a Condition that ended later is still active) and moves every date so that day is yesterday: the
values, codes, units and intervals stay Synthea's own. Only the lupus nephritis Condition (needed for the
service to speak) and the tacrolimus draft (a real RxNorm SCD, 198377) are added.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request_from_bundle
from cds_service.sandbox.store import FhirStore
from tests.support import (
    FINDINGS_KEY,
    SNOMED,
    finding_ids,
    make_app,
    small_patient,
    tacrolimus_draft,
)

REAL = Path(__file__).resolve().parent / "data" / "real"
TOKEN = "real-data-token-1"
VIAS = ["prefetch", "fhir"]
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T[0-9:.]+([+-]\d{2}:\d{2}|Z)?)?$")
HL7 = "http://terminology.hl7.org"
DATED = ("effectiveDateTime", "authoredOn", "onsetDateTime", "recordedDate", "issued")


def synthea(name: str) -> list[dict]:
    """The patient's resources, with the transaction's ``urn:uuid:`` references to the patient written as
    ``Patient/<id>``, as a FHIR server does when it stores the transaction."""
    text = (REAL / f"synthea-{name}.json").read_text(encoding="utf-8")
    pid = patient_id([entry["resource"] for entry in json.loads(text)["entry"]])
    stored = text.replace(f'"urn:uuid:{pid}"', f'"Patient/{pid}"')
    return [entry["resource"] for entry in json.loads(stored)["entry"]]


def _moved(value, delta: timedelta):
    if isinstance(value, dict):
        return {key: _moved(item, delta) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, delta) for item in value]
    if isinstance(value, str) and DATE.match(value):
        if "T" in value:
            return (datetime.fromisoformat(value.replace("Z", "+00:00")) + delta).isoformat()
        return (datetime.fromisoformat(value) + delta).date().isoformat()
    return value


def _dated(resource: dict) -> datetime | None:
    for key in DATED:
        if key in resource:
            return datetime.fromisoformat(resource[key].replace("Z", "+00:00"))
    return None


def as_of(resources: list[dict], day: str, days_ago: float = 1) -> list[dict]:
    """The record as it stood at the end of ``day``, with every date moved so that ``day`` is ``days_ago``."""
    cut = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    kept = []
    for resource in resources:
        when = _dated(resource)
        if when is not None and when > cut:
            continue
        resource = copy.deepcopy(resource)
        ended = resource.get("abatementDateTime")
        if resource["resourceType"] == "Condition" and ended and datetime.fromisoformat(ended) > cut:
            del resource["abatementDateTime"]
            resource["clinicalStatus"]["coding"][0]["code"] = "active"
        kept.append(resource)
    return _moved(kept, datetime.now(UTC) - timedelta(days=days_ago) - cut)


def newest_day(resources: list[dict]) -> str:
    return max(when for r in resources if (when := _dated(r))).date().isoformat()


def patient_id(resources: list[dict]) -> str:
    return next(r["id"] for r in resources if r["resourceType"] == "Patient")


def with_lupus_nephritis(resources: list[dict]) -> list[dict]:
    pid = patient_id(resources)
    lupus_nephritis = {
        "resourceType": "Condition",
        "id": "added-lupus-nephritis",
        "subject": {"reference": f"Patient/{pid}"},
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": SNOMED, "code": "68815009", "display": "SLE glomerulonephritis"}]},
    }
    return [*resources, lupus_nephritis]


def for_patient(order: dict, pid: str) -> dict:
    """A real order moved to this patient (its subject is another patient's)."""
    order = copy.deepcopy(order)
    order["subject"] = {"reference": f"Patient/{pid}"}
    return order


def as_order(resource: dict, pid: str) -> dict:
    """A real resource as this patient's order: an order moved to the patient, a bare Medication ordered by
    an active MedicationRequest that contains it."""
    if "subject" in resource:
        resource = for_patient(resource, pid)
    if resource["resourceType"] != "Medication":
        return resource
    return {
        "resourceType": "MedicationRequest",
        "id": "orders-the-medication",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "contained": [{**resource, "id": "med"}],
        "medicationReference": {"reference": "#med"},
    }


def order_of(resources: list[dict], rxnorm: str) -> dict:
    return next(
        r
        for r in resources
        if r["resourceType"] == "MedicationRequest"
        and r["medicationCodeableConcept"]["coding"][0]["code"] == rxnorm
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("real-data"))


def cards_for(
    app, resources: list[dict], hook: str = "order-sign", drafts: list[dict] = (), via: str = "prefetch"
) -> dict:
    """The cards for ordering tacrolimus (with ``drafts``) for this record, which the service reads from the
    prefetch or, with ``via="fhir"``, from a real FHIR server on loopback holding the same record."""
    pid = patient_id(resources)
    # A new draft id per call: what order-select showed is never held back at order-sign between tests.
    ordered = [tacrolimus_draft(pid, f"tac-{uuid.uuid4().hex[:12]}"), *drafts]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    bundle["entry"] += [{"resource": d} for d in ordered]
    refs = [f"MedicationRequest/{d['id']}" for d in ordered]
    store = FhirStore()
    store.add_bundle(bundle, exclude=refs)
    with serve_in_thread(store, require_token=TOKEN) as base:
        body = build_request_from_bundle(
            bundle,
            refs,
            selections=refs[:1],
            hook=hook,
            via=via,
            fhir_base=base if via == "fhir" else None,
            prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
            token=TOKEN,
            store=store,
        )
        response = app.test_client().post(f"/cds-services/tacrolimus-{hook}", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return cards


def finding_text(response: dict, rule_id: str) -> str:
    """The detail paragraph of one finding (it opens with the finding id in bold, "**N7 (warning)**") as a
    reader sees it: the backslash escapes that keep record text from becoming Markdown are removed."""
    opens = re.compile(rf"^\*\*[^*]*\b{re.escape(rule_id)}\b[^*]*\*\*")
    for card in response["cards"]:
        for block in card["detail"].split("\n\n"):
            if opens.match(block):
                return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", block)
    raise AssertionError(f"{rule_id} not on the cards: {finding_ids(response)}")


def indicator_of(response: dict, rule_id: str) -> str:
    return next(
        f["indicator"] for c in response["cards"] for f in c["extension"][FINDINGS_KEY] if f["id"] == rule_id
    )


# --- pregnancy as Synthea records it: a "Normal pregnancy" Condition, resolved at the delivery --------------

FRANCINE_PREGNANT = "2019-01-18"  # second pregnancy, onset 2018-10-25, premature birth 2019-05-09
FRANCINE_DELIVERED = "2019-06-01"  # 23 days after the delivery; the Condition is resolved at 2019-05-09


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_synthea_patient_during_her_pregnancy_gets_p1(client, hook, via):
    record = with_lupus_nephritis(as_of(synthea("francine"), FRANCINE_PREGNANT))
    response = cards_for(client, record, hook, via=via)
    assert "P1" in finding_ids(response)
    assert "Normal pregnancy" in finding_text(response, "P1")
    assert not {"P2", "P7"} & finding_ids(response)


@pytest.mark.parametrize("via", VIAS)
def test_a_real_methotrexate_order_in_a_synthea_pregnancy_is_the_critical_teratogen_card(client, via):
    record = with_lupus_nephritis(as_of(synthea("francine"), FRANCINE_PREGNANT))
    methotrexate = for_patient(order_of(synthea("asa"), "105586"), patient_id(record))  # Synthea, active
    response = cards_for(client, [*record, methotrexate], via=via)
    assert indicator_of(response, "P2") == "critical"
    assert "Methotrexate 10 MG Oral Tablet" in finding_text(response, "P2")


@pytest.mark.parametrize("via", VIAS)
def test_a_synthea_patient_who_delivered_gets_no_teratogen_alarm(client, via):
    record = with_lupus_nephritis(as_of(synthea("francine"), FRANCINE_DELIVERED))
    methotrexate = for_patient(order_of(synthea("asa"), "105586"), patient_id(record))
    response = cards_for(client, [*record, methotrexate], via=via)
    assert not {"P1", "P2", "P5", "P6"} & finding_ids(response)


@pytest.mark.parametrize("via", VIAS)
def test_synthea_preeclampsia_in_pregnancy_is_p5(client, via):
    # Francine's second pregnancy: Preeclampsia (398254007) from 2019-04-11, resolved at birth (2019-05-09).
    response = cards_for(client, with_lupus_nephritis(as_of(synthea("francine"), "2019-04-20")), via=via)
    assert indicator_of(response, "P5") == "warning"
    assert "Preeclampsia" in finding_text(response, "P5")


# --- Synthea labs: codes and units as Synthea writes them ---------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
def test_synthea_egfr_and_blood_pressure_panels_are_read(client, via):
    isaiah = synthea("isaiah")  # CKD stage 2 and diabetic renal disease; eGFR 33914-3, BP panels 55284-4
    response = cards_for(client, with_lupus_nephritis(as_of(isaiah, newest_day(isaiah))), via=via)
    assert "eGFR 41.6 mL/min/1.73 m²" in finding_text(response, "N13")
    n7 = finding_text(response, "N7")
    # 148/102: only the diastolic part crosses the warning tier (160/100), and the card says so.
    assert indicator_of(response, "N7") == "warning"
    assert "148/102 mmHg" in n7 and "diastolic at or above 100" in n7
    assert "at or above 160/100" not in n7
    assert "could not be used" not in json.dumps(response)


@pytest.mark.parametrize("via", VIAS)
def test_synthea_creatinine_potassium_and_hba1c_count_as_baseline(client, via):
    dirk = synthea("dirk")  # creatinine 38483-4, potassium 6298-4, HbA1c 4548-4, eGFR 33914-3 in "mL/min"
    response = cards_for(client, with_lupus_nephritis(as_of(dirk, newest_day(dirk))), via=via)
    n1 = finding_text(response, "N1")
    missing = re.search(r"Nothing is recorded in the last \d+ days for ([^.]*)\.", n1)[1]
    assert "magnesium" in missing and "UPCR" in missing
    for present in ("creatinine", "potassium", "glucose", "blood pressure"):
        assert present not in missing, n1


@pytest.mark.parametrize("via", VIAS)
def test_a_synthea_carbamazepine_order_is_recognised_by_its_name_and_says_so(client, via):
    dirk = synthea("dirk")  # "Carbamazepine[Tegretol]", RxNorm 308971 (not in the published lists we ship)
    response = cards_for(client, with_lupus_nephritis(as_of(dirk, newest_day(dirk))), via=via)
    n9 = finding_text(response, "N9")
    assert "Carbamazepine[Tegretol]" in n9 and "recognised by its name" in n9


# --- real RxNorm-coded orders from public CDS Hooks requests and FHIR examples ------------------------------

REAL_ORDERS = json.loads((REAL / "medication-orders.json").read_text(encoding="utf-8"))
EXPECTED = {  # the real order's first coding -> the finding it must give (None: it must give none)
    "315749": "N12",  # "Cyclosporine 100 MG" (PDDI CDS): only its name is known
    "835925": "N12",  # cyclosporine, modified 50 MG Oral Capsule
    "835894": "N12",  # cyclosporine, modified 25 MG Oral Capsule
    "197805": "N10",  # Ibuprofen 400 MG Oral Tablet
    "834022": "N10",  # Ketorolac Tromethamine 10 MG Oral Tablet, a draft order
    "855635": None,  # Diclofenac Sodium 0.01 MG/MG Topical Gel [Voltaren]: not a systemic NSAID
    "1313112": "N9",  # Phenytoin 25mg/ml oral suspension (FHIR R4 example)
    "0069-2587-10": "N10",  # NDC vancomycin, a Medication resource (FHIR R4 example)
}
FAMILY = {"N9", "N10", "N12"}


def _code(entry: dict) -> str:
    resource = entry["resource"]
    return (resource.get("medicationCodeableConcept") or resource.get("code"))["coding"][0]["code"]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("entry", REAL_ORDERS, ids=_code)
@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_real_order_gives_its_finding(client, entry, hook, via):
    pid = "real-orders-p"
    record = small_patient(pid)
    resource = as_order(entry["resource"], pid)
    drafts = []
    if resource.get("status") == "draft":
        drafts.append(resource)
    else:
        record = [*record, resource]
    response = cards_for(client, record, hook, drafts, via)
    expected = EXPECTED[_code(entry)]
    assert FAMILY & finding_ids(response) == ({expected} if expected else set()), entry["source"]


def _pregnancy_days(resources: list[dict]) -> list[tuple[str, bool]]:
    """Every day something was recorded for the patient, and whether a pregnancy Condition was open then."""
    pregnancies = [
        (r["onsetDateTime"][:10], r.get("abatementDateTime", "9999")[:10])
        for r in resources
        if r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == "72892002"
    ]
    days = sorted({when.date().isoformat() for r in resources if (when := _dated(r))})
    return [(day, any(start <= day < end for start, end in pregnancies)) for day in days]


@pytest.mark.slow  # a call for every day of five pregnancies
def test_p1_follows_every_synthea_pregnancy_from_its_start_to_its_end(client):
    """On every day of Francine's record (five pregnancies: births, a termination, a miscarriage), P1 is on
    the cards exactly when a pregnancy was open that day, and P2 exactly then for an active methotrexate."""
    francine = synthea("francine")
    wrong = []
    for day, pregnant in _pregnancy_days(francine):
        record = with_lupus_nephritis(as_of(francine, day))
        methotrexate = for_patient(order_of(synthea("asa"), "105586"), patient_id(record))
        found = finding_ids(cards_for(client, [*record, methotrexate]))
        if ("P1" in found, "P2" in found) != (pregnant, pregnant):
            wrong.append((day, pregnant, sorted(found)))
    assert wrong == []


@pytest.mark.parametrize("via", VIAS)
def test_a_stopped_synthea_cyclosporine_is_no_duplicate_but_an_active_naproxen_is_a_nephrotoxin(client, via):
    asa = synthea("asa")  # cycloSPORINE 50 MG Oral Capsule stopped; Naproxen sodium 220 MG Oral Tablet active
    response = cards_for(client, with_lupus_nephritis(as_of(asa, newest_day(asa))), via=via)
    assert "N12" not in finding_ids(response)
    assert "Naproxen sodium 220 MG Oral Tablet" in finding_text(response, "N10")


STU3_CONDITION = json.loads((REAL / "stu3-conditions.json").read_text(encoding="utf-8"))[0]["resource"]


def _stu3_condition(pid: str, code: str, display: str) -> dict:
    """The PDDI CDS request's STU3 Condition ("clinicalStatus": "active", "verificationStatus":
    "differential", assertedDate) for this patient, coded as the rules need."""
    condition = for_patient(STU3_CONDITION, pid)
    condition["code"] = {"coding": [{"system": SNOMED, "code": code, "display": display}]}
    return condition


@pytest.mark.parametrize("via", VIAS)
def test_stu3_shaped_lupus_nephritis_and_pregnancy_conditions_are_read(client, via):
    pid = "stu3-p"
    patient = [r for r in small_patient(pid) if r["resourceType"] != "Condition"]  # no R4 lupus nephritis
    lupus_nephritis = _stu3_condition(pid, "68815009", "Systemic lupus erythematosus glomerulonephritis")
    pregnancy = {**_stu3_condition(pid, "77386006", "Pregnant"), "id": "c101-pregnancy"}
    response = cards_for(client, [*patient, lupus_nephritis, pregnancy], via=via)
    assert "P1" in finding_ids(response)  # before: both Conditions left out, so no card at all
    assert "Left out" not in json.dumps(response)
