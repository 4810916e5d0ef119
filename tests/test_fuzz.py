"""Fuzz: thousands of mutated hook calls, feedback posts and raw bodies: no 5xx, always JSON, never a hang.

Seeds: every request of the fixture manifest (fhir_fixtures/), the CDS Hooks requests of public corpora
(tests/data/fuzz/, see tests/data/SOURCES.md) with and without a tacrolimus draft added, and feedback bodies.
Hypothesis draws the mutations: a random walk to any node of the JSON, then one of: a value of another JSON
type, a huge or odd number, deletion, wrapping in an array, emptying, repetition (a list grown 40-fold), or a
public FHIR example resource put in its place. Some bodies are raw bytes or truncated JSON.

The volume pass runs in process (Flask test client, ≥ 5,000 requests); a smaller pass sends the same kind of
requests to a real ``cds-service serve``. Issue 12 found 35 5xx in 6,000 such requests.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from datetime import date
from functools import cache
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.hostile_servers import canned_fhir_server
from cds_service.fixtures import manifest
from cds_service.sandbox.requests import build_request
from tests.support import ROOT, config_copy, make_app, start_service, tacrolimus_draft, with_fhir_server

pytestmark = pytest.mark.slow  # hundreds of generated cases
DATA = ROOT / "tests" / "data" / "fuzz"
SERVICES = {"order-select": "tacrolimus-order-select", "order-sign": "tacrolimus-order-sign"}
NO_HANG_SECONDS = 10.0  # the answer must come before a client's 10 s timeout; speed is measured in bench
IN_PROCESS_EXAMPLES = 1000
REQUESTS_PER_EXAMPLE = 5
SERVED_EXAMPLES = 60


# --- seeds -------------------------------------------------------------------------------------------------


@cache
def seeds() -> tuple[list[dict], list[dict]]:
    """(hook requests, FHIR resources) to mutate."""
    today = date.today()
    hook_requests = []
    for index, name in enumerate(sorted(manifest())):
        hook = "order-select" if index % 2 else "order-sign"
        hook_requests.append(build_request(name, hook=hook, today=today))
    resources = []
    for path in sorted(DATA.glob("*.json")):
        document = json.loads(path.read_text())
        if "hook" in document:
            hook_requests.append(document)
            hook_requests.append(_with_tacrolimus(document))
        else:
            resources.append(document)
    return hook_requests, resources


def _with_tacrolimus(request: dict) -> dict:
    """The corpus request with a tacrolimus draft among its orders, so that the rules run on its data."""
    request = copy.deepcopy(request)
    context = request.setdefault("context", {})
    patient = context.get("patientId") if isinstance(context.get("patientId"), str) else "p"
    draft = tacrolimus_draft(patient, order_id="fuzz-tac")
    orders = context.get("draftOrders")
    if isinstance(orders, dict) and isinstance(orders.get("entry"), list):
        orders["entry"].append({"resource": draft})
    else:
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": draft}]}
    if request.get("hook") == "order-select":
        context["selections"] = [*(context.get("selections") or []), "MedicationRequest/fuzz-tac"]
    return request


def feedback_body() -> dict:
    return {
        "feedback": [
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "patient-ineligible", "system": "http://example.org"}},
                "outcomeTimestamp": "2026-11-30T10:00:00Z",
            }
        ]
    }


# --- mutations ---------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e-308, 2**63, 2**64 + 1, 10**30]),
    st.text(max_size=20),
    st.sampled_from(
        ["", "final", "Observation", "MedicationRequest", "Bundle", "2026-13-45", "../x", "{{x}}"]
    ),
    st.sampled_from(["http://[bad", "Observation?page=2", "//evil.example/x", "http://a:99999999/", "next"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
OPERATIONS = ("replace", "delete", "wrap", "empty", "repeat", "resource", "type")


def _walk(draw, document: Any) -> tuple[Any, Any] | None:
    """A random (container, key) inside ``document``; None to mutate the document as a whole.

    Biased towards the patient data (prefetch, draft orders), where a hostile EHR has the most room: a
    mutated envelope only ever meets the protocol validation.
    """
    parent, key, node = None, None, document
    for depth in range(12):
        if isinstance(node, dict):
            children = list(node)
        elif isinstance(node, list):
            children = list(range(len(node)))
        else:
            children = []
        if not children or draw(st.integers(0, 9)) == 0:
            break
        preferred = [k for k in ("prefetch", "context", "draftOrders", "entry", "resource") if k in children]
        if preferred and depth < 4 and draw(st.integers(0, 9)) < 8:
            key = draw(st.sampled_from(preferred))
        else:
            key = draw(st.sampled_from(children))
        parent, node = node, node[key]
    return None if parent is None else (parent, key)


def mutate(draw, document: Any, resources: list[dict]) -> Any:
    """``document`` with one drawn mutation applied (in place where possible; the result is returned)."""
    spot = _walk(draw, document)
    operation = draw(st.sampled_from(OPERATIONS))
    current = document if spot is None else spot[0][spot[1]]
    if operation == "replace":
        new = draw(json_values)
    elif operation == "delete" and spot is not None:
        parent, key = spot
        del parent[key]
        return document
    elif operation == "wrap":
        new = [current]
    elif operation == "empty":
        new = {} if isinstance(current, list) else [] if isinstance(current, dict) else ""
    elif operation == "repeat":
        new = current * 40 if isinstance(current, list | str) else [current] * 40
    elif operation == "resource":
        new = copy.deepcopy(draw(st.sampled_from(resources)))
    else:  # "type": the same content under another JSON type
        new = json.dumps(current) if not isinstance(current, str) else {"value": current}
    if spot is None:
        return new
    spot[0][spot[1]] = new
    return document


def draw_call(draw) -> tuple[str, str, bytes]:
    """(method, path, body) of one fuzzed request."""
    hook_requests, resources = seeds()
    kind = draw(st.sampled_from(["hook"] * 8 + ["feedback", "raw"]))
    if kind == "raw":
        seed = json.dumps(draw(st.sampled_from(hook_requests))).encode()
        body = draw(st.one_of(st.binary(max_size=300), st.integers(0, len(seed)).map(lambda n: seed[:n])))
        return "POST", "/cds-services/tacrolimus-order-sign", body
    if kind == "feedback":
        document: Any = feedback_body()
        path = "/cds-services/tacrolimus-order-sign/feedback"
    else:
        document = copy.deepcopy(draw(st.sampled_from(hook_requests)))
        hook = document.get("hook") if isinstance(document, dict) else None
        path = f"/cds-services/{SERVICES.get(hook, 'tacrolimus-order-sign')}"
    for _ in range(draw(st.integers(1, 2))):
        document = mutate(draw, document, resources)
    return "POST", path, json.dumps(document).encode()


# --- checks ------------------------------------------------------------------------------------------------


def check(status: int, content_type: str, body: bytes, elapsed: float, request: bytes) -> None:
    shown = request[:300]
    assert status < 500, f"{status} for {shown!r}: {body[:300]!r}"
    assert content_type.startswith("application/json"), f"{content_type} for {shown!r}"
    json.loads(body)
    assert elapsed < NO_HANG_SECONDS, f"{elapsed:.1f} s for {shown!r}"


FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,  # no example files in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def test_mutated_requests_in_process_never_5xx_never_hang(tmp_path):
    client = make_app(tmp_path).test_client()
    statuses: Counter[int] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=IN_PROCESS_EXAMPLES)
    @given(st.data())
    def run(data):
        for _ in range(REQUESTS_PER_EXAMPLE):
            method, path, body = draw_call(data.draw)
            started = time.monotonic()
            response = client.open(path, method=method, data=body, content_type="application/json")
            statuses[response.status_code] += 1
            check(
                response.status_code,
                response.content_type,
                response.get_data(),
                time.monotonic() - started,
                body,
            )

    started = time.monotonic()
    run()
    took = time.monotonic() - started
    print(f"fuzz in process: {sum(statuses.values())} requests in {took:.1f} s, {dict(statuses)}")
    assert sum(statuses.values()) >= 5000
    assert statuses[200] > 0 and statuses[400] > 0  # the mutations reach the rules and the validation both


def test_mutated_requests_to_a_real_server_never_5xx_never_hang(tmp_path):
    statuses: Counter[int] = Counter()
    with start_service(config_copy(tmp_path), workers=2, dev=True) as service, requests.Session() as http:

        @settings(FUZZ_SETTINGS, max_examples=SERVED_EXAMPLES)
        @given(st.data())
        def run(data):
            for _ in range(REQUESTS_PER_EXAMPLE):
                method, path, body = draw_call(data.draw)
                started = time.monotonic()
                response = http.request(
                    method,
                    service.base + path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=NO_HANG_SECONDS + 5,
                )
                statuses[response.status_code] += 1
                check(
                    response.status_code,
                    response.headers.get("Content-Type", ""),
                    response.content,
                    time.monotonic() - started,
                    body,
                )

        run()
        assert "Traceback" not in service.log_text()
    print(f"fuzz against cds-service serve: {sum(statuses.values())} requests, {dict(statuses)}")
    assert sum(statuses.values()) >= SERVED_EXAMPLES * REQUESTS_PER_EXAMPLE


FHIR_EXAMPLES = 150
FHIR_KEYS = {
    "Patient": "patient",
    "Condition": "conditions",
    "MedicationRequest": "medications",
    "Observation": "observations",
    "AllergyIntolerance": "allergies",
}


def fhir_answers(request: dict) -> dict[str, Any]:
    """What a FHIR server would answer for each search of this (fixture) request: its prefetch."""
    prefetch = request["prefetch"]
    return {kind: prefetch.get(key) for kind, key in FHIR_KEYS.items() if prefetch.get(key) is not None}


def test_mutated_fhir_server_answers_never_5xx_never_hang(tmp_path):
    """The same mutations, on what the FHIR server answers to the service's callbacks."""
    client = make_app(tmp_path, fhir={"deadline_seconds": 2.0}).test_client()
    fixture_requests = [
        r for r in seeds()[0] if isinstance(r.get("prefetch"), dict) and "patient" in r["prefetch"]
    ]
    statuses: Counter[int] = Counter()
    with canned_fhir_server({}) as (base, server):

        @settings(FUZZ_SETTINGS, max_examples=FHIR_EXAMPLES)
        @given(st.data())
        def run(data):
            request = copy.deepcopy(data.draw(st.sampled_from(fixture_requests)))
            answers: dict[str, Any] = fhir_answers(request)
            kind = data.draw(st.sampled_from(sorted(answers)))
            for _ in range(data.draw(st.integers(1, 2))):
                answers[kind] = mutate(data.draw, answers[kind], seeds()[1])
            server.answers = {k: json.dumps(v).encode() for k, v in answers.items()}
            del request["prefetch"]
            body = json.dumps(with_fhir_server(request, base, "token")).encode()
            started = time.monotonic()
            response = client.post(
                f"/cds-services/{SERVICES[request['hook']]}", data=body, content_type="application/json"
            )
            statuses[response.status_code] += 1
            check(
                response.status_code,
                response.content_type,
                response.get_data(),
                time.monotonic() - started,
                server.answers[kind],
            )

        run()
    print(f"fuzz of FHIR answers: {sum(statuses.values())} requests, {dict(statuses)}")
    assert statuses[200] > 0 and statuses[412] > 0


@pytest.mark.parametrize("path", sorted(p.name for p in DATA.glob("*.json")))
def test_every_fuzz_seed_is_json_and_listed_in_sources(path):
    json.loads((DATA / path).read_text())
    assert f"`{path}`" in (ROOT / "tests" / "data" / "SOURCES.md").read_text()
