"""Issue 22's medication cases through the HTTP service, by prefetch and by FHIR callback (a real FHIR server
on loopback holding the fixture patients), and the v3 one-regimen readings of N12.

(a) a tacrolimus draft whose Medication is referenced by ``urn:uuid:`` (its ``fullUrl`` in ``draftOrders``)
    or by an absolute URL gives the same cards as with a contained Medication; one that cannot be resolved
    is named;
(b) "tacrolimus 0.03 % oint" never triggers;
(c) a tacrolimus order recognised only by its name: every card says so, once.
"""

from __future__ import annotations

import copy

import pytest

from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from tests.support import RXNORM, finding_ids, make_app

TOKEN = "medication-token-1"
FIXTURE = "pregnant-ln-flare-on-mmf"  # three cards: pregnancy, salvage context, monitoring
DRAFT = "pregflare-tac-draft"
UUID = "urn:uuid:5b1e6c9a-2f3d-4e8b-9a7c-1d2e3f4a5b6c"
MEDICATION = {
    "resourceType": "Medication",
    "id": "tac-1mg",
    "code": {"coding": [{"system": RXNORM, "code": "198377", "display": "tacrolimus 1 MG Oral Capsule"}]},
}
BY_NAME = "recognised by its name"
FINDINGS = "org.example.tacrolimus-cds.findings"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("medications"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base():
    with serve_in_thread(FhirStore.from_fixtures(), require_token=TOKEN) as base:
        yield base


def request(app, fhir_base, via: str, fixture: str = FIXTURE) -> dict:
    return build_request(
        fixture,
        hook="order-sign",
        via=via,
        fhir_base=fhir_base if via == "fhir" else None,
        prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
        token=TOKEN,
    )


def draft_of(body: dict, draft_id: str = DRAFT) -> dict:
    return next(
        e["resource"] for e in body["context"]["draftOrders"]["entry"] if e["resource"]["id"] == draft_id
    )


def send(app, body: dict) -> dict:
    response = app.test_client().post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return cards


def without_uuids(cards: dict) -> list[dict]:
    return [{k: v for k, v in card.items() if k not in ("uuid", "suggestions")} for card in cards["cards"]]


def referenced(body: dict, reference: str, full_url: str | None) -> dict:
    """The draft names its drug only by ``reference``; the Medication is an entry of draftOrders."""
    body = copy.deepcopy(body)
    draft = draft_of(body)
    draft.pop("medicationCodeableConcept")
    draft["medicationReference"] = {"reference": reference}
    entry: dict = {"resource": copy.deepcopy(MEDICATION)}
    if full_url:
        entry["fullUrl"] = full_url
    body["context"]["draftOrders"]["entry"].append(entry)
    return body


def contained(body: dict) -> dict:
    body = copy.deepcopy(body)
    draft = draft_of(body)
    draft.pop("medicationCodeableConcept")
    draft["contained"] = [{**copy.deepcopy(MEDICATION), "id": "m"}]
    draft["medicationReference"] = {"reference": "#m"}
    return body


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize(
    ("reference", "full_url"),
    [
        (UUID, UUID),
        (
            "https://ehr.example.org/fhir/Medication/tac-1mg",
            "https://ehr.example.org/fhir/Medication/tac-1mg",
        ),
        ("Medication/tac-1mg", None),
    ],
    ids=["urn-uuid", "absolute", "relative"],
)
def test_a_medication_referenced_any_way_gives_the_cards_of_a_contained_one(
    app, fhir_base, via, reference, full_url
):
    body = request(app, fhir_base, via)
    expected = send(app, contained(body))
    assert {"P1", "P2", "S3", "N11"} <= finding_ids(expected)
    cards = send(app, referenced(body, reference, full_url))
    assert without_uuids(cards) == without_uuids(expected)


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
def test_an_unresolvable_medication_reference_is_named_and_the_order_read_by_its_text(app, fhir_base, via):
    body = request(app, fhir_base, via)
    draft = draft_of(body)
    draft.pop("medicationCodeableConcept")
    draft["medicationReference"] = {"reference": "urn:uuid:0000-missing", "display": "Prograf 1 mg capsule"}
    cards = send(app, body)
    assert {"P1", "P2", "N11"} <= finding_ids(cards)
    for card in cards["cards"]:
        assert (
            "the draft's medication reference urn:uuid:0000-missing could not be resolved"
            in card["detail"].lower()
        )


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
def test_a_second_draft_whose_medication_cannot_be_found_is_named_as_left_out(app, fhir_base, via):
    body = request(app, fhir_base, via)
    lost = {
        "resourceType": "MedicationRequest",
        "id": "lost-draft",
        "status": "draft",
        "intent": "order",
        "subject": copy.deepcopy(draft_of(body)["subject"]),
        "medicationReference": {"reference": "urn:uuid:0000-lost"},
    }
    body["context"]["draftOrders"]["entry"].append({"resource": lost})
    cards = send(app, body)
    assert cards["cards"]
    for card in cards["cards"]:
        assert (
            "MedicationRequest/lost-draft: the draft's medication reference urn:uuid:0000-lost "
            "could not be resolved" in card["detail"]
        )


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize(
    "text", ["tacrolimus 0.03 % oint", "TACROLIMUS 0.1% OINT,TOP", "tacrolimus 0.1 % crm"]
)
def test_abbreviated_topical_tacrolimus_never_triggers(app, fhir_base, via, text):
    body = request(app, fhir_base, via)
    draft_of(body)["medicationCodeableConcept"] = {"text": text}
    assert send(app, body) == {"cards": []}


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
def test_a_tacrolimus_order_recognised_by_its_name_is_said_once_on_every_card(app, fhir_base, via):
    body = request(app, fhir_base, via)
    coded = send(app, body)
    draft_of(body)["medicationCodeableConcept"] = {"text": "Prograf 1 mg capsule"}
    cards = send(app, body)
    assert finding_ids(cards) == finding_ids(coded) and len(cards["cards"]) == 3
    for card in cards["cards"]:
        assert card["detail"].count(BY_NAME) == 1, card["detail"]
    assert all(BY_NAME not in card["detail"] for card in coded["cards"])


# --- N12: one regimen in several drafts (rules.md v3 § Data rules) ------------------------------------------
BASE = "complete-well-monitored"  # a new start with nothing else that fires but N11
BASE_DRAFT = "cwm-tac-draft"


def capsules(code: str, count: float, **timing) -> dict:
    """A draft of ``count`` capsules of an RxNorm tacrolimus product, with its timing."""
    return {
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
        "dosageInstruction": [
            {
                "timing": timing,
                "doseAndRate": [{"doseQuantity": {"value": count, "unit": "capsule", "code": "{capsule}"}}],
            }
        ],
    }


Q12H = {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}}


