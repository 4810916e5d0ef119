"""The /sandbox page's API (dev mode): staged changes to the record, renewals, the favicon.

The page's own clicks are tested in Chromium (test_sandbox_browser.py); these check what the API builds
from them, against the real service in-process.
"""

from __future__ import annotations

import json

import pytest

from cds_service.fixtures import FIXTURES_DIR, manifest
from tests.support import finding_ids, make_app

PREGNANT = "pregnant-ln-flare-on-mmf"  # pregnant with mycophenolate active: P2, the teratogen card
DUPLICATE = "tacrolimus-active-duplicate"  # an Envarsus draft beside an active immediate-release order
(SWITCH_FINDING,) = manifest()[DUPLICATE]["expected"]  # N17: a formulation switch or mix
DUPLICATE_FINDING = "N12"  # the same product ordered again beside the active order


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("sandbox-web"), dev=True).test_client()


def fixture(client, name: str) -> dict:
    answer = client.get(f"/sandbox/api/fixtures/{name}")
    assert answer.status_code == 200
    return answer.get_json()


def fire(client, name: str, drafts: list[dict], staged=None, via="prefetch", hook="order-select"):
    """What the page does on "Fire": build the request, post it to the real service."""
    built = client.post(
        "/sandbox/api/request",
        json={"fixture": name, "hook": hook, "via": via, "drafts": drafts, "staged": staged or []},
    )
    assert built.status_code == 200, built.get_json()
    request = built.get_json()
    answer = client.post(request["service"]["url"], json=request["request"])
    return request["request"], answer


def stop_suggestion(cards: dict) -> dict:
    """The update action of the teratogen card's "Stop mycophenolate ..." suggestion."""
    (card,) = [c for c in cards["cards"] if "P2" in finding_ids({"cards": [c]})]
    (suggestion,) = [s for s in card["suggestions"] if "mycophenolate" in s["label"].lower()]
    (action,) = suggestion["actions"]
    assert action["type"] == "update" and action["resource"]["status"] == "stopped"
    return action


def test_after_stop_mycophenolate_the_next_answer_has_no_teratogen_card(client):
    drafts = [d["resource"] for d in fixture(client, PREGNANT)["drafts"]]
    _, first = fire(client, PREGNANT, drafts)
    assert "P2" in finding_ids(first.get_json())
    action = stop_suggestion(first.get_json())
    staged = [
        {
            "type": "update",
            "ref": f"MedicationRequest/{action['resource']['id']}",
            "resource": action["resource"],
        }
    ]

    sent, again = fire(client, PREGNANT, drafts, staged=staged)
    assert again.status_code == 200
    assert "P2" not in finding_ids(again.get_json())
    assert "P1" in finding_ids(again.get_json())  # still pregnant: the pregnancy card stays, without P2
    medications = {e["resource"]["id"]: e["resource"] for e in sent["prefetch"]["medications"]["entry"]}
    assert medications[action["resource"]["id"]]["status"] == "stopped"


def test_with_the_fhir_path_only_what_the_staged_changes_touch_is_prefetched(client):
    drafts = [d["resource"] for d in fixture(client, PREGNANT)["drafts"]]
    _, first = fire(client, PREGNANT, drafts)
    action = stop_suggestion(first.get_json())
    staged = [
        {
            "type": "update",
            "ref": f"MedicationRequest/{action['resource']['id']}",
            "resource": action["resource"],
        }
    ]
    built = client.post(
        "/sandbox/api/request",
        json={"fixture": PREGNANT, "hook": "order-sign", "via": "fhir", "drafts": drafts, "staged": staged},
    ).get_json()["request"]
    assert built["fhirServer"].endswith("/sandbox/fhir")
    assert list(built["prefetch"]) == ["medications"]  # the rest is read from /sandbox/fhir


@pytest.mark.parametrize(
    "staged, message",
    [
        ([{"type": "update", "ref": "MedicationRequest/nope", "resource": {}}], "stored resources only"),
        ([{"type": "create", "ref": "MedicationRequest/pregflare-mr-2"}], "update or delete"),
        (
            [
                {
                    "type": "update",
                    "ref": "MedicationRequest/pregflare-mr-2",
                    "resource": {"resourceType": "X"},
                }
            ],
            "needs the resource",
        ),
    ],
)
def test_a_wrong_staged_change_is_refused_with_the_reason(client, staged, message):
    drafts = [d["resource"] for d in fixture(client, PREGNANT)["drafts"]]
    answer = client.post(
        "/sandbox/api/request",
        json={"fixture": PREGNANT, "hook": "order-select", "drafts": drafts, "staged": staged},
    )
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]


