"""Deep nesting never costs the cards (issue 25), against a running ``cds-service serve --dev``.

A body nested beyond ``MAX_REQUEST_DEPTH``, or a ``context`` beyond ``MAX_MEMBER_DEPTH``, gets a 400 that
names the limit; a resource nested beyond ``MAX_RESOURCE_DEPTH`` is left out and named while the other
findings (a critical one among them) still come; an order nested too deep to send back whole breaks nothing.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import requests

from cds_service.fhir_json import MAX_RESOURCE_DEPTH
from cds_service.request_json import MAX_MEMBER_DEPTH, MAX_REQUEST_DEPTH
from cds_service.sandbox.requests import build_request
from tests.support import config_copy, finding_ids, start_service

pytestmark = pytest.mark.slow  # a real service (serve) for the end-to-end cases

SIGN = "/cds-services/tacrolimus-order-sign"
BASE = build_request("pregnant-ln-flare-on-mmf", hook="order-sign")
BOUND_SECONDS = 5


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    config = config_copy(tmp_path_factory.mktemp("nesting"), hold_repeats={"enabled": False})
    with start_service(config, workers=1, dev=True) as running:
        yield running.base


def _post(service: str, body: dict | bytes) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    started = time.monotonic()
    response = requests.post(
        service + SIGN, data=data, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert time.monotonic() - started < BOUND_SECONDS
    assert response.status_code < 500, response.text[:300]
    return response


def _nested_extension(levels: int) -> list:
    """``levels`` extensions each inside the one before: two JSON levels (object and array) per level."""
    inner: list = []
    for _ in range(levels):
        inner = [{"url": "http://example.org/x", "extension": inner}]
    return inner


def _deep_object(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _order(body: dict, rid: str) -> dict:
    return next(e["resource"] for e in body["prefetch"]["medications"]["entry"] if e["resource"]["id"] == rid)


def test_a_body_nested_990_deep_gets_a_400_naming_the_limit(service):
    depth = 990
    body = json.dumps(BASE)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    response = _post(service, body.encode())
    assert response.status_code == 400
    assert f"nested more than {MAX_REQUEST_DEPTH} levels deep" in response.json()["error"]


@pytest.mark.parametrize("depth", [600, 2000])
def test_a_body_that_hides_its_depth_in_strings_still_gets_a_400(service, depth):
    """Brackets in strings that pair with real ones fool the fast check on the bytes; the decoders' and the
    members' own limits then give the same 400."""
    body = copy.deepcopy(BASE)
    body["context"]["deep"] = "PLACEHOLDER"
    data = json.dumps(body).replace('"PLACEHOLDER"', '["]",' * depth + "1" + "]" * depth)
    response = _post(service, data.encode())
    assert response.status_code == 400
    assert "levels deep (the limit)" in response.json()["error"]


def test_a_context_member_nested_254_deep_gets_a_400_naming_context_and_the_limit(service):
    body = copy.deepcopy(BASE)
    body["context"]["deep"] = _deep_object(254)
    response = _post(service, body)
    assert response.status_code == 400
    assert response.json()["field"] == "context"
    assert f"nested more than {MAX_MEMBER_DEPTH} levels deep" in response.json()["error"]


def test_a_stored_order_with_126_nested_extensions_is_left_out_and_named_and_the_rest_still_speaks(service):
    body = copy.deepcopy(BASE)
    deep = copy.deepcopy(_order(body, "pregflare-mr-2"))  # a second mycophenolate order, too deep to read
    deep["id"] = "deep-mmf"
    deep["medicationCodeableConcept"]["extension"] = _nested_extension(126)
    body["prefetch"]["medications"]["entry"].append({"resource": deep})
    response = _post(service, body)
    assert response.status_code == 200
    answer = response.json()
    assert "P2" in finding_ids(answer)
    assert any(card["indicator"] == "critical" for card in answer["cards"])
    details = " ".join(card["detail"] for card in answer["cards"])
    assert f"MedicationRequest/deep-mmf: nested more than {MAX_RESOURCE_DEPTH} levels deep" in details


def test_an_order_nested_deep_where_nothing_reads_still_gets_its_critical_card(service):
    """254 levels in an element the record never reads: hashing and serialising the card must not fail."""
    body = copy.deepcopy(BASE)
    _order(body, "pregflare-mr-2")["extension"] = _nested_extension(127)
    response = _post(service, body)
    assert response.status_code == 200
    assert "P2" in finding_ids(response.json())


def test_a_condition_too_deep_to_read_is_left_out_and_named(service):
    body = copy.deepcopy(BASE)
    lupus = next(
        e["resource"]
        for e in body["prefetch"]["conditions"]["entry"]
        if e["resource"]["id"] == "pregflare-sle-1"
    )
    lupus["code"]["extension"] = _nested_extension(40)
    response = _post(service, body)
    assert response.status_code == 200
    assert "P2" in finding_ids(response.json())
    assert "Condition/pregflare-sle-1: nested more than" in json.dumps(response.json())


@pytest.mark.parametrize(
    "data, deeper",
    [
        (b"[" * 2_000_000 + b"]" * 2_000_000, True),  # 4 MB of nothing but nesting
        (b"[[]" * 1_000_000 + b"]" * 1_000_000, True),  # no long run of openers to spot at once
        (json.dumps(BASE).encode() * 1, False),
        (b'{"a":' * MAX_REQUEST_DEPTH + b"1" + b"}" * MAX_REQUEST_DEPTH, False),
        (b'{"a":' * (MAX_REQUEST_DEPTH + 1) + b"1" + b"}" * (MAX_REQUEST_DEPTH + 1), True),
    ],
    ids=["4mb-run", "4mb-staircase", "real-request", "at-limit", "over-limit"],
)
def test_the_depth_check_is_right_on_hostile_shapes(data, deeper):
    """Right on shapes built to defeat a byte scan; its time on them is a row of ``make bench-hostile``."""
    from cds_service.request_json import nested_deeper_than_bytes

    assert nested_deeper_than_bytes(data, MAX_REQUEST_DEPTH) is deeper