def with_drafts(body: dict, *drafts: dict) -> dict:
    """``body`` with its one tacrolimus draft replaced by ``drafts`` (drug and dosage each), in this order."""
    body = copy.deepcopy(body)
    first = draft_of(body, BASE_DRAFT)
    common = {k: v for k, v in first.items() if k not in ("medicationCodeableConcept", "dosageInstruction")}
    body["context"]["draftOrders"]["entry"] = [
        {
            "resource": {
                **common,
                **copy.deepcopy(fields),
                "id": f"{BASE_DRAFT}-{number}" if number else BASE_DRAFT,
            }
        }
        for number, fields in enumerate(drafts)
    ]
    return body


def n12_card(cards: dict) -> dict | None:
    return next((c for c in cards["cards"] if any(f["id"] == "N12" for f in c["extension"][FINDINGS])), None)


def deletes(card: dict) -> list[str]:
    return [
        a["resourceId"] for s in card.get("suggestions", ()) for a in s["actions"] if a["type"] == "delete"
    ]


@pytest.mark.parametrize(
    "drafts",
    [
        (capsules("198378", 1, **Q12H), capsules("198377", 1, **Q12H)),  # 5 mg + 1 mg every 12 hours
        (capsules("198377", 3, repeat={"when": ["MORN"]}), capsules("198377", 2, repeat={"when": ["EVE"]})),
        (capsules("198378", 1, **Q12H), capsules("198377", 1, repeat={"when": ["MORN"]})),  # both
    ],
    ids=["split-strength", "morning-and-evening", "both"],
)
def test_drafts_of_one_formulation_are_one_regimen_not_a_duplicate(app, drafts):
    cards = send(app, with_drafts(request(app, None, "prefetch", BASE), *drafts))
    assert "N12" not in finding_ids(cards)
    assert [d for card in cards["cards"] for d in deletes(card)] == []


def test_two_identical_drafts_are_a_duplicate_and_the_later_one_is_deleted(app):
    same = capsules("198377", 1, **Q12H)
    cards = send(app, with_drafts(request(app, None, "prefetch", BASE), same, same))
    card = n12_card(cards)
    assert card is not None and card["indicator"] == "critical"
    assert deletes(card) == [f"MedicationRequest/{BASE_DRAFT}-1"]


