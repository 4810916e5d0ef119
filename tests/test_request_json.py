"""A hook call's body is read with its prefetch left undecoded until a rule needs it (request_json.py).

What an EHR developer would check: every real request reads the same as a plain JSON parse; a prefetch the
service reads is refused with the words it always had; a call the service answers from its context alone is
not failed by prefetch data it never reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from cds_service.protocol import ProtocolError, validate_request
from cds_service.request_json import LazyPrefetch, parse_hook_call, parse_json
from tests.support import DATA, hook_request, make_app, small_patient

SIGN = "/cds-services/tacrolimus-order-sign"
VIEW = "/cds-services/tacrolimus-monitoring"
PID = "lazy-p1"
REQUESTS = sorted(
    p
    for folder in (DATA / "cds-hooks", DATA / "corpora" / "cds-hooks")
    for p in folder.rglob("*.json")
    if '"hookInstance"' in p.read_text(encoding="utf-8", errors="replace")
)
IBUPROFEN = {
    "resourceType": "MedicationRequest",
    "id": "ibuprofen-draft",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": f"Patient/{PID}"},
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197806"}],
        "text": "ibuprofen 600 MG Oral Tablet",
    },
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("lazy"), dev=True).test_client()


def _materialised(body: dict) -> dict:
    prefetch = body.get("prefetch")
    return {**body, "prefetch": dict(prefetch)} if isinstance(prefetch, LazyPrefetch) else body


def test_the_corpus_holds_real_requests():
    assert len(REQUESTS) >= 20


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name[-70:])
def test_every_real_request_reads_as_a_plain_json_parse(path: Path):
    """The same value; or, for a file that is not JSON (a curl line first), the same error, same words."""
    data = path.read_bytes()
    try:
        plain = parse_json(data)
    except ProtocolError as error:
        with pytest.raises(ProtocolError) as raised:
            parse_hook_call(data)
        assert raised.value.to_json() == error.to_json()
        return
    body = parse_hook_call(data)
    read = {"hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "extension", "prefetch"}
    expected = {k: v for k, v in plain.items() if k in read and not (k == "prefetch" and v is None)}
    assert _materialised(body) == expected  # members no one reads are not kept; a null prefetch is none


def _error_of(client, body: bytes, path: str = SIGN) -> tuple[int, dict]:
    response = client.post(path, data=body, content_type="application/json")
    return response.status_code, response.get_json()


def _eager_error(body: bytes, hook: str = "order-sign") -> dict:
    """The error the whole-body check (a plain parse, then the request schema) gives the same bytes."""
    with pytest.raises(ProtocolError) as raised:
        validate_request(json.loads(body), hook)
    return raised.value.to_json()


@pytest.mark.parametrize(
    "draft, key, value, field",
    [  # a value the service reads (tacrolimus), and one it never reads that is not even an object
        (None, "patient", {"id": PID, "gender": "female"}, "prefetch.patient.resourceType"),
        (IBUPROFEN, "com.example.user", "123", 'prefetch["com.example.user"]'),
    ],
)
def test_a_bad_prefetch_value_gets_the_words_of_the_whole_body_check(client, draft, key, value, field):
    request = hook_request(PID, small_patient(PID), draft=draft)
    request["prefetch"][key] = value
    data = json.dumps(request).encode()
    status, answer = _error_of(client, data)
    assert status == 400
    assert answer == _eager_error(data)
    assert answer["field"] == field


def test_bad_utf8_inside_the_prefetch_is_the_same_400_as_before(client):
    request = hook_request(PID, small_patient(PID))
    request["prefetch"]["observations"]["entry"][0]["resource"]["id"] = "MARK"
    data = json.dumps(request).encode().replace(b'"MARK"', b'"\xff\xfe"')
    status, answer = _error_of(client, data)
    assert status == 400
    with pytest.raises(orjson.JSONDecodeError) as plain:
        orjson.loads(data)
    assert answer == {"error": f"body is not valid JSON: {plain.value}", "field": None}


@pytest.mark.parametrize(
    "data, words",
    [
        (b'{"hook": "order-sign", "prefetch": {"a": [1, 2,}}', "body is not valid JSON"),
        (b'{"hook": "order-sign", "context": {"x": NaN}}', "body is not valid JSON"),
        (b'[{"hook": "order-sign"}]', "request body must be a JSON object"),
        (b'{"hook": "order-sign", "hookInstance": "x", "context": {}, "prefetch": [1]}', "prefetch must be"),
    ],
)
def test_a_body_the_fast_reader_cannot_take_gets_the_error_it_always_had(client, data, words):
    status, answer = _error_of(client, data)
    assert status == 400
    assert words in answer["error"]


def test_a_non_tacrolimus_order_is_answered_from_its_context_without_reading_the_prefetch(client):
    """Its observations carry a resource without a resourceType, which the schema refuses when read: the
    service never reads them for an ibuprofen order, so the answer is the empty one, not a 400."""
    request = hook_request(PID, small_patient(PID), draft=IBUPROFEN)
    request["prefetch"]["observations"] = {"entry": "not even a Bundle"}
    status, answer = _error_of(client, json.dumps(request).encode())
    assert (status, answer) == (200, {"cards": []})
    request["context"]["draftOrders"]["entry"][0]["resource"] = hook_request(PID, None)["context"][
        "draftOrders"
    ]["entry"][0]["resource"]  # the same call for a tacrolimus order reads them, and refuses them
    status, answer = _error_of(client, json.dumps(request).encode())
    assert status == 400
    assert answer["field"] == "prefetch.observations.resourceType"


def test_patient_view_reads_the_rest_of_the_prefetch_only_for_a_patient_on_tacrolimus(client):
    request = hook_request(PID, small_patient(PID), hook="patient-view")
    del request["context"]["draftOrders"]
    request["prefetch"]["observations"] = {"entry": "not even a Bundle"}
    status, answer = _error_of(client, json.dumps(request).encode(), VIEW)
    assert (status, answer) == (200, {"cards": []})  # no active tacrolimus order: nothing else is read
