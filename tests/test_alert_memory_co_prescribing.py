"""Alert memory across the co-prescribing services and patient-view (rules.md v3 § The other prescriber).

A finding a co-prescribing service showed for a patient is not shown again by ``tacrolimus-monitoring`` for
the same patient, finding and user within its 24 hours; the clinician who manages the tacrolimus (another
user) still sees it; a critical finding is never held back across services. order-select → order-sign works
as for the tacrolimus services (info held back; these findings are warnings and criticals, so shown again).
"""

from __future__ import annotations

import copy

from cds_service.fixtures import load_bundle, manifest
from cds_service.sandbox.requests import build_request, build_request_from_bundle
from tests.support import finding_ids, make_app

SELECT = "/cds-services/tacrolimus-co-prescribing-select"
SIGN = "/cds-services/tacrolimus-co-prescribing-sign"
VIEW = "/cds-services/tacrolimus-monitoring"
URGENT_CARE = "Practitioner/urgent-care-prescriber"
NEPHROLOGIST = "Practitioner/nephro-okafor"


def post(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _templates(client, service_id: str) -> dict:
    services = client.get("/cds-services").get_json()["services"]
    return next(s["prefetch"] for s in services if s["id"] == service_id)


def signed_and_viewed(client, fixture: str, user: str) -> dict:
    """patient-view of the patient, opened by ``user`` once the other prescriber's draft is signed."""
    bundle = copy.deepcopy(load_bundle(fixture))
    draft = next(r for e in bundle["entry"] if (r := e["resource"])["id"].endswith("-draft"))
    draft["status"] = "active"
    body = build_request_from_bundle(
        bundle, [], hook="patient-view", prefetch_templates=_templates(client, "tacrolimus-monitoring")
    )
    body["context"]["userId"] = user
    return post(client, VIEW, body)


def co_prescribing(client, fixture: str, hook: str, user: str = URGENT_CARE) -> dict:
    body = build_request(
        fixture, hook=hook, prefetch_templates=_templates(client, manifest()[fixture]["services"][hook])
    )
    body["context"]["userId"] = user
    return post(client, SELECT if hook == "order-select" else SIGN, body)


def test_a_warning_shown_at_order_select_is_shown_again_at_order_sign(tmp_path):
    client = make_app(tmp_path).test_client()
    assert finding_ids(co_prescribing(client, "cp-clarithromycin-draft", "order-select")) == {"N9"}
    assert finding_ids(co_prescribing(client, "cp-clarithromycin-draft", "order-sign")) == {"N9"}


def test_patient_view_holds_back_for_the_same_user_what_a_co_prescribing_service_showed(tmp_path):
    client = make_app(tmp_path).test_client()
    assert finding_ids(co_prescribing(client, "cp-clarithromycin-draft", "order-sign")) == {"N9"}
    assert finding_ids(signed_and_viewed(client, "cp-clarithromycin-draft", URGENT_CARE)) == set()


def test_the_clinician_who_manages_the_tacrolimus_still_sees_it(tmp_path):
    client = make_app(tmp_path).test_client()
    assert finding_ids(co_prescribing(client, "cp-clarithromycin-draft", "order-sign")) == {"N9"}
    assert finding_ids(signed_and_viewed(client, "cp-clarithromycin-draft", NEPHROLOGIST)) == {"N9"}


def test_patient_view_without_a_co_prescribing_card_shows_the_finding_to_that_user(tmp_path):
    client = make_app(tmp_path).test_client()
    assert finding_ids(signed_and_viewed(client, "cp-clarithromycin-draft", URGENT_CARE)) == {"N9"}


def test_a_critical_finding_is_never_held_back_across_services(tmp_path):
    client = make_app(tmp_path).test_client()
    assert finding_ids(co_prescribing(client, "cp-paxlovid-draft", "order-sign")) == {"N21"}
    assert finding_ids(signed_and_viewed(client, "cp-paxlovid-draft", URGENT_CARE)) == {"N21"}


def test_the_memory_is_kept_per_patient(tmp_path):
    client = make_app(tmp_path).test_client()
    assert finding_ids(co_prescribing(client, "cp-rifampin-draft", "order-sign")) == {"N9"}
    assert finding_ids(signed_and_viewed(client, "cp-clarithromycin-draft", URGENT_CARE)) == {"N9"}
