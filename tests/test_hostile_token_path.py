"""The EHR's token goes only under the FHIR base the caller named (issue 25), against a running serve.

A FHIR server on loopback records every path asked of it; the service, given that server's ``/fhir`` base
and a bearer token, must never ask for a path outside ``/fhir/``: not for a reference the record names
(``Medication/../../internal/secret?steal=1``), not for a search's ``next`` link. IPv6 literals that carry an
IPv4 address are judged by that address.
"""

from __future__ import annotations

import copy
import json

import pytest
import requests

from bench.hostile_servers import canned_fhir_server, search_answers
from cds_service.fhir_policy import FhirPolicy
from tests.support import config_copy, hook_request, searchset, small_patient, start_service, with_fhir_server

pytestmark = pytest.mark.slow  # a real service (serve) for the end-to-end cases

PID = "token-p1"
SIGN = "/cds-services/tacrolimus-order-sign"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MYCOPHENOLATE = {
    "resourceType": "Medication",
    "id": "mmf",
    "code": {"coding": [{"system": RXNORM, "code": "68149"}]},
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with start_service(config_copy(tmp_path_factory.mktemp("token")), workers=1, dev=True) as running:
        yield running.base


def _call(service: str, body: dict) -> requests.Response:
    response = requests.post(service + SIGN, json=body, timeout=30)
    assert response.status_code < 500, response.text[:300]
    return response


def _outside_base(paths: list[str]) -> list[str]:
    return [p for p in paths if not p.startswith("/fhir/")]


def test_a_medication_reference_with_dot_segments_is_never_fetched(service):
    patient = small_patient(PID)
    order = patient[2]
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "Medication/../../internal/secret?steal=1"}
    other = copy.deepcopy(order)  # a well-formed reference to the same server is still read
    other["id"] = f"{PID}-mmf-2"
    other["medicationReference"] = {"reference": "Medication/mmf"}
    body = hook_request(PID, [*patient, other])
    with canned_fhir_server({"Medication/mmf": MYCOPHENOLATE}) as (base, server):
        response = _call(service, with_fhir_server(body, base, "secret-token"))
    assert response.status_code == 200
    assert _outside_base(server.paths) == []
    assert "/fhir/Medication/mmf" in server.paths  # the control: references under the base are read


@pytest.mark.parametrize(
    "next_url",
    [
        "{origin}/internal/page2?steal=1",
        "{origin}/fhir/../internal/page2",
        "{origin}/fhir/%2e%2e/internal/page2",
        "/internal/page2",
    ],
    ids=["other-path", "dot-segments", "encoded-dots", "absolute-path"],
)
def test_a_next_link_outside_the_base_path_is_not_followed(service, next_url):
    first_page = searchset([])
    answers = search_answers(small_patient(PID), first_page)
    with canned_fhir_server(answers) as (base, server):
        origin = base.removesuffix("/fhir")
        first_page["link"] = [{"relation": "next", "url": next_url.format(origin=origin)}]
        server.answers["Observation"] = json.dumps(first_page).encode()
        response = _call(service, with_fhir_server(hook_request(PID, None), base, "secret-token"))
    assert any(p.startswith("/fhir/Observation") for p in server.paths)
    assert _outside_base(server.paths) == []
    assert "base path; not followed" in response.text


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::7f00:1]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:7f00:1::]",
        "[2002:a00:1::1]",
        "[::127.0.0.1]",
        "[::10.0.0.1]",
    ],
)
def test_ipv6_literals_that_embed_a_private_ipv4_are_refused_like_it(host):
    policy = FhirPolicy(dev=True)
    assert policy.refusal(f"https://{host}/fhir", None) is not None


def test_ipv6_literals_that_embed_a_public_ipv4_are_judged_public():
    policy = FhirPolicy(dev=True, resolver=lambda host, port: [host])
    assert policy.refusal("https://[64:ff9b::808:808]/fhir", None) is None
