"""Real data nobody here wrote: every corpus request and FHIR example is served without a 5xx."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.support import DATA, hook_request, make_app, small_patient, tacrolimus_draft

CORPORA = DATA / "corpora"
KEY_OF_TYPE = {
    "Patient": "patient",
    "Condition": "conditions",
    "MedicationRequest": "medications",
    "Medication": "medications",
    "AllergyIntolerance": "allergies",
}


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.json"))


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # any-indication: pregnancy and monitoring rules read every lab for everyone, so parsing is exercised.
    app = make_app(
        tmp_path_factory.mktemp("corpora"),
        scope="any-indication",
        fhir={"deadline_seconds": 0.5, "page_cap": 3, "max_response_bytes": 5_000_000},
    )
    return app.test_client()


REQUEST_FILES = [p for p in _json_files(CORPORA / "cds-hooks") if _load(p) is not None]  # some are fragments


@pytest.mark.parametrize("path", REQUEST_FILES, ids=lambda p: p.name)
def test_every_corpus_request_is_served_without_a_5xx(client, path):
    body = _load(path)
    hook = body.get("hook") if isinstance(body, dict) else None
    service = "tacrolimus-order-sign" if hook == "order-sign" else "tacrolimus-order-select"
    assert client.post(f"/cds-services/{service}", json=body).status_code < 500

    # The same request ordering tacrolimus, so its real prefetch data goes through the whole road.
    context = body.get("context") if isinstance(body, dict) else None
    draft_orders = context.get("draftOrders") if isinstance(context, dict) else None
    if isinstance(draft_orders, dict) and isinstance(draft_orders.get("entry"), list):
        body = copy.deepcopy(body)
        patient_id = context.get("patientId") if isinstance(context.get("patientId"), str) else "x"
        body["context"]["draftOrders"]["entry"].append(
            {"resource": tacrolimus_draft(patient_id, "corpus-tac")}
        )
        if isinstance(body["context"].get("selections"), list):
            body["context"]["selections"].append("MedicationRequest/corpus-tac")
        assert client.post(f"/cds-services/{service}", json=body).status_code < 500


def _resources(document) -> list[dict]:
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        return [e["resource"] for e in document.get("entry") or () if isinstance(e, dict) and "resource" in e]
    return [document] if isinstance(document, dict) else []


FHIR_FILES = _json_files(CORPORA / "fhir-r4-official-examples") + _json_files(CORPORA / "synthea-r4")


@pytest.mark.parametrize("path", FHIR_FILES, ids=lambda p: p.name)
def test_every_fhir_example_in_a_prefetch_is_served_without_a_5xx(client, path):
    base = small_patient("corpus-p")
    body = hook_request("corpus-p", base)
    for resource in _resources(_load(path)):
        key = KEY_OF_TYPE.get(resource.get("resourceType"), "observations")
        if key == "patient":
            body["prefetch"]["patient"] = resource
            body["context"]["patientId"] = str(resource.get("id", "corpus-p"))
        else:
            body["prefetch"][key]["entry"].append({"resource": resource})
    response = client.post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code < 500
    assert response.status_code in (200, 400, 412), response.get_json()