def test_a_draft_marked_as_renewal_of_the_active_order_is_no_duplicate(client):
    """Renewing is continuing therapy: the same product renewed is no duplicate, another formulation still a
    switch (N17, rules.md v3), whether or not the draft names the order it renews."""
    loaded = fixture(client, DUPLICATE)
    drafts = [d["resource"] for d in loaded["drafts"]]
    active = [
        o for o in loaded["stored_orders"] if o["status"] == "active" and "tacrolimus" in o["label"].lower()
    ]
    assert active, loaded["stored_orders"]  # the page offers the stored tacrolimus order to renew
    _, switch = fire(client, DUPLICATE, drafts)
    assert finding_ids(switch.get_json()) == {SWITCH_FINDING}

    stored = _stored(active[0]["ref"])
    same_product = [{**drafts[0], "medicationCodeableConcept": stored["medicationCodeableConcept"]}]
    _, duplicate = fire(client, DUPLICATE, same_product)
    assert DUPLICATE_FINDING in finding_ids(duplicate.get_json())

    renewing = [{**same_product[0], "priorPrescription": {"reference": active[0]["ref"]}}]
    sent, renewal = fire(client, DUPLICATE, renewing)
    assert sent["context"]["draftOrders"]["entry"][0]["resource"]["priorPrescription"] == {
        "reference": active[0]["ref"]
    }
    assert not {DUPLICATE_FINDING, SWITCH_FINDING} & finding_ids(renewal.get_json())

    switching = [{**drafts[0], "priorPrescription": {"reference": active[0]["ref"]}}]
    _, renewed_switch = fire(client, DUPLICATE, switching)
    assert finding_ids(renewed_switch.get_json()) == {SWITCH_FINDING}


def _stored(reference: str) -> dict:
    bundle = json.loads((FIXTURES_DIR / f"{DUPLICATE}.json").read_text())
    return next(
        e["resource"]
        for e in bundle["entry"]
        if f"{e['resource']['resourceType']}/{e['resource']['id']}" == reference
    )


def test_the_page_has_a_favicon(client):
    page = client.get("/sandbox").get_data(as_text=True)
    assert 'rel="icon"' in page
    for path in ("/favicon.ico", "/sandbox/static/favicon.svg"):
        icon = client.get(path)
        assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
        assert icon.get_data(as_text=True).startswith("<svg")


# --- the co-prescribing picker (issue 24) ------------------------------------------------------------------


def co_draft(client, key: str) -> dict:
    """The draft the page's co-prescribing picker makes for ``key`` (the same fields as sandbox.js)."""
    from cds_service.sandbox.web import CO_DRUGS, ON_TACROLIMUS

    _, system, code, display = next(d for d in CO_DRUGS if d[0] == key)
    patient = fixture(client, ON_TACROLIMUS)["patient"]["id"]
    concept = {"coding": [{"system": system, "code": code, "display": display}], "text": display}
    return {
        "resourceType": "MedicationRequest",
        "id": f"sandbox-co-{key}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept if code else {"text": display},
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": "Practitioner/sandbox-other-prescriber"},
    }


@pytest.mark.parametrize(
    "key, expected",
    [
        ("clarithromycin", {"N9"}),
        ("paxlovid", {"N21"}),
        ("ibuprofen", {"N10"}),
        ("cyclosporine", {"N12"}),
        ("mmr", {"N19"}),
        ("acetaminophen", set()),
    ],
)
@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_the_co_prescribing_picker_fires_the_co_prescribing_services(client, key, expected, hook):
    from cds_service.sandbox.web import ON_TACROLIMUS

    service = f"tacrolimus-co-prescribing-{hook.removeprefix('order-')}"
    built = client.post(
        "/sandbox/api/request",
        json={"fixture": ON_TACROLIMUS, "hook": hook, "drafts": [co_draft(client, key)], "service": service},
    )
    assert built.status_code == 200, built.get_json()
    request = built.get_json()
    assert request["service"] == {"id": service, "url": f"/cds-services/{service}"}
    answer = client.post(request["service"]["url"], json=request["request"])
    assert answer.status_code == 200
    assert finding_ids(answer.get_json()) == expected


def test_the_page_offers_the_picker_and_both_co_prescribing_services(client):
    page = client.get("/sandbox").get_data(as_text=True)
    for words in ("clarithromycin", "Paxlovid", "Ibuprofen", "MMR", "spironolactone", "cyclosporine"):
        assert words in page
    assert 'data-service="tacrolimus-co-prescribing-select"' in page
    assert 'data-service="tacrolimus-co-prescribing-sign"' in page


def test_an_unknown_service_for_the_hook_is_a_400_naming_it(client):
    from cds_service.sandbox.web import ON_TACROLIMUS

    built = client.post(
        "/sandbox/api/request",
        json={
            "fixture": ON_TACROLIMUS,
            "hook": "order-sign",
            "drafts": [co_draft(client, "clarithromycin")],
            "service": "tacrolimus-co-prescribing-select",
        },
    )
    assert built.status_code == 400
    assert "tacrolimus-co-prescribing-select" in built.get_json()["error"]


def test_a_co_prescribing_fixture_fired_from_the_hook_buttons_goes_to_its_own_service(client):
    drafts = [d["resource"] for d in fixture(client, "cp-clarithromycin-draft")["drafts"]]
    _, answer = fire(client, "cp-clarithromycin-draft", drafts, hook="order-sign")
    assert answer.status_code == 200
    assert finding_ids(answer.get_json()) == {"N9"}
