"""The co-prescribing services (issue 24; rules.md v3 § The other prescriber), through the HTTP endpoint.

Every co-prescribing fixture at order-select and order-sign, by prefetch and by FHIR callback, against its
manifest; each watched draft swapped for acetaminophen (a drug nobody watches) gives no card; each watched
drug drafted for a patient not on tacrolimus gives no card; the cards speak to the clinician ordering the
other drug and never touch the tacrolimus order.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from cds_service.fixtures import manifest
from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from tests.support import finding_ids, make_app

CO_FIXTURES = sorted(name for name, entry in manifest().items() if entry.get("services"))
WATCHED = [name for name in CO_FIXTURES if manifest()[name]["expected"]]
TOKEN = "co-prescribing-token-1"
ACETAMINOPHEN = {
    "coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "161", "display": "acetaminophen"}
    ],
    "text": "acetaminophen 500 mg tablet",
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("co-prescribing"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base():
    with serve_in_thread(FhirStore.from_fixtures(), require_token=TOKEN) as base:
        yield base


def _request(app, fixture: str, hook: str, via: str = "prefetch", fhir_base: str | None = None) -> dict:
    runtime = app.extensions["cds_runtime"]()
    service = runtime.service(manifest()[fixture]["services"][hook])
    return build_request(
        fixture,
        hook=hook,
        via=via,
        fhir_base=fhir_base if via == "fhir" else None,
        prefetch_templates=runtime.templates_for(service),
        token=TOKEN,
    )


def _call(app, fixture: str, hook: str, body: dict) -> dict:
    response = app.test_client().post(f"/cds-services/{manifest()[fixture]['services'][hook]}", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return cards


def test_there_are_at_least_eight_patients_on_tacrolimus_with_a_watched_draft():
    assert len(WATCHED) >= 8
    drafted = {json.dumps(manifest()[n]["expected"]) for n in WATCHED}
    assert {'["N9"]', '["N10"]', '["N12"]', '["N21"]', '["P2"]', '["P7"]', '["N19"]'} <= drafted


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize("fixture", CO_FIXTURES)
def test_fixture_findings_match_the_manifest(app, fhir_base, fixture, hook, via):
    cards = _call(app, fixture, hook, _request(app, fixture, hook, via, fhir_base))
    assert finding_ids(cards) == set(manifest()[fixture]["expected"])


def _draft_entry(body: dict) -> dict:
    """The other prescriber's draft in the request (the fixture's ``…-draft`` order)."""
    return next(
        e["resource"]
        for e in body["context"]["draftOrders"]["entry"]
        if e["resource"]["id"].endswith("-draft")
    )


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize("fixture", WATCHED)
def test_the_same_patient_drafting_acetaminophen_gets_no_card_and_the_prefetch_is_never_read(
    app, fixture, hook
):
    body = _request(app, fixture, hook)
    body["prefetch"] = {key: {"entry": "not even a Bundle"} for key in body["prefetch"]}
    service = manifest()[fixture]["services"][hook]
    refused = app.test_client().post(f"/cds-services/{service}", json=body)
    assert refused.status_code == 400  # the watched draft reads the prefetch, and refuses it
    draft = _draft_entry(body)
    if draft["resourceType"] == "ServiceRequest":
        draft["code"] = ACETAMINOPHEN  # a service that is not a vaccine is not watched
    else:
        draft.pop("medicationReference", None)
        draft["medicationCodeableConcept"] = ACETAMINOPHEN
    assert _call(app, fixture, hook, body) == {"cards": []}  # acetaminophen: the prefetch is never read


NOT_ON_TACROLIMUS = [n for n in CO_FIXTURES if "not-on-tacrolimus" in n or "stopped-tacrolimus" in n]


@pytest.mark.parametrize("watched", WATCHED)
@pytest.mark.parametrize("fixture", NOT_ON_TACROLIMUS)
def test_every_watched_draft_for_a_patient_not_on_tacrolimus_gives_no_card(app, fixture, watched):
    body = _request(app, fixture, "order-sign")
    mine = _draft_entry(body)
    theirs = copy.deepcopy(_draft_entry(_request(app, watched, "order-sign")))
    theirs.update(id=mine["id"], subject=mine["subject"])  # their drug, drafted for this patient
    mine.clear()
    mine.update(theirs)
    body["context"]["selections"] = [f"{theirs['resourceType']}/{theirs['id']}"]
    assert _call(app, fixture, "order-sign", body) == {"cards": []}


@pytest.mark.parametrize("fixture", WATCHED)
def test_cards_speak_to_the_other_prescriber_and_never_touch_the_tacrolimus_order(app, fixture):
    cards = _call(app, fixture, "order-sign", _request(app, fixture, "order-sign"))["cards"]
    assert cards
    record = json.dumps(_request(app, fixture, "order-sign")["prefetch"]["medications"])
    tacrolimus = re.search(r'"id": "([a-z]+-mr-tac)"', record)[1]
    for card in cards:
        detail = card["detail"]
        assert "This patient takes tacrolimus" in detail
        assert "Dr Ngozi Okafor (nephrology)" in detail  # the prescriber to contact
        assert "6.1 ng/mL" in detail  # the newest trough
        assert not re.search(
            r"(?<!not )\b(hold|stop|reduce|lower|change|adjust) (the )?tacrolimus\b(?! level)", detail, re.I
        )
        for suggestion in card.get("suggestions", []):
            for action in suggestion["actions"]:
                assert tacrolimus not in json.dumps(action)
                if action["type"] == "delete":
                    ids = action["resourceId"]
                    assert all(i.endswith("-draft") for i in ([ids] if isinstance(ids, str) else ids))
                else:
                    assert action["type"] == "create"
                    assert action["resource"]["resourceType"] == "ServiceRequest"


def test_a_clarithromycin_card_names_azithromycin_and_orders_a_level(app):
    fixture = "cp-clarithromycin-draft"
    (card,) = _call(app, fixture, "order-select", _request(app, fixture, "order-select"))["cards"]
    assert card["indicator"] == "warning"
    assert "clarithromycin" in card["summary"].lower()
    assert "Azithromycin is an alternative" in card["detail"]
    assert "within 3 days" in card["detail"]
    labels = [s["label"] for s in card["suggestions"]]
    assert "Order a tacrolimus level (within 3 days)" in labels
    assert any(label.startswith("Remove the draft clarithromycin") for label in labels)


def test_a_paxlovid_card_says_choose_another_covid_treatment(app):
    fixture = "cp-paxlovid-draft"
    (card,) = _call(app, fixture, "order-sign", _request(app, fixture, "order-sign"))["cards"]
    assert card["indicator"] == "critical"
    assert "Choose another COVID-19 treatment (remove the draft)" in [s["label"] for s in card["suggestions"]]
    assert "recognised by its name" in card["detail"]


def test_an_ibuprofen_card_names_paracetamol(app):
    fixture = "cp-ibuprofen-draft"
    (card,) = _call(app, fixture, "order-sign", _request(app, fixture, "order-sign"))["cards"]
    assert "Paracetamol (acetaminophen)" in card["detail"]


def test_discovery_lists_both_services_with_small_prefetch_and_usage_requirements(app):
    services = {s["id"]: s for s in app.test_client().get("/cds-services").get_json()["services"]}
    for service_id, hook in (
        ("tacrolimus-co-prescribing-select", "order-select"),
        ("tacrolimus-co-prescribing-sign", "order-sign"),
    ):
        service = services[service_id]
        assert service["hook"] == hook
        assert "ALL medication orders" in service["usageRequirements"]
        prefetch = service["prefetch"]
        assert set(prefetch) == {"patient", "conditions", "medications", "observations"}
        assert prefetch["medications"].endswith("&status=active,on-hold")
        tacrolimus_service = services[f"tacrolimus-{hook}"]
        codes = prefetch["observations"].count("loinc.org|")
        assert codes < tacrolimus_service["prefetch"]["observations"].count("loinc.org|") / 2


def test_the_watched_classes_are_the_drug_value_sets_of_the_findings_these_services_run():
    from cds_service.rules import REGISTRY
    from cds_service.rules.registry import CO_PRESCRIBING
    from cds_service.services import WATCHED

    read = {
        name
        for i in REGISTRY.run_by(CO_PRESCRIBING)
        for name in REGISTRY[i].needs.get("MedicationRequest", ())
    }
    assert read - {"tacrolimus"} == WATCHED
    assert {"cyp3a4-strong-inhibitors", "nephrotoxins", "nirmatrelvir-ritonavir", "mycophenolate"} <= WATCHED
    assert {"P2", "P7", "N9", "N10", "N12", "N21"} <= set(REGISTRY.run_by(CO_PRESCRIBING))


def test_a_tenant_can_turn_a_finding_off_in_one_co_prescribing_service_alone(tmp_path):
    from cds_service.hook_call import answer_hook

    off = {"findings": {"N9": {"enabled": False}}}
    app = make_app(
        tmp_path,
        hold_repeats={"enabled": False},
        tenants={"clinic-b": {"services": {"tacrolimus-co-prescribing-sign": off}}},
    )
    runtime = app.extensions["cds_runtime"]()
    fixture = "cp-clarithromycin-draft"

    def shown(hook: str, tenant: str | None) -> set[str]:
        service = runtime.service(manifest()[fixture]["services"][hook])
        answer = answer_hook(_request(app, fixture, hook), service, runtime, tenant=tenant)
        return finding_ids(answer.body)

    assert shown("order-sign", "clinic-b") == set()
    assert shown("order-sign", None) == {"N9"}
    assert shown("order-select", "clinic-b") == {"N9"}  # the other service keeps it
