"""An evaluation is reused only for the same content within the minute (evaluations.py).

What a user would check: the same call sent again gets the same answer, and the log says the evaluation was
reused; a change anywhere in the record gets the answer a fresh service gives; a call that read from the FHIR
server is never reused; the alert memory still holds findings back on a reused evaluation.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.evaluations import SECONDS, Evaluated, EvaluationCache
from cds_service.record import PatientRecord
from cds_service.rules.model import Evaluation
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from tests.support import finding_ids, make_app

SELECT = "/cds-services/tacrolimus-order-select"
SIGN = "/cds-services/tacrolimus-order-sign"
PREECLAMPSIA = "p5-pregnant-preeclampsia"  # P1 info, P5 warning, N11 info
TOKEN = "evaluations-token"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "hook call":
            self.lines.append(record)


@contextmanager
def hook_call_lines() -> Iterator[list[logging.LogRecord]]:
    logger, handler = logging.getLogger("cds_service.api"), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def post(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def client(tmp_path):
    return make_app(tmp_path, hold_repeats={"enabled": False}).test_client()


def test_the_same_call_again_gets_the_same_answer_and_the_log_says_it_was_reused(client):
    body = build_request(PREECLAMPSIA, hook="order-sign")
    with hook_call_lines() as lines:
        answers = [post(client, SIGN, body) for _ in range(3)]
    assert finding_ids(answers[0]) == {"P1", "P5", "N11"}
    assert answers[1] == answers[0] and answers[2] == answers[0]
    # admitted on its second sighting, reused from the third
    assert [getattr(line, "evaluation_reused", False) for line in lines] == [False, False, True]


def test_a_change_in_the_record_within_the_minute_gets_the_answer_a_fresh_service_gives(client, tmp_path):
    body = build_request(PREECLAMPSIA, hook="order-sign")
    for _ in range(3):
        post(client, SIGN, body)
    changed = copy.deepcopy(body)
    changed["prefetch"]["conditions"]["entry"] = []  # the preeclampsia (and lupus) Conditions are gone
    fresh = make_app(tmp_path / "fresh", hold_repeats={"enabled": False}).test_client()
    expected = post(fresh, SIGN, changed)
    assert finding_ids(expected) != {"P1", "P5", "N11"}  # the change matters to the rules
    with hook_call_lines() as lines:
        assert post(client, SIGN, changed) == expected
    assert not getattr(lines[0], "evaluation_reused", False)


def test_a_call_that_read_from_the_fhir_server_is_never_reused(client):
    with serve_in_thread(FhirStore.from_fixtures(), require_token=TOKEN) as base:
        body = build_request(PREECLAMPSIA, hook="order-sign", via="fhir", fhir_base=base)
        body["fhirAuthorization"]["access_token"] = TOKEN
        with hook_call_lines() as lines:
            answers = [post(client, SIGN, body) for _ in range(3)]
    assert finding_ids(answers[2]) == {"P1", "P5", "N11"}
    assert all(line.fetched for line in lines)
    assert not any(getattr(line, "evaluation_reused", False) for line in lines)


def test_the_alert_memory_still_holds_findings_back_on_a_reused_evaluation(tmp_path):
    client = make_app(tmp_path).test_client()
    sign = build_request(PREECLAMPSIA, hook="order-sign")
    for _ in range(2):  # seen twice: the next order-sign reuses the evaluation
        assert finding_ids(post(client, SIGN, sign)) == {"P1", "P5", "N11"}
    post(client, SELECT, build_request(PREECLAMPSIA, hook="order-select"))  # shows P1, P5, N11
    with hook_call_lines() as lines:
        assert finding_ids(post(client, SIGN, sign)) == {"P5"}  # P1 and N11 (info) held back
    assert lines[0].evaluation_reused and lines[0].held_back == ["P1", "N11"]


def _evaluated(from_request_alone: bool = True) -> Evaluated:
    record = PatientRecord(now=datetime.now(UTC), patient=None)
    return Evaluated(record, Evaluation(), {}, {}, {}, from_request_alone=from_request_alone)


def test_the_cache_keeps_only_second_sightings_of_request_alone_evaluations_and_forgets_them(monkeypatch):
    cache, clock = EvaluationCache(entries=2), [1000.0]
    monkeypatch.setattr("cds_service.evaluations.time.monotonic", lambda: clock[0])
    cache.put(b"a", _evaluated())
    assert cache.get(b"a") is None  # first sighting: nothing kept
    cache.put(b"a", kept := _evaluated())
    assert cache.get(b"a") is kept
    for _ in range(2):
        cache.put(b"fetched", _evaluated(from_request_alone=False))
    assert cache.get(b"fetched") is None
    for key in (b"b", b"c"):
        cache.put(key, _evaluated())
        cache.put(key, _evaluated())
    assert cache.get(b"a") is None and cache.get(b"c") is not None  # at most two entries, oldest out
    clock[0] += SECONDS + 1
    assert cache.get(b"c") is None  # nothing is kept past the minute


def test_the_key_covers_the_minute_the_tenant_and_whether_a_fhir_server_could_be_asked():
    from cds_service.request_json import parse_hook_call

    body = parse_hook_call(b'{"hook": "order-sign", "context": {"patientId": "p"}, "prefetch": {"a": null}}')
    now = datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)
    key = EvaluationCache.key("sign", None, body, False, now)
    assert key == EvaluationCache.key("sign", None, body, False, now + timedelta(seconds=50))
    others = [
        EvaluationCache.key("sign", None, body, False, now + timedelta(seconds=60)),
        EvaluationCache.key("sign", "hospital-a", body, False, now),
        EvaluationCache.key("sign", None, body, True, now),
        EvaluationCache.key("select", None, body, False, now),
    ]
    assert key not in others and len(set(others)) == len(others)
    assert EvaluationCache.key("sign", None, {"context": {}, "prefetch": {}}, False, now) is None