def test_two_drafts_of_different_oral_formulations_are_n12_not_interchangeable(app):
    xr = {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1664461"}]}}
    cards = send(app, with_drafts(request(app, None, "prefetch", BASE), capsules("198377", 1, **Q12H), xr))
    card = n12_card(cards)
    assert card is not None and card["indicator"] == "critical"
    assert "not interchangeable mg for mg" in card["detail"]


def test_intravenous_and_oral_both_active_are_n12_at_warning_without_a_delete(app):
    body = request(app, None, "prefetch", BASE)
    draft = draft_of(body, BASE_DRAFT)
    iv = {
        **{k: v for k, v in draft.items() if k not in ("medicationCodeableConcept", "dosageInstruction")},
        "id": "cwm-tac-iv",
        "status": "active",
        "authoredOn": draft["authoredOn"],
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "198379"}]},
    }
    body["prefetch"]["medications"].setdefault("entry", []).append({"resource": iv})
    cards = send(app, body)
    card = n12_card(cards)
    assert card is not None
    items = {f["id"]: f["indicator"] for f in card["extension"][FINDINGS]}
    assert items["N12"] == "warning"
    assert "check that one stops when the other starts" in card["detail"]
    assert deletes(card) == []
    # an oral order whose priorPrescription points to the intravenous one replaces it: no N12
    draft["priorPrescription"] = {"reference": "MedicationRequest/cwm-tac-iv"}
    assert "N12" not in finding_ids(send(app, body))


def test_patient_view_says_once_per_card_that_the_active_order_was_recognised_by_its_name(tmp_path):
    from test_patient_view import app_for, post, pv_request

    app = app_for(tmp_path, hold_repeats={"enabled": False})
    body = pv_request(app, "pv-creatinine-rise-45pct")
    orders = [e["resource"] for e in body["prefetch"]["medications"]["entry"]]
    (tacrolimus,) = [o for o in orders if "tacrolimus" in str(o.get("medicationCodeableConcept")).lower()]
    coded = post(app.test_client(), body)
    tacrolimus["medicationCodeableConcept"] = {"text": "Prograf 1 mg capsule"}
    cards = post(app.test_client(), body)
    assert finding_ids(cards) == finding_ids(coded) == {"N3"}
    for card in cards["cards"]:
        assert card["detail"].count(BY_NAME) == 1, card["detail"]


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
def test_a_prior_prescription_not_in_the_record_is_continuing_therapy_said_on_every_card_and_n15_runs(
    app, fhir_base, via
):
    body = request(app, fhir_base, via, "n15-no-hbsag-new-start")
    assert finding_ids(send(app, body)) == {"N11", "N15"}
    draft_of(body, "n15scr-tac-draft")["priorPrescription"] = {
        "reference": "MedicationRequest/other-system-7"
    }
    cards = send(app, body)
    assert finding_ids(cards) == {
        "N15"
    }  # continuing therapy: no new-start schedule; not known to be screened
    for card in cards["cards"]:
        assert card["detail"].count("(MedicationRequest/other-system-7) was not found in the record") == 1


class RecordingStore(FhirStore):
    """The fixture FHIR store with one Medication more, noting every read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def read(self, resource_type, resource_id):
        self.reads.append(f"{resource_type}/{resource_id}")
        return super().read(resource_type, resource_id)


def test_a_medication_only_on_the_ehrs_server_is_read_and_a_urn_uuid_never_is(app):
    medication = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": MEDICATION}]}
    store = RecordingStore.from_fixtures([FIXTURE], extra_bundles=[medication])
    with serve_in_thread(store, require_token=TOKEN) as base:
        body = request(app, base, "fhir")
        expected = send(app, contained(body))
        on_server = referenced(body, f"{base.rstrip('/')}/Medication/tac-1mg", None)
        on_server["context"]["draftOrders"]["entry"].pop()  # the Medication is on the EHR's server only
        assert without_uuids(send(app, on_server)) == without_uuids(expected)
        assert "Medication/tac-1mg" in store.reads
        store.reads.clear()
        for reference in (UUID, "https://elsewhere.example/fhir/Medication/tac-1mg"):
            elsewhere = referenced(body, reference, None)
            elsewhere["context"]["draftOrders"]["entry"].pop()
            draft_of(elsewhere)["medicationReference"]["display"] = "Prograf 1 mg capsule"
            detail = send(app, elsewhere)["cards"][0]["detail"]
            assert f"The draft's medication reference {reference} could not be resolved" in detail
            assert [r for r in store.reads if r.startswith("Medication/")] == []
