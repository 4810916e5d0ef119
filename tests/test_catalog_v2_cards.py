"""Rule catalog version 2 as a clinician sees it on the cards, through the HTTP service.

The three patients the catalog's review was about (a delivered mother with an old "pregnant" answer, a
20-day-old positive hCG with mycophenolate, a creatinine-only eGFR), and the concrete suggestions: delete a
draft, stop a stored order with a reason, order HBsAg.
"""

from __future__ import annotations

import pytest

from cds_service.sandbox.requests import build_request
from tests.support import FINDINGS_KEY, finding_ids, make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("v2"))


def cards(app, fixture: str, hook: str = "order-sign") -> list[dict]:
    body = build_request(fixture, hook=hook)
    response = app.test_client().post(f"/cds-services/tacrolimus-{hook}", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"]


def card(found: list[dict], finding: str) -> dict:
    return next(c for c in found if finding in {i["id"] for i in c["extension"][FINDINGS_KEY]})


def actions(found: list[dict]) -> list[dict]:
    return [a for c in found for s in c.get("suggestions", ()) for a in s["actions"]]


def test_a_delivered_mother_with_an_old_pregnant_answer_gets_no_teratogen_alarm(app):
    found = cards(app, "delivered-old-pregnant-answer")
    assert finding_ids({"cards": found}) == {"P3", "N11"}
    assert all(c["indicator"] == "info" for c in found)
    detail = card(found, "P3")["detail"]
    assert "negative hCG" in detail
    assert "A recorded pregnancy has ended: pregnancy status 'pregnant' on" in detail
    assert "was ended by Spontaneous vaginal delivery, single live birth on" in detail


def test_a_20_day_old_positive_hcg_with_mycophenolate_is_critical_and_says_nothing_confirms_it(app):
    found = cards(app, "hcg-20-days-on-mmf")
    pregnancy = card(found, "P2")
    assert pregnancy["indicator"] == "critical"
    assert "positive hCG 850 IU/L on" in pregnancy["detail"]
    assert "20 days ago, and no later result confirms the pregnancy" in pregnancy["detail"]
    stop = next(a for a in actions([pregnancy]) if a["type"] == "update")
    assert stop["resource"]["status"] == "stopped"
    assert stop["resource"]["statusReason"]["text"].startswith("Not compatible with pregnancy")


def test_a_creatinine_only_record_gets_a_calculated_egfr(app):
    monitoring = card(cards(app, "n13-creatinine-only-egfr"), "N13")
    assert "calculated (CKD-EPI 2021)" in monitoring["detail"]
    assert "30 mL/min/1.73 m² calculated (CKD-EPI 2021) from creatinine 2 mg/dL" in monitoring["detail"]
    assert any("Inker" in link["label"] for link in monitoring["links"])


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_drafts_are_deleted_by_resource_id_and_stored_orders_are_not_touched(app, hook):
    deleted = [a for a in actions(cards(app, "n10-nsaid-draft", hook)) if a["type"] == "delete"]
    assert [a["resourceId"] for a in deleted] == ["MedicationRequest/n10draft-naproxen-draft"]
    assert actions(cards(app, "n10-nsaid", hook)) == []  # a stored NSAID: no suggestion
    duplicate = [a for a in actions(cards(app, "n12-second-tacrolimus-draft", hook)) if a["type"] == "delete"]
    assert [a["resourceId"] for a in duplicate] == ["MedicationRequest/n12dup-tac-draft-2"]


def test_breastfeeding_on_mycophenolate_offers_to_stop_it_with_the_reason(app):
    stop = next(a for a in actions(cards(app, "p7-breastfeeding-on-mmf")) if a["type"] == "update")
    assert stop["resource"]["id"] == "p7bf-mr-1" and stop["resource"]["status"] == "stopped"
    assert "breastfeeding" in stop["resource"]["statusReason"]["text"]


def test_a_new_start_without_hepatitis_b_screening_is_offered_an_hbsag(app):
    created = [a for a in actions(cards(app, "n15-no-hbsag-new-start")) if a["type"] == "create"]
    codes = [c["code"] for a in created for c in a["resource"]["code"]["coding"]]
    assert "5196-1" in codes
