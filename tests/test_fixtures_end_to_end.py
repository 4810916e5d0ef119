"""Every fixture patient through the HTTP endpoint, by prefetch and by FHIR callback, against its manifest."""

from __future__ import annotations

import pytest

from cds_service.fixtures import manifest
from cds_service.protocol import check_response
from cds_service.rules import FINDING_IDS
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from tests.support import finding_ids, make_app

FIXTURES = sorted(name for name, entry in manifest().items() if "service" not in entry)
"""The order-hook fixtures; those of another service (patient-view) are tested in test_patient_view.py."""
TOKEN = "fixture-token-1"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # Each call is judged on its own against the manifest: order-sign must not hold back what order-select of
    # the same fixture showed a moment before (that is tested in test_repeat_alerts.py).
    return make_app(tmp_path_factory.mktemp("fixtures"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base():
    with serve_in_thread(FhirStore.from_fixtures(), require_token=TOKEN) as base:
        yield base


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_findings_match_the_manifest(app, fhir_base, fixture, hook, via):
    templates = app.extensions["cds_runtime"]().prefetch_templates
    body = build_request(
        fixture,
        hook=hook,
        via=via,
        fhir_base=fhir_base if via == "fhir" else None,
        prefetch_templates=templates,
        token=TOKEN,
    )
    response = app.test_client().post(f"/cds-services/tacrolimus-{hook}", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    assert finding_ids(cards) == set(manifest()[fixture]["expected"])


def test_every_catalog_finding_fires_on_some_fixture():
    """N20 ships off (pneumocystis_check): its fixtures fire it with the setting on, in
    test_catalog_v3_n16_n20.py."""
    fired = {finding for entry in manifest().values() for finding in entry["expected"]}
    catalog = set(FINDING_IDS) - {"N20"}
    assert fired == catalog
