"""The Rust fast path of the wire-format checks never accepts what the Python validator refuses.

``protocol`` lets jsonschema-rs accept a valid body on its own; only a body it rejects goes to jsonschema,
which words the error. So the one property that matters: whenever the fast validator says valid, jsonschema
finds no error. Checked on every leaf of real requests and feedback, replaced by values of other types and by
the strings where the two regex and format engines differ most.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from cds_service import protocol
from cds_service.sandbox.requests import build_request

ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    "",
    "x",
    "a\n",  # "$" in Python's re matches before a final newline; in Rust's regex it does not
    "Patient/abc\n",
    "MedicationRequest/" + "a" * 65,
    "2021-12-11T10:05:31",  # no time zone
    "2021-12-11T10:05:31Z",
    "2021-02-30T10:05:31Z",
    "http://",
    "https://fhir.example.org/r4",
    "urn:uuid:x",
    "bearer",
    "Bearer",
    "ümlaut",
    [],
    [1],
    {},
    {"resourceType": "Bundle"},
]


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:3]):
            yield from _paths(inner, (*path, index))


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copied = copy.deepcopy(value)
    holder = copied
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = new
    return copied


def _mutations(body: dict) -> Iterator[Any]:
    for path in _paths(body):
        if len(path) > 6 or (path and path[0] == "prefetch" and len(path) > 2):
            continue  # prefetch resources are FHIR's business (fhir.resources), not the wire schema's
        for new in ODD_VALUES:
            yield _replace(body, path, new)
        if path:
            parent = copy.deepcopy(body)
            holder = parent
            for step in path[:-1]:
                holder = holder[step]
            if isinstance(holder, dict):
                del holder[path[-1]]
                yield parent


def _agree(checker: Any, body: Any) -> None:
    if checker.fast.is_valid(body):
        assert list(checker.full.iter_errors(body)) == [], f"fast path accepted: {body!r:.300}"


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_fast_path_accepts_nothing_the_python_validator_refuses_in_requests(hook):
    body = build_request("n2-creatinine-rise-25pct", hook=hook)
    body["fhirServer"] = "https://fhir.example.org/r4"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    checked = 0
    for mutated in _mutations(body):
        _agree(protocol._REQUEST, mutated)
        if isinstance(mutated, dict) and isinstance(mutated.get("context"), dict):
            _agree(protocol._CONTEXT_BY_HOOK[hook], mutated["context"])
        checked += 1
    assert checked > 500


def test_fast_path_accepts_nothing_the_python_validator_refuses_in_feedback():
    item = {
        "card": "5e1a8b9c-1111-4c2a-9d55-6a3c3e2b7f10",
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "other", "system": "http://example.org/reasons"},
            "userComment": "monitored elsewhere",
        },
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    for mutated in _mutations({"feedback": [item]}):
        _agree(protocol._FEEDBACK, mutated)
    for mutated in _mutations(item):
        _agree(protocol._FEEDBACK_ITEM, mutated)
